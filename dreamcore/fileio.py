"""Atomic file writes: a file appears under its final name complete, or not at all.

Everything dreamcore writes (models, configs, images, training state) goes through here: the data is
written to a temporary name in the same folder, flushed to disk, then renamed over the final name. A full
disk, a crash or a kill leaves at most a ``.tmp-*`` file (or a folder's ``.old-*`` copy), never a truncated
file under the real name. Those names carry the writing process's id, so ``remove_leftovers`` can tell the
leftovers of a process that is gone from a write still in flight, and put a folder back whose replacement
was cut between its two renames.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

# .tmp-<final name>.<pid>.<mkstemp's 8 random characters>[.<scratch suffix>], .old-<final name>.<pid>
_TEMP_NAME = re.compile(r"^\.tmp-(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}(\.[A-Za-z0-9]+)?$")
_OLD_NAME = re.compile(r"^\.old-(?P<name>.+)\.(?P<pid>\d+)$")
# Below this much free space when a write fails without saying why (torch's zip writer reports only
# "unexpected pos"), the disk is taken to be full.
_NEARLY_FULL_BYTES = 64 * 2**20
_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # a full disk or a full quota


class OutputWriteError(OSError):
    """Writing an output failed; the message names the file and what to do."""


class DiskFullError(OutputWriteError):
    """A write ran out of disk space; the message says how much is free and about how much the write needed
    (``free_bytes``, ``needed_bytes``)."""

    free_bytes: int = 0
    needed_bytes: int = 0


@contextlib.contextmanager
def atomic_path(final_path: str | Path, expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; on success it is fsynced and renamed into place.

    Use it for writers that want a path (``safetensors.torch.save_file``, ``PIL.Image.save``). On any
    error the temporary file is removed and the final path is left as it was; a full disk, however the
    writer reports it, becomes a ``DiskFullError`` (``expected_bytes``, when the caller knows the size,
    is what it says the write needs).
    """
    final_path = Path(final_path)
    try:
        final_path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=_temp_prefix(final_path), dir=final_path.parent)
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
    except BaseException as error:
        full = _disk_full(error, final_path.parent)
        written = _size_of(temp_path)
        _remove_own_temporaries(temp_path)
        if full:
            raise _disk_full_error(final_path, written, expected_bytes) from error
        if isinstance(error, OSError):
            raise _write_error(final_path, error) from error
        raise
    _remove_stale_siblings(final_path)


def atomic_write_bytes(final_path: str | Path, data: bytes) -> Path:
    with atomic_path(final_path, expected_bytes=len(data)) as temp:
        temp.write_bytes(data)
    return Path(final_path)


def atomic_write_text(final_path: str | Path, text: str) -> Path:
    return atomic_write_bytes(final_path, text.encode("utf-8"))


def atomic_write_stream(final_path: str | Path, write: Callable[[BinaryIO], None],
                        expected_bytes: int | None = None) -> Path:
    """Atomically write a file produced by ``write(file_object)`` (e.g. ``torch.save``)."""
    with atomic_path(final_path, expected_bytes) as temp:
        with open(temp, "wb") as handle:
            write(handle)
    return Path(final_path)


