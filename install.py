"""dreamcore's install step: the WebUI runs ``python install.py`` in its own Python on every start.

It installs only the dependencies that are missing, with every installed package pinned to its installed
version as a pip constraint: it never upgrades, downgrades or removes a package of the WebUI (torch, gradio,
transformers, huggingface-hub, pydantic, Pillow, numpy, ...). pip resolves everything before it installs
anything, so when no version of a dependency fits the host's packages nothing changes; the reason is
written to ``.dreamcore-install.json``, which the DreamBooth tab shows with what to do.

With nothing missing it only reads package metadata, so a second start costs well under a second.
The cwd may be the WebUI root (A1111, Forge) or this folder (SD.Next): every path comes from __file__.
Before pip starts it says what it installs and roughly how long that takes, flushed at once: an install
takes minutes, and a host that streams this output shows it while the start would otherwise look frozen.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXTENSION_ROOT = Path(__file__).resolve().parent
PIP_TIMEOUT_SECONDS = 1800
# A rough figure for the person watching the WebUI start: pip downloads diffusers and the rest and checks them
# against every package of the WebUI, which takes minutes on a home connection, not seconds.
INSTALL_TIME_ESTIMATE = "about 1-3 minutes"

# Releases that install next to an older package a WebUI pins, but then fail to import. pip cannot know
# (their metadata does not say), so: (installed package, its versions, constraint for what we install).
COMPATIBILITY_RULES = [
    # diffusers >= 0.32 imports transformers' SiglipImageProcessor (transformers >= 4.37) when a pipeline
    # loads; A1111 1.10 pins transformers 4.30.2 (tests/extension/test_install.py trains with 0.31 there).
    ("transformers", "<4.37", "diffusers<0.32"),
    # diffusers 0.37 imports transformers' Dinov2WithRegistersConfig in its autoencoders package.
    ("transformers", "<4.48", "diffusers<0.37"),
    # peft 0.14 imports transformers' Cache (transformers >= 4.36); peft 0.17-0.21 import accelerate's
    # clear_device_cache, absent from accelerate 0.21 (A1111 1.10). peft 0.13 imports with both.
    ("transformers", "<4.36", "peft<0.14"),
    ("accelerate", "<1.0", "peft<0.14"),
]
# Run after an install: the modules dreamcore imports, so a release that installs but cannot import is
# reported now, in the tab, rather than as a failed training job later.
# (Each requirement's module is imported too.)
IMPORT_CHECK = ("from diffusers import AutoencoderKL, UNet2DConditionModel, DDPMScheduler, StableDiffusionPipeline; "
                "from transformers import CLIPTextModel, CLIPTokenizer")


def _load_deps():
    # Loaded by path under a unique name: "extension" is a common folder name in other WebUI extensions.
    spec = importlib.util.spec_from_file_location("dreamcore_webui_install_deps", EXTENSION_ROOT / "extension" / "deps.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


deps = _load_deps()


def installed_constraints() -> list[str]:
    """``name==version`` for every package in this Python: what pip must leave exactly as it is."""
    pins: dict[str, str] = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name and distribution.version:
            pins.setdefault(name.lower().replace("_", "-"), distribution.version)
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def compatibility_constraints() -> list[str]:
    constraints = []
    for package, versions, constraint in COMPATIBILITY_RULES:
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
        if deps.version_satisfies(version, versions):
            constraints.append(constraint)
    return constraints


def import_problem(requirements: list) -> str:
    """The error of importing what dreamcore uses, in a fresh Python; empty when everything imports."""
    code = "".join(f"import {r.import_name}; " for r in requirements) + IMPORT_CHECK
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=PIP_TIMEOUT_SECONDS)
    if result.returncode == 0:
        return ""
    return "\n".join(result.stderr.strip().splitlines()[-3:])


def pip_install(requirements: list[str], constraints: list[str]) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="dreamcore-install-") as folder:
        constraints_file = Path(folder) / "host-constraints.txt"
        constraints_file.write_text("\n".join(constraints) + "\n", encoding="utf-8")
        command = [sys.executable, "-m", "pip", "install", "--prefer-binary", "-c", str(constraints_file),
                   *requirements]
        return subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS)


def announce_install(requirements: list[str]) -> None:
    """Say what is about to be installed and how long it may take, before pip starts."""
    print(f"dreamcore: installing {', '.join(requirements)} into {sys.executable} (only what is missing; the "
          "WebUI's own packages are kept as they are).", flush=True)
    print(f"dreamcore: this may take {INSTALL_TIME_ESTIMATE} (pip downloads the packages and checks them against "
          "the WebUI's); it happens only while something is missing, normally on the first start, and the start "
          "goes on by itself when it is done.", flush=True)


def write_report(messages: list[str], installed: list[str]) -> None:
    """Write the report the tab reads; skip the write when it would not change (the no-op start)."""
    path = EXTENSION_ROOT / deps.INSTALL_REPORT_NAME
    report = {"messages": messages, "installed": installed, "python": sys.executable}
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = None  # unreadable: rewrite it below
        if previous is not None and {k: previous.get(k) for k in report} == report:
            return
    temporary = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def main() -> int:
    started = time.monotonic()
    try:
        requirements = deps.read_requirements(EXTENSION_ROOT)
    except (OSError, ValueError) as error:  # the tab shows the same problem with what to do
        print(f"dreamcore: cannot read the dependency list: {error}", file=sys.stderr, flush=True)
        return 0
    missing = [r for r in requirements if deps.installed_version(r) is None]
    messages: list[str] = []
    for requirement in missing:
        if requirement.name.lower() in deps.HOST_OWNED:
            messages.append(f"{requirement.name} is not installed in {sys.executable}. It belongs to the WebUI "
                            "(a wrong build breaks its GPU support), so dreamcore does not install it: repair the "
                            "WebUI's installation.")
    wanted = [str(r) for r in missing if r.name.lower() not in deps.HOST_OWNED]
    installed: list[str] = []
    if wanted:
        announce_install(wanted)
        result = pip_install(wanted, installed_constraints() + compatibility_constraints())
        if result.returncode == 0:
            installed = wanted
            problem = import_problem(requirements)
            if problem:
                messages.append(
                    f"Installed {', '.join(wanted)}, but dreamcore's libraries do not import together with the "
                    f"WebUI's packages:\n\n```\n{problem}\n```\n\nPlease report this (with the WebUI's "
                    "version) so install.py learns to pick a release that fits.")
        else:
            reason = "\n".join((result.stderr or result.stdout).strip().splitlines()[-12:])
            messages.append(
                f"Could not install {', '.join(wanted)} without changing a package the WebUI already has, "
                f"so nothing was changed. pip said:\n\n```\n{reason}\n```\n\nUpdate the WebUI (newer WebUIs "
                f"pin newer packages), or install a version that fits by hand with "
                f"`\"{sys.executable}\" -m pip install ...`, then restart.")
            print(f"dreamcore: {messages[-1]}", file=sys.stderr, flush=True)
    write_report(messages, installed)
    if wanted:
        print(f"dreamcore: install step done in {time.monotonic() - started:.1f} s", flush=True)
    return 0  # a failed install is reported to the tab; failing here would only add noise to the WebUI's start


if __name__ == "__main__":
    sys.exit(main())
