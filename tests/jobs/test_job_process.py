"""A child is known by pid, start time and command line: a process that reuses its pid is never adopted or killed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import pytest

from dreamcore.jobs import JobConflictError
from dreamcore.jobs.folder import JobFolder, JobRecord
from dreamcore.jobs.process import ProcessIdentity, identify, is_running, kill_process

from jobs_helpers import wait_until_final


@pytest.fixture
def stranger():
    """An unrelated process, standing for one that got the pid of a job's child after a restart."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def running_record(folder: JobFolder, config, **process) -> None:
    folder.path.mkdir(parents=True)
    config.save(folder.config)
    folder.write_record(JobRecord(name=folder.name, status="running", created_at=1.0, queued_at=1.0, attempt=1,
                                  started_at=2.0, **process))


def test_identity_tells_a_process_from_a_later_one_with_its_pid(stranger):
    identity = identify(stranger.pid)
    assert identity is not None and identity.command[1:] == ("-c", "import time; time.sleep(120)")
    assert is_running(identity)
    assert not is_running(dataclasses.replace(identity, started_at=identity.started_at - 60))
    assert not is_running(dataclasses.replace(identity, command=(sys.executable, "-m", "dreamcore.jobs.child")))
    assert not kill_process(dataclasses.replace(identity, started_at=identity.started_at + 3600))
    assert stranger.poll() is None  # left alone
    assert kill_process(identity)
    assert stranger.wait(timeout=10) != 0
    assert identify(stranger.pid) is None and not is_running(identity)


@pytest.mark.parametrize("recorded", ["pid only (an older record)", "another start time", "another command"])
def test_after_a_restart_a_reused_pid_is_neither_adopted_nor_killed(make_manager, fake_config, tmp_path, stranger,
                                                                    recorded):
    root = tmp_path / "jobs"
    actual = identify(stranger.pid)
    process = {"pid": stranger.pid}
    if recorded == "another start time":
        process.update(pid_started_at=actual.started_at - 3600, pid_command=list(actual.command))
    elif recorded == "another command":
        process.update(pid_started_at=actual.started_at,
                       pid_command=[sys.executable, "-m", "dreamcore.jobs.child", str(root / "anna")])
    running_record(JobFolder(root / "anna"), fake_config, **process)
    manager = make_manager(root, stop_grace_seconds=0.0)
    info = manager.get("anna")
    assert info.status == "failed" and "started again" in info.error  # not "running" behind a stranger
    assert "Resume" in info.advice
    with pytest.raises(JobConflictError, match="already ended"):
        manager.cancel("anna")
    manager.submit(fake_config, "next")  # the queue is not blocked by the stranger
    assert wait_until_final(manager, "next").status == "completed"
    time.sleep(0.2)
    assert stranger.poll() is None  # never signalled
    assert JobFolder(root / "anna").read_record().pid is None


def test_an_adopted_child_whose_pid_is_then_reused_counts_as_ended(make_manager, fake_config, tmp_path, stranger):
    """A manager following an adopted child checks its identity on every look, and kills only that child."""
    root = tmp_path / "jobs"
    actual = identify(stranger.pid)
    running_record(JobFolder(root / "anna"), fake_config, pid=stranger.pid, pid_started_at=actual.started_at,
                   pid_command=list(actual.command))
    manager = make_manager(root, stop_grace_seconds=0.0)
    assert manager.get("anna").status == "running"  # the identity matches: it is followed
    manager.cancel("anna")  # it ignores the stop file; after the (zero) grace period it is killed
    ended = wait_until_final(manager, "anna", timeout=20)
    assert ended.status == "cancelled" and "did not stop" in ended.error
    assert stranger.wait(timeout=10) != 0


def test_the_record_keeps_the_childs_identity_while_it_runs(make_manager, fake_config):
    manager = make_manager()
    manager.submit(fake_config.replace(max_train_steps=200), "anna")
    deadline = time.monotonic() + 30
    while (record := JobFolder(manager.root / "anna").read_record()).pid is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    identity = record.process()
    assert isinstance(identity, ProcessIdentity) and is_running(identity)
    assert identity.command[-2:] == (str(manager.root / "anna"), "1")  # the fake child's folder and attempt
    manager.cancel("anna")
    wait_until_final(manager, "anna")
    finished = JobFolder(manager.root / "anna").read_record()
    assert (finished.pid, finished.pid_started_at, finished.pid_command) == (None, None, None)
