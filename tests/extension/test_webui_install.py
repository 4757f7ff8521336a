"""install.py: adds only what is missing, never changes an installed package, reports what it cannot do.

The A1111 test works on a copy of a venv holding AUTOMATIC1111 1.10's pins (gradio 3.41.2, transformers
4.30.2, accelerate 0.21, safetensors 0.4.2, Pillow 9.5.0, ...; built once under .venv-hosts/a1111), so the
cached venv stays as the WebUI ships it. The same copy then runs the whole extension: first as with
--skip-install (diffusers missing: the tab must say so), then after install.py, training a tiny model.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from host_venvs import ensure_host_venv
from scenario_checks import REPO_ROOT, assert_loaded_like_the_host, assert_trained_and_selected, run_scenario


def make_extension(folder: Path, pyproject_text: str | None = None) -> Path:
    """An extension folder holding copies of install.py and pyproject.toml (its report is written there)."""
    folder.mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / "install.py", folder / "install.py")
    (folder / "pyproject.toml").write_text(pyproject_text or (REPO_ROOT / "pyproject.toml").read_text())
    (folder / "extension").symlink_to(REPO_ROOT / "extension")
    return folder


def run_install(python: str | Path, extension: Path, cwd: Path) -> tuple[subprocess.CompletedProcess, float, dict]:
    started = time.perf_counter()
    result = subprocess.run([str(python), str(extension / "install.py")], capture_output=True, text=True,
                            cwd=cwd, timeout=1800)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    report = json.loads((extension / ".dreamcore-install.json").read_text())
    return result, seconds, report


def _dependencies(pyproject: Path) -> list[str]:
    text = pyproject.read_text()
    block = text[text.index("dependencies = ["):]
    return re.findall(r'"([^"]+)"', block[:block.index("]")])


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")


def freeze(python: str | Path) -> dict[str, str]:
    output = subprocess.run([str(python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                            check=True).stdout
    pins = {}
    for line in output.splitlines():
        name, _, version = line.partition("==")
        pins[name.lower().replace("_", "-")] = version or line
    return pins


def test_nothing_missing_is_a_fast_no_op_from_any_working_folder(tmp_path: Path) -> None:
    extension = make_extension(tmp_path / "extensions" / "dreamcore")
    # cwd = the WebUI root (A1111, Forge), then the extension folder (SD.Next).
    for cwd in (tmp_path, extension):
        result, seconds, report = run_install(sys.executable, extension, cwd)
        assert "installing" not in result.stdout
        assert report["messages"] == [] and report["installed"] == []
        assert seconds < 2.0, f"install.py took {seconds:.2f} s with nothing to install"


# Stands in for pip (found first through PYTHONPATH): records its command line, then holds the install until
# the test releases it, so the test can see what install.py printed while pip was still busy.
STUB_PIP = """
import json, os, sys, time
from pathlib import Path
folder = Path(os.environ["STUB_PIP_FOLDER"])
(folder / "pip-argv.json").write_text(json.dumps(sys.argv[1:]))
deadline = time.monotonic() + 120
while not (folder / "release").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit("stub pip: no network here (released by the test)")
"""


def test_before_pip_starts_it_says_what_it_installs_and_how_long_it_may_take(tmp_path: Path) -> None:
    stub = tmp_path / "stub"
    (stub / "pip").mkdir(parents=True)
    (stub / "pip" / "__init__.py").write_text("")
    (stub / "pip" / "__main__.py").write_text(STUB_PIP)
    missing = ["dreamcore-absent-probe>=1.0", "dreamcore-absent-helper"]
    pyproject = "[project]\nname = \"probe\"\ndependencies = [\n" + "".join(f'    "{r}",\n' for r in missing) + "]\n"
    extension = make_extension(tmp_path / "extensions" / "dreamcore", pyproject)
    env = {**os.environ, "PYTHONPATH": str(stub), "STUB_PIP_FOLDER": str(stub)}
    env.pop("PYTHONUNBUFFERED", None)  # install.py must flush by itself
    # A pipe, as a host that captures or streams the output gives: without a flush nothing would arrive early.
    process = subprocess.Popen([sys.executable, str(extension / "install.py")], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        announced = []
        for _ in range(2):
            try:
                announced.append(lines.get(timeout=60))
            except queue.Empty:
                raise AssertionError(f"install.py printed only {announced} while pip was busy") from None
        assert process.poll() is None  # pip is still held: these lines came before the install, not after it
        assert all(requirement in announced[0] for requirement in missing), announced
        assert re.search(r"\d+(-\d+)? minutes?", " ".join(announced)), announced
    finally:
        (stub / "release").write_text("")
        process.wait(timeout=120)
    assert process.returncode == 0, process.stderr.read()
    pip_argv = json.loads((stub / "pip-argv.json").read_text())
    assert pip_argv[0] == "install" and pip_argv[-len(missing):] == missing
    report = json.loads((extension / ".dreamcore-install.json").read_text())
    assert report["installed"] == [] and "nothing was changed" in report["messages"][0]


@pytest.mark.slow  # a copy of a WebUI's venv, its install step and a training child: run by .ci/run
def test_a1111_pins_install_adds_only_packages_and_dreamcore_trains(tmp_path: Path, tiny_base_model: Path) -> None:
    pristine = ensure_host_venv("a1111").parent.parent
    venv = tmp_path / "a1111-venv"
    shutil.copytree(pristine, venv, symlinks=True)
    python = venv / "bin" / "python"
    before = freeze(python)
    assert before["gradio"] == "3.41.2" and before["transformers"] == "4.30.2" and "diffusers" not in before
    # What dreamcore needs and A1111 lacks (diffusers at least; the list follows pyproject.toml).
    requirements = [line for line in _dependencies(REPO_ROOT / "pyproject.toml")
                    if _name(line) not in before]
    assert "diffusers>=0.31" in requirements

    # 1. As started with --skip-install: diffusers is missing, and the tab says so instead of vanishing.
    skipped = run_scenario(python, tmp_path / "skip-install", base_model=tiny_base_model)
    assert skipped["tabs"] == [["Blocks", "DreamBooth", "dreamcore_tab"]]
    assert not skipped["tab_ready"]
    assert "`diffusers`" in skipped["dependency_message"] and "not installed" in skipped["dependency_message"]
    assert "install.py" in skipped["dependency_message"] and "pip install" in skipped["dependency_message"]
    assert skipped["api_jobs_status"] == 404  # no job API where no job could run

    # 2. No release fits: a requirement only satisfiable by changing the WebUI's packages (diffusers >= 0.40
    #    needs huggingface-hub 1.x; the WebUI has 0.x) is reported, and nothing changes.
    pyproject = (REPO_ROOT / "pyproject.toml").read_text().replace('"diffusers>=0.31"', '"diffusers>=0.40"')
    assert '"diffusers>=0.40"' in pyproject
    impossible = make_extension(tmp_path / "impossible", pyproject)
    _, _, report = run_install(python, impossible, tmp_path)
    assert report["installed"] == []
    assert len(report["messages"]) == 1 and "diffusers>=0.40" in report["messages"][0]
    assert "nothing was changed" in report["messages"][0]
    assert freeze(python) == before

    # 3. The real install: only additions, and the host's pins untouched.
    extension = make_extension(tmp_path / "webui" / "extensions" / "dreamcore")
    _, _, report = run_install(python, extension, tmp_path / "webui")
    assert report == {"messages": [], "installed": requirements, "python": str(python)}
    after = freeze(python)
    changed = {name: (version, after[name]) for name, version in before.items() if after.get(name) != version}
    assert changed == {}, f"install.py changed installed packages: {changed}"
    added = set(after) - set(before)
    assert "diffusers" in added
    print(f"install.py added: {sorted(f'{name}=={after[name]}' for name in added)}")

    # 4. A second start does nothing, quickly.
    result, seconds, _ = run_install(python, extension, extension)
    assert "installing" not in result.stdout and seconds < 2.0
    assert freeze(python) == after

    # 5. The WebUI starts with the extension; a tiny job trains through the tab under gradio 3.41.2.
    trained = run_scenario(python, tmp_path / "run", train=True, base_model=tiny_base_model)
    assert trained["gradio"] == "3.41.2"
    assert_loaded_like_the_host(trained)
    assert_trained_and_selected(trained)