@contextlib.contextmanager
def atomic_directory(final_dir: str | Path, expected_bytes: int | None = None,
                     replaces: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``final_dir``; on success it replaces ``final_dir`` whole.

    A previous folder of that name is moved aside (``.old-<name>.<pid>``) and deleted only after the new one
    is in place. A process killed between those two renames leaves no ``final_dir`` but a complete old one:
    the next write (or ``remove_leftovers``) puts it back first, so a reader never finds the folder missing
    or half-written.

    ``replaces``: a file every folder of this kind holds (``model_index.json``). An existing ``final_dir`` with
    other contents and without that file is refused with an ``OutputWriteError``, before anything is written:
    replacing it would delete files this writer never wrote (a folder of models given as the destination).
    """
    final_dir = Path(final_dir)
    if replaces is not None:
        _refuse_foreign_folder(final_dir, replaces)
    try:
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        _recover_directory(final_dir)
        temp_dir = Path(tempfile.mkdtemp(prefix=_temp_prefix(final_dir), dir=final_dir.parent))
    except OSError as error:
        raise _write_error(final_dir, error) from error
    old = None
    try:
        yield temp_dir
        umask = _current_umask()
        os.chmod(temp_dir, 0o777 & ~umask)  # mkdtemp's folder is private (0700), as above
        for path in sorted(temp_dir.rglob("*")):
            if path.is_file():
                # Libraries may write private files too (safetensors 0.8 writes 0600): readable as any new file
                os.chmod(path, path.stat().st_mode & 0o7777 | (0o666 & ~umask))
                _fsync_file(path)
        if final_dir.exists():
            old = final_dir.with_name(f".old-{final_dir.name}.{os.getpid()}")
            if old.exists():  # an earlier write of this process that failed after the first rename
                shutil.rmtree(old)
            os.replace(final_dir, old)
        os.replace(temp_dir, final_dir)
        _fsync_dir(final_dir.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=False)
    except BaseException as error:
        full = _disk_full(error, final_dir.parent)
        written = _size_of(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        if old is not None and old.exists() and not final_dir.exists():
            os.replace(old, final_dir)  # the second rename failed: the previous folder stays in place
        if full:
            # The new folder is about as large as the one it replaces, which stays until it is in place.
            expected = expected_bytes or _size_of(final_dir) or None
            raise _disk_full_error(final_dir, written, expected) from error
        if isinstance(error, OSError):
            raise _write_error(final_dir, error) from error
        raise
    _remove_stale_siblings(final_dir)


def _refuse_foreign_folder(final_dir: Path, marker: str) -> None:
    if not final_dir.is_dir() or (final_dir / marker).is_file():
        return
    try:
        contents = sorted(child.name for child in final_dir.iterdir())
    except OSError as error:
        raise _write_error(final_dir, error) from error
    if contents:
        shown = ", ".join(contents[:3]) + (", ..." if len(contents) > 3 else "")
        raise OutputWriteError(errno.EEXIST, f"could not write {final_dir}: the folder already holds other files "
                               f"({shown}) and would be replaced whole; give a new or empty folder, such as "
                               f"{final_dir / 'model'}")


def remove_leftovers(folder: str | Path) -> list[str]:
    """Clean up after writers that were killed, under ``folder`` (recursively): remove their ``.tmp-*`` files
    and folders and superseded ``.old-*`` folders, and put back an ``.old-<name>`` folder whose ``<name>`` is
    missing (the kill came between its two renames). Only leftovers of processes no longer running are
    touched. Returns one line for each thing done, for the log."""
    folder = Path(folder)
    done: list[str] = []
    if not folder.is_dir():
        return done
    for parent, folders, files in os.walk(folder):
        parent_path = Path(parent)
        for name in sorted(folders):
            match = _OLD_NAME.match(name)
            if match and not _process_running(int(match["pid"])) and \
                    not (parent_path / match["name"]).exists():
                os.replace(parent_path / name, parent_path / match["name"])
                done.append(f"{parent_path / match['name']}: put back from {name} (a save was interrupted "
                            "while replacing it)")
        for name in sorted(folders + files):
            if _is_stale(name) and (parent_path / name).exists():
                _remove(parent_path / name)
                done.append(f"removed {parent_path / name} (left by an interrupted write)")
        # Leftover folders are not searched; their contents go with them.
        folders[:] = [name for name in folders if not name.startswith((".tmp-", ".old-"))]
    return done


def _temp_prefix(final_path: Path) -> str:
    return f".tmp-{final_path.name}.{os.getpid()}."


def _recover_directory(final_dir: Path) -> None:
    if final_dir.exists():
        return
    for old in sorted(final_dir.parent.glob(f".old-{_glob_escape(final_dir.name)}.*")):
        match = _OLD_NAME.match(old.name)
        if match and match["name"] == final_dir.name and not _process_running(int(match["pid"])):
            os.replace(old, final_dir)
            return


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _remove_stale_siblings(final_path: Path) -> None:
    """After a successful write: earlier killed writes of the same name leave nothing behind."""
    try:
        for sibling in final_path.parent.iterdir():
            match = _TEMP_NAME.match(sibling.name) or _OLD_NAME.match(sibling.name)
            if match and match["name"] == final_path.name and _is_stale(sibling.name):
                _remove(sibling)
    except OSError:
        pass  # the write itself succeeded; remove_leftovers tries again at the next start


def _is_stale(name: str) -> bool:
    match = _TEMP_NAME.match(name) or _OLD_NAME.match(name)
    return match is not None and not _process_running(int(match["pid"]))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _remove_own_temporaries(temp_path: Path) -> None:
    temp_path.unlink(missing_ok=True)
    for scratch in temp_path.parent.glob(_glob_escape(temp_path.name) + ".*"):  # a writer's own scratch files
        scratch.unlink(missing_ok=True)


def _process_running(pid: int) -> bool:
    """Whether a process of that id runs on this machine; when that cannot be told, assume it does (so its
    files are left alone)."""
    if pid == os.getpid() or pid <= 0:
        return True
    if sys.platform == "win32":
        try:
            import psutil
        except ImportError:
            return True
        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _disk_full(error: BaseException, folder: Path) -> bool:
    """Whether ``error`` (or what caused it) says the disk is full, whichever library raised it."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        text = str(current)
        if "os error 28" in text or "No space left on device" in text:  # safetensors' Rust I/O error
            return True
        if isinstance(current, RuntimeError) and "inline_container.cc" in text:  # torch's zip writer
            return _free_bytes(folder) < _NEARLY_FULL_BYTES
        current = current.__cause__ or current.__context__
    return False


def _disk_full_error(path: Path, written: int, expected: int | None) -> DiskFullError:
    free = _free_bytes(path.parent)
    if expected and expected > written:
        needed, about = expected, "about"
    else:  # the size is not known: it is more than what fitted
        needed, about = max(written, free), "more than"
    error = DiskFullError(errno.ENOSPC, f"could not write {path}: the disk holding {path.parent} is full (no space "
                                        f"left on device): {_size_text(free)} free, {about} {_size_text(needed)} "
                                        "needed; free space or choose another --output_dir")
    error.free_bytes, error.needed_bytes = free, needed
    return error


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _size_of(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size if path.exists() else 0
    except OSError:
        return 0


def _size_text(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size < 1e9 else f"{size / 1e9:.1f} GB"


def _current_umask() -> int:
    return _UMASK


def _read_umask() -> int:
    # Reading the umask means setting it; done once at import, before any writer threads exist.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _write_error(path: Path, error: OSError) -> OutputWriteError:
    if isinstance(error, OutputWriteError):
        return error
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
