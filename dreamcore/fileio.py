"""Atomic file writes: a file appears under its final name complete, or not at all.

Everything dreamcore writes (models, configs, images, training state) goes through here: the data is
written to a temporary name in the same folder, flushed to disk, then renamed over the final name. A full
disk, a crash or a kill leaves at most a ``.tmp-*`` file, never a truncated file under the real name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


class OutputWriteError(OSError):
    """Writing an output failed; the message names the file and what to do."""


@contextlib.contextmanager
def atomic_path(final_path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; on success it is fsynced and renamed into place.

    Use it for writers that want a path (``safetensors.torch.save_file``, ``PIL.Image.save``). On any
    error the temporary file is removed and the final path is left as it was.
    """
    final_path = Path(final_path)
    try:
        final_path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".tmp-{final_path.name}.", dir=final_path.parent)
    except OSError as error:
        raise _write_error(final_path, error) from error
    os.close(handle)
    temp_path = Path(temp_name)
    try:
        yield temp_path
        # mkstemp makes the file private (0600); give it the permissions an ordinary new file gets, so a
        # WebUI running as another user (or in a container) can read the model.
        os.chmod(temp_path, 0o666 & ~_current_umask())
        _fsync_file(temp_path)
        os.replace(temp_path, final_path)
        _fsync_dir(final_path.parent)
    except OSError as error:
        temp_path.unlink(missing_ok=True)
        raise _write_error(final_path, error) from error
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(final_path: str | Path, data: bytes) -> Path:
    with atomic_path(final_path) as temp:
        temp.write_bytes(data)
    return Path(final_path)


def atomic_write_text(final_path: str | Path, text: str) -> Path:
    return atomic_write_bytes(final_path, text.encode("utf-8"))


def atomic_write_stream(final_path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Atomically write a file produced by ``write(file_object)`` (e.g. ``torch.save``)."""
    with atomic_path(final_path) as temp:
        with open(temp, "wb") as handle:
            write(handle)
    return Path(final_path)


@contextlib.contextmanager
def atomic_directory(final_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final_dir``; on success it replaces ``final_dir`` whole.

    A previous folder of that name is moved aside first and deleted only after the new one is in place.
    """
    final_dir = Path(final_dir)
    try:
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        temp_dir = Path(tempfile.mkdtemp(prefix=f".tmp-{final_dir.name}.", dir=final_dir.parent))
    except OSError as error:
        raise _write_error(final_dir, error) from error
    try:
        yield temp_dir
        os.chmod(temp_dir, 0o777 & ~_current_umask())  # mkdtemp's folder is private (0700), as above
        for path in sorted(temp_dir.rglob("*")):
            if path.is_file():
                _fsync_file(path)
        old = None
        if final_dir.exists():
            old = final_dir.with_name(f".old-{final_dir.name}.{os.getpid()}")
            os.replace(final_dir, old)
        os.replace(temp_dir, final_dir)
        _fsync_dir(final_dir.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=False)
    except OSError as error:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise _write_error(final_dir, error) from error
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise


def _current_umask() -> int:
    return _UMASK


def _read_umask() -> int:
    # Reading the umask means setting it; done once at import, before any writer threads exist.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _write_error(path: Path, error: OSError) -> OutputWriteError:
    advice = {errno.ENOSPC: " - the disk is full; free space or choose another output folder",
              errno.EACCES: " - permission denied; choose a folder you can write to",
              errno.EROFS: " - the folder is read-only; choose another output folder"}.get(error.errno, "")
    return OutputWriteError(error.errno, f"could not write {path}: {error.strerror or error}{advice}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # some filesystems (and Windows) cannot open folders; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass  # fsync of a folder is unsupported on some filesystems; the data files were synced above
    finally:
        os.close(fd)
