"""Faults by SIGKILL at write points: a process killed while writing a model file or a resumable state leaves no
truncated file under a final name, and what it left is cleaned up (or put back) at the next start."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dreamcore.fileio import atomic_directory, remove_leftovers

CHILD = Path(__file__).with_name("write_child.py")


def start(folder: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CHILD), str(folder), *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def version_of(folder: Path) -> int | None:
    """The version a complete model file holds; None when there is none. Fails on a truncated one."""
    path = folder / "model.safetensors"
    if not path.exists():
        return None
    tensors = load_file(path)
    values = {float(t.min()) for t in tensors.values()} | {float(t.max()) for t in tensors.values()}
    assert len(values) == 1, f"{path} mixes versions"
    return int(values.pop())


def state_version(folder: Path) -> int | None:
    """The version of a complete state/ folder; None when there is none. Fails on a half-written one."""
    state = folder / "state"
    if not state.exists():
        return None
    step = json.loads((state / "progress.json").read_text())["step"]
    assert {float(t.max()) for t in load_file(state / "unet.safetensors").values()} == {float(step)}
    return step


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith((".tmp-", ".old-")))


@pytest.mark.parametrize("point", ["inside-file-write", "before-file-rename", "inside-state-write",
                                   "between-state-renames"])
def test_a_kill_at_each_write_point_leaves_the_previous_version(point: str, tmp_path: Path) -> None:
    child = start(tmp_path, "kill-at", point)
    assert child.stdout.readline().strip() == "ready"
    assert child.wait(timeout=60) == -signal.SIGKILL
    assert version_of(tmp_path) in (1, 2)
    assert leftovers(tmp_path), "the kill came mid-write, so something was left"
    if point == "between-state-renames":
        assert not (tmp_path / "state").exists()  # the case atomic_directory must recover from
    done = remove_leftovers(tmp_path)
    assert leftovers(tmp_path) == [] and done
    assert state_version(tmp_path) == 1  # the complete earlier state, put back when it was moved aside


def test_the_next_state_write_recovers_a_state_moved_aside(tmp_path: Path) -> None:
    child = start(tmp_path, "kill-at", "between-state-renames")
    child.stdout.readline()
    child.wait(timeout=60)
    with atomic_directory(tmp_path / "state") as temp:  # the resumed run's next save
        assert (tmp_path / "state" / "progress.json").is_file()  # put back before the new one is written
        (temp / "progress.json").write_text(json.dumps({"step": 3}))
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_kills_at_random_moments_never_leave_a_truncated_file(tmp_path: Path) -> None:
    rng = random.Random(25)
    for _ in range(6):
        child = start(tmp_path, "loop")
        assert child.stdout.readline()  # one whole version written: the kill lands in a later write
        time.sleep(rng.uniform(0.0, 0.3))
        child.kill()
        child.wait(timeout=60)
        assert version_of(tmp_path) is not None
        remove_leftovers(tmp_path)
        assert state_version(tmp_path) is not None
        assert leftovers(tmp_path) == []


def test_a_running_writer_s_files_are_left_alone(tmp_path: Path) -> None:
    own = tmp_path / f".tmp-model.safetensors.{os.getpid()}.abcdefgh"
    own.write_bytes(b"in flight")
    assert remove_leftovers(tmp_path) == [] and own.exists()
