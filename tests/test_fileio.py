"""Atomic writes: a failed write leaves the final name untouched and no temporary file behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dreamcore import fileio
from dreamcore.fileio import (DiskFullError, OutputWriteError, atomic_directory, atomic_path, atomic_write_text,
                              remove_leftovers)


def test_success_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["model.json"]


def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.safetensors"
    target.write_text("previous good model")

    def full_disk(path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio, "_fsync_file", full_disk)
    with pytest.raises(DiskFullError, match="disk holding .* is full") as raised:
        with atomic_path(target) as temp:
            temp.write_text("half a model")
    assert str(target) in str(raised.value)
    assert target.read_text() == "previous good model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_an_exception_while_writing_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "x.bin") as temp:
            temp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_directory_is_replaced_whole(tmp_path: Path) -> None:
    folder = tmp_path / "diffusers"
    with atomic_directory(folder) as temp:
        (temp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(folder) as temp:
            (temp / "b.txt").write_text("2")
            raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diffusers"]


def test_unwritable_parent_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputWriteError, match=str(blocker)):
        with atomic_directory(blocker / "out"):
            pass


def test_outputs_get_ordinary_permissions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileio, "_UMASK", 0o022)
    path = atomic_write_text(tmp_path / "model.json", "{}")
    with atomic_directory(tmp_path / "folder") as temp:
        (temp / "a").write_text("1")
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755


def test_files_a_library_writes_private_get_ordinary_permissions(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileio, "_UMASK", 0o022)
    with atomic_directory(tmp_path / "folder") as temp:
        (temp / "unet").mkdir()
        (temp / "unet" / "weights.safetensors").write_bytes(b"1")
        os.chmod(temp / "unet" / "weights.safetensors", 0o600)  # as safetensors' save_file leaves its files
        (temp / "run.sh").write_text("")
        os.chmod(temp / "run.sh", 0o700)
    assert (tmp_path / "folder" / "unet" / "weights.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder" / "run.sh").stat().st_mode & 0o777 == 0o744  # an executable stays one


def test_a_folder_of_other_files_is_refused_not_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "mine.ckpt").write_text("keep")
    with pytest.raises(OutputWriteError, match="mine.ckpt.*new or empty folder"):
        with atomic_directory(folder, replaces="model_index.json") as temp:
            (temp / "model_index.json").write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == ["mine.ckpt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    (folder / "mine.ckpt").unlink()
    for _ in range(2):  # empty, then holding what this writer wrote: replaced
        with atomic_directory(folder, replaces="model_index.json") as temp:
            (temp / "model_index.json").write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == ["model_index.json"]


@pytest.mark.parametrize("free, translated", [(1 << 20, True), (100 << 30, False)])
def test_torch_s_zip_writer_failure_is_a_full_disk_only_when_the_disk_is_nearly_full(
        free: int, translated: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileio, "_free_bytes", lambda folder: free)
    failure = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    with pytest.raises(DiskFullError if translated else RuntimeError) as raised:
        with atomic_path(tmp_path / "model.ckpt", expected_bytes=5 << 30):
            raise failure
    assert translated == ("about 5.4 GB needed" in str(raised.value))
    assert list(tmp_path.iterdir()) == []


def test_a_safetensors_write_error_saying_os_error_28_is_a_full_disk(tmp_path: Path) -> None:
    class SafetensorError(Exception):  # what safetensors' Rust writer raises
        pass

    with pytest.raises(DiskFullError, match="no space left on device"):
        with atomic_path(tmp_path / "model.safetensors"):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def test_leftovers_of_a_dead_writer_are_removed_and_a_moved_state_put_back(tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above the usual pid_max: no such process
    (tmp_path / f".tmp-model.safetensors.{dead}.abcdefgh").write_bytes(b"partial")
    (tmp_path / f".tmp-model.ckpt.{dead}.abcdefgh.torch").write_bytes(b"scratch")
    (tmp_path / f".old-state.{dead}").mkdir()
    (tmp_path / f".old-state.{dead}" / "progress.json").write_text("{}")
    (tmp_path / "diffusers").mkdir()
    (tmp_path / f".old-diffusers.{dead}").mkdir()  # superseded: the new folder is in place
    done = remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diffusers", "state"]
    assert (tmp_path / "state" / "progress.json").is_file() and len(done) == 4
