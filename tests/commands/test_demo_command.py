"""`python -m dreamcore demo` (the README's `make demo`): the whole flow on the embedded tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_trains_exports_and_generates(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "dreamcore", "demo", "--out", str(tmp_path / "demo"),
                             "--steps", "4"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "demo finished in" in result.stdout and "Traceback" not in result.stderr
    out = tmp_path / "demo"
    assert (out / "training" / "demo-sks.safetensors").is_file()
    assert len(list((out / "generated").glob("*.png"))) == 2
