"""Virtual environments that hold a WebUI host's pinned packages, for the extension's host tests.

Each host gets ``.venv-hosts/<host>`` in the repo root (gitignored), built once and reused while its pin
list is unchanged (a stamp file holds the pins it was built from). Only the pins our code touches are
installed, not a whole WebUI: the extension imports gradio, fastapi and the ML stack, never the host's
other packages. torch is the CPU build on local disk (torch==2.13.0) instead of the host's 2.1/2.3,
which no longer resolve on this machine's Python; every other pin is the host's own.

    python tests/extension/host_venvs.py a1111 forge     # build ahead of the tests (optional)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_VENVS_DIR = REPO_ROOT / ".venv-hosts"
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")

# What each host's requirements pin, limited to the packages the extension or dreamcore import.
HOST_PINS: dict[str, list[str]] = {
    # AUTOMATIC1111 1.10 requirements_versions.txt (transformers 4.30 needs huggingface-hub < 1.0).
    "a1111": [
        "gradio==3.41.2", "fastapi==0.94.0", "transformers==4.30.2", "accelerate==0.21.0",
        "safetensors==0.4.2", "Pillow==9.5.0", "numpy==1.26.2", "httpx==0.24.1", "protobuf==3.20.0",
        "omegaconf==2.2.3", "einops==0.4.1", "psutil==5.9.5", "huggingface-hub<1.0",
    ],
    # SD.Next (2025-03): gradio 3.43.2 with pydantic v1 and a newer transformers.
    "sdnext": ["gradio==3.43.2", "pydantic==1.10.21", "transformers==4.48.3", "huggingface-hub<1.0"],
    # Forge (gradio 4.40 fails to import HfFolder with huggingface-hub 1.x, so the hub stays < 1.0).
    "forge": [
        "gradio==4.40.0", "pydantic==2.8.2", "transformers==4.46.1", "diffusers==0.31.0",
        "huggingface-hub<1.0",
    ],
}


def host_python(host: str) -> Path:
    return HOST_VENVS_DIR / host / "bin" / "python"


def ensure_host_venv(host: str) -> Path:
    """Build (or reuse) the host's venv; return its python. Raises RuntimeError with pip's output on failure."""
    pins = HOST_PINS[host]
    venv_dir = HOST_VENVS_DIR / host
    stamp = venv_dir / ".dreamcore-host-pins.json"
    wanted = {"torch": TORCH_SPEC, "pins": pins,
              "digest": hashlib.sha256(json.dumps([TORCH_SPEC, pins]).encode()).hexdigest()}
    # Test workers run in parallel (pytest-xdist): one builds a host's venv while the others wait for it.
    HOST_VENVS_DIR.mkdir(exist_ok=True)
    with open(HOST_VENVS_DIR / f"{host}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and json.loads(stamp.read_text()) == wanted and host_python(host).exists():
            return host_python(host)
        return _build(host, venv_dir, stamp, wanted)


def _build(host: str, venv_dir: Path, stamp: Path, wanted: dict) -> Path:
    pins = wanted["pins"]
    started = time.monotonic()
    _run([sys.executable, "-m", "venv", "--clear", str(venv_dir)])
    python = str(host_python(host))
    # torch first and alone, so that no later step can pull a CUDA build in its place.
    _run([python, "-m", "pip", "install", "-q", TORCH_SPEC])
    _run([python, "-m", "pip", "install", "-q", TORCH_SPEC, *pins])
    stamp.write_text(json.dumps(wanted))
    print(f"built {venv_dir} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return host_python(host)


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-4000:]}"
                           f"\n{result.stderr[-4000:]}")


if __name__ == "__main__":
    for name in sys.argv[1:] or list(HOST_PINS):
        print(ensure_host_venv(name))
