"""Run as a child process by test_kills.py: writes files and a state folder the way training does, over and
over (or stops dead at a chosen point), so the parent can SIGKILL it mid-write.

    python write_child.py FOLDER loop            write model.safetensors and state/ versions until killed
    python write_child.py FOLDER kill-at POINT   write once and SIGKILL itself at POINT
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from dreamcore import fileio
from dreamcore.convert.checkpoint_files import write_safetensors

WEIGHTS = 1 << 19  # floats a tensor: 2 MB, so a write takes long enough to be cut


def weights(version: int) -> dict[str, torch.Tensor]:
    return {"a": torch.full((WEIGHTS,), float(version)), "b": torch.full((WEIGHTS,), float(version))}


def write_state(folder: Path, version: int) -> None:
    with fileio.atomic_directory(folder / "state") as temp:
        save_file(weights(version), str(temp / "unet.safetensors"))
        torch.save({"step": version}, temp / "optimizer.pt")
        (temp / "progress.json").write_text(json.dumps({"step": version}))


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at(folder: Path, point: str) -> None:
    write_safetensors(folder / "model.safetensors", weights(1), {})
    write_state(folder, 1)
    print("ready", flush=True)
    if point == "inside-file-write":
        def half_then_die(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"half a file")
            die()
        import safetensors.torch
        safetensors.torch.save_file = half_then_die
        write_safetensors(folder / "model.safetensors", weights(2), {})
    elif point == "before-file-rename":
        fileio._fsync_file = lambda path: die()
        write_safetensors(folder / "model.safetensors", weights(2), {})
    elif point == "inside-state-write":
        with fileio.atomic_directory(folder / "state") as temp:
            save_file(weights(2), str(temp / "unet.safetensors"))
            die()
    elif point == "between-state-renames":
        real_replace = os.replace

        def first_rename_then_die(source, target):
            real_replace(source, target)
            if Path(target).name.startswith(".old-"):
                die()
        fileio.os.replace = first_rename_then_die
        write_state(folder, 2)
    raise AssertionError(f"{point}: the child was not killed")


def loop(folder: Path) -> None:
    version = 1
    while True:
        write_safetensors(folder / "model.safetensors", weights(version), {})
        write_state(folder, version)
        print(version, flush=True)
        version += 1


if __name__ == "__main__":
    target, mode = Path(sys.argv[1]), sys.argv[2]
    kill_at(target, sys.argv[3]) if mode == "kill-at" else loop(target)
