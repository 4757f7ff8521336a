"""Starting, watching and ending the training child process.

A child is known by its pid together with its start time and command line (``ProcessIdentity``, kept in the
job's record): after a restart of the computer or a long pause, the pid in a record may belong to an unrelated
process started since, and that one must never be followed or killed.
"""

from __future__ import annotations

import os
import subprocess

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil  # a dependency of accelerate and peft, so always installed with dreamcore

import dreamcore
from dreamcore.jobs.folder import JobFolder

# Builds the child's argv for a job folder and attempt number; tests inject their own.
ChildCommand = Callable[[JobFolder, int], list[str]]

# The system reports a start time to the clock tick; a second of slack covers its clock being adjusted.
_START_TIME_SLACK_SECONDS = 1.0


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


@dataclass(frozen=True)
class ProcessIdentity:
    """One process, told apart from any later process that reuses its pid."""

    pid: int
    started_at: float  # when the system started it (seconds since the epoch)
    command: tuple[str, ...]


def identify(pid: int) -> ProcessIdentity | None:
    """The identity of the running process ``pid``; None when there is none (it ended, is a zombie, or
    belongs to another user and cannot be read)."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return ProcessIdentity(pid, process.create_time(), tuple(process.cmdline()))
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):  # ValueError: a negative pid
        return None


def is_running(identity: ProcessIdentity) -> bool:
    """Whether that very process still runs (not merely some process with its pid)."""
    now = identify(identity.pid)
    return now is not None and _same(now, identity)


def kill_process(identity: ProcessIdentity) -> bool:
    """End that process at once (SIGKILL; TerminateProcess on Windows); False when it had already ended or
    its pid now belongs to another process, which is left alone."""
    try:
        process = psutil.Process(identity.pid)
        now = ProcessIdentity(identity.pid, process.create_time(), tuple(process.cmdline()))
        if not _same(now, identity):
            return False
        process.kill()  # psutil checks again that the pid was not reused since Process() above
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return True


def _same(now: ProcessIdentity, expected: ProcessIdentity) -> bool:
    return (now.pid == expected.pid and now.command == expected.command
            and abs(now.started_at - expected.started_at) <= _START_TIME_SLACK_SECONDS)
