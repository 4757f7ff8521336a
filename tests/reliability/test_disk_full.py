"""A full disk while saving is one line with the free space and what the write needed, whichever library wrote
(safetensors, torch.save, a plain write), and leaves the previous file and no temporary one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dreamcore.convert.checkpoint_files import write_ckpt, write_safetensors
from dreamcore.fileio import DiskFullError, atomic_directory, atomic_write_text

BIG = {"weight": torch.zeros(1 << 20)}  # 4 MB: twice the small disk


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


@pytest.mark.parametrize("write", [
    lambda folder: write_safetensors(folder / "model.safetensors", BIG, {}),
    lambda folder: write_ckpt(folder / "model.ckpt", BIG, {}),
    lambda folder: atomic_write_text(folder / "model.json", "x" * (3 << 20)),
], ids=["safetensors", "torch.save", "text"])
def test_a_full_disk_names_the_space_needed(write, small_disk: Path) -> None:
    (small_disk / "previous.json").write_text("{}")
    with pytest.raises(DiskFullError) as raised:
        write(small_disk)
    message = str(raised.value)
    assert f"the disk holding {small_disk} is full" in message and "free space or choose another" in message
    assert raised.value.needed_bytes >= 3 << 20  # each write is 3 MB or more
    assert raised.value.free_bytes <= 2 << 20 and "MB free" in message
    assert "Traceback" not in message and "\n" not in message
    assert files(small_disk) == ["previous.json"]


def test_a_full_disk_while_writing_a_state_keeps_the_old_state(small_disk: Path) -> None:
    with atomic_directory(small_disk / "state") as temp:
        (temp / "progress.json").write_text(json.dumps({"step": 1}))
    with pytest.raises(DiskFullError, match=r"state: the disk holding .* is full.*more than"):
        with atomic_directory(small_disk / "state") as temp:
            torch.save({"optimizer": torch.zeros(1 << 19)}, temp / "optimizer.pt")
            save_file(BIG, str(temp / "unet.safetensors"))
    assert files(small_disk) == ["progress.json", "state"]
    assert json.loads((small_disk / "state" / "progress.json").read_text()) == {"step": 1}
