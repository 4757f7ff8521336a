"""Starting, watching and ending the training child process."""

from __future__ import annotations

import os
import signal
import subprocess

from pathlib import Path
from typing import Callable

import dreamcore
from dreamcore.jobs.folder import JobFolder

# Builds the child's argv for a job folder and attempt number; tests inject their own.
ChildCommand = Callable[[JobFolder, int], list[str]]


def default_child_command(python: str) -> ChildCommand:
    def command(folder: JobFolder, attempt: int) -> list[str]:
        return [python, "-m", "dreamcore.jobs.child", str(folder.path), "--attempt", str(attempt)]

    return command


def start_child(argv: list[str], folder: JobFolder, gpu: str | None = None) -> subprocess.Popen:
    """Start the child with stdout and stderr appended to the job's log; with ``gpu``, the child sees only
    that CUDA device (as its cuda:0).

    dreamcore's own folder is put first on the child's PYTHONPATH, because inside a WebUI dreamcore is
    imported from the extension folder rather than installed.
    """
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    package_root = str(Path(dreamcore.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    with open(folder.log, "ab") as log:
        return subprocess.Popen(argv, cwd=folder.path, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env)


def process_alive(pid: int) -> bool:
    """Whether a process (not necessarily our child) still runs; a zombie counts as ended."""
    if os.name == "nt":
        return _windows_process_alive(pid)
    try:
        done_pid, _ = os.waitpid(pid, os.WNOHANG)
        if done_pid == pid:
            return False  # our own child, now reaped
    except ChildProcessError:
        pass  # not our child: ask the kernel below
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the kill probe above is all we know
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def kill_process(pid: int) -> None:
    """End a process at once (SIGKILL; TerminateProcess on Windows)."""
    try:
        os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
    except ProcessLookupError:
        pass  # it ended by itself meanwhile, which is what we wanted


def _windows_process_alive(pid: int) -> bool:
    import ctypes

    process_query_limited_information, still_active = 0x1000, 259
    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return False
        return code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


