"""Folders with limits, for the fault tests: a small tmpfs (a disk that fills up) and a read-only one. Mounting
needs root (as in CI's container); elsewhere those tests are skipped."""

from __future__ import annotations

import gc
import os
import subprocess
from pathlib import Path

import pytest


def _unmount(folder: Path) -> None:
    gc.collect()  # a failed torch.save keeps its file open until its writer is collected
    subprocess.run(["umount", "--lazy", str(folder)], check=True)


def _mount(folder: Path, options: str) -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MB disk."""
    folder = tmp_path / "small-disk"
    _mount(folder, "size=2m")
    yield folder
    _unmount(folder)


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """A folder nothing can be written into (a read-only mount as root, else a folder without write permission)."""
    folder = tmp_path / "read-only"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        _mount(folder, "size=1m,ro")
        yield folder
        _unmount(folder)
    else:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
