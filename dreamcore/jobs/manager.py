"""JobManager: a queue of training jobs, each run in a child process, each kept in its own folder.

    manager = JobManager("jobs")
    manager.submit(config, "anna")      # queued; starts when the jobs before it have ended
    manager.get("anna").step            # progress, read from the job's events file

Several managers may share one jobs root (the WebUI, the CLI, a test): the one holding
``<root>/.worker.lock`` runs the queue; the others read, submit, cancel and remove through the folders.
A manager that takes the queue over (a restarted WebUI) adopts a child that still runs and marks a job
whose child is gone as failed, so nothing shows "running" forever. A child is recognised by its pid, start
time and command line together: a process that merely reuses the pid is never followed or killed.

Every request reads and changes a job's record under one lock (``<root>/.jobs.lock``), so requests racing on
one job (cancel, resume, remove, re-run at once) each see a whole state: each either applies or is refused
with JobNotFoundError or JobConflictError.
"""

from __future__ import annotations

import copy
import logging
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from dreamcore.config import STATE_NAME, ConfigError, TrainConfig
from dreamcore.fileio import atomic_directory
from dreamcore.jobs.advice import advice_for_exit, describe_exit
from dreamcore.jobs.allowed import AllowedFolders, is_hub_id
from dreamcore.jobs.events_file import EventsReader, JobProgress
from dreamcore.jobs.folder import FINAL_STATUSES, JobFolder, JobRecord, JobRecordError
from dreamcore.jobs.info import JobInfo, build_job_info
from dreamcore.jobs.locks import FileLock
from dreamcore.jobs.names import check_job_name
from dreamcore.jobs.process import (ChildCommand, ProcessIdentity, default_child_command, identify, is_running,
                                    kill_process, start_child)

logger = logging.getLogger(__name__)

# Config fields holding local paths; made absolute at submit, because the child runs in the job folder.
_PATH_FIELDS = ("instance_data_dir", "class_data_dir", "concepts_list", "tokenizer_name")
_MODEL_FIELDS = ("pretrained_model_name_or_path", "pretrained_vae_name_or_path")  # may also be hub ids


class JobError(Exception):
    """Base of the errors JobManager raises for a request it refuses; nothing was changed."""


class JobNotFoundError(JobError, LookupError):
    pass


class JobConflictError(JobError):
    """The request does not fit the job's state (already exists, already running, still running, ...)."""


@dataclass
class _Child:
    name: str
    pid: int
    popen: subprocess.Popen | None  # None for a child adopted from an earlier manager ...
    identity: ProcessIdentity | None = None  # ... which is then watched and ended by its identity
    gpu: str | None = None  # the CUDA_VISIBLE_DEVICES it was started with (None: the environment's)
    killed_at: float | None = None


class JobManager:
    """The training queue under one folder: submit, list, get, cancel, resume, rerun, remove, wait."""

    def __init__(self, root_dir: str | Path, python: str = sys.executable, *,
                 child_command: ChildCommand | None = None, run_queue: bool = True,
                 poll_interval: float = 0.5, stop_grace_seconds: float = 300.0, gpus: Sequence[str] | None = None):
        """``root_dir``: one folder per job. ``python``: the interpreter of the children.
        ``child_command``: builds a child's argv (tests); ``run_queue=False``: only read and submit.
        ``stop_grace_seconds``: how long a child may take to stop after Cancel before it is killed.
        ``gpus``: CUDA device ids ("0", "1", ...): one job runs on each at a time, its child seeing only that
        GPU (CUDA_VISIBLE_DEVICES). None: one job at a time, with the GPUs of this process's environment."""
        self.root = Path(root_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.poll_interval = poll_interval
        self.stop_grace_seconds = stop_grace_seconds
        self._child_command = child_command or default_child_command(python)
        self._records_lock = FileLock(self.root / ".jobs.lock")  # short read-modify-write of job records
        self._worker_lock = FileLock(self.root / ".worker.lock")  # held while this manager runs the queue
        self._readers: dict[str, EventsReader] = {}
        self._readers_guard = threading.Lock()
        self._slots: list[str | None] = _gpu_slots(gpus)
        self._running: dict[str, _Child] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        if run_queue:
            self._tick()  # take the queue over now, so a restart shows the true state at once
            self._thread = threading.Thread(target=self._run_queue, name="dreamcore-jobs", daemon=True)
            self._thread.start()

    # --- requests -----------------------------------------------------------------------------------
    def submit(self, config: TrainConfig, name: str, allowed: AllowedFolders | None = None) -> JobInfo:
        """Queue a job; it trains with ``config`` except that ``output_dir`` becomes ``<root>/<name>/output``
        (everything a job makes stays in its folder), its files are named after the job unless ``model_name``
        is set, and relative paths are made absolute.
        ``allowed`` (the REST API): every local path must be absolute and inside those folders, and a relative
        model value is a hub id, never looked up on the disk.
        Raises JobNameError, ConfigError (every problem at once) or JobConflictError (the name is taken)."""
        check_job_name(name)
        if not isinstance(config, TrainConfig):
            raise TypeError(f"submit: config must be a TrainConfig, got {type(config).__name__}")
        folder = self._folder(name)
        problems = self.problems(config, name, allowed)
        if problems:
            raise ConfigError(problems)
        config = self._job_config(config, folder, local_models=allowed is None)
        now = time.time()
        with self._records_lock.hold():
            if folder.path.exists():
                raise JobConflictError(f"a job named {name!r} already exists ({self._status_text(folder)}); "
                                       "choose another name, or use Resume / Re-run on that job.")
            with atomic_directory(folder.path) as temp:
                config.save(JobFolder(temp).config)
                JobFolder(temp).write_record(JobRecord(name=name, status="queued", created_at=now, queued_at=now))
            info = self.get(name)  # as queued, even if another request removes it right after
        self._wake.set()
        return info

    def problems(self, config: TrainConfig, name: str, allowed: AllowedFolders | None = None) -> list[str]:
        """Everything ``submit(config, name, allowed)`` would refuse in the settings, checked on the job's own
        copy (its output folder, absolute paths); empty when they can train. Nothing is written. With
        ``allowed``, paths outside those folders are all that is reported: nothing outside is looked at."""
        if allowed is not None:
            outside = allowed.problems(config)
            if outside:
                return outside
        return self._job_config(config, self._folder(name), local_models=allowed is None).problems()

    def list(self) -> list[JobInfo]:
        """Every job under the root, oldest first; queued jobs carry their queue position."""
        infos = []
        for path in sorted(self.root.iterdir()):
            if path.is_dir() and not path.name.startswith(".") and (path / "job.json").exists():
                info = self._info(JobFolder(path))
                if info is not None:
                    infos.append(info)
        infos.sort(key=lambda info: (info.created_at, info.name))
        queued = sorted((i for i in infos if i.status == "queued"), key=lambda i: (self._queued_at(i), i.name))
        for position, info in enumerate(queued, start=1):
            info.queue_position = position
        return infos

    def get(self, name: str) -> JobInfo:
        folder = self._existing(name)
        info = self._info(folder)
        if info is not None and info.status == "queued":
            info = next((i for i in self.list() if i.name == name), None)
        if info is None:
            raise JobNotFoundError(f"no job named {name!r} under {self.root} (it was just removed).")
        return info

    def cancel(self, name: str) -> JobInfo:
        """A queued job is cancelled at once; a running one is asked to stop (it saves a resumable state)."""
        folder = self._folder(name)
        with self._records_lock.hold():
            record = self._locked_record(folder)
            if record.status in FINAL_STATUSES:
                raise JobConflictError(f"job {name!r} has already ended ({record.status}); nothing to cancel.")
            if record.status == "queued":
                record.status, record.finished_at = "cancelled", time.time()
                record.error, record.advice = "cancelled before it started", "Resume puts it back in the queue."
            elif record.stop_requested_at is None:
                folder.stop_file.touch()
                record.stop_requested_at = time.time()
            folder.write_record(record)
            info = self.get(name)  # as changed here, even if another request removes it right after
        self._wake.set()
        return info

    def resume(self, name: str) -> JobInfo:
        """Queue a failed or cancelled job again; it continues from its latest saved state."""
        # Imports torch the first time: done before taking the lock, which every other request waits for.
        from dreamcore.training.state import latest_state_folder

        folder = self._folder(name)
        with self._records_lock.hold():
            record = self._locked_record(folder)
            if record.status in ("queued", "running"):
                raise JobConflictError(f"job {name!r} is already {record.status}; it cannot be started twice.")
            if record.status == "completed":
                raise JobConflictError(f"job {name!r} has completed; use Re-run to train it again.")
            config = TrainConfig.load(folder.config)
            # Without a saved state (it failed before the first one) the job starts again from step 0.
            resume_from = "latest" if latest_state_folder(folder.output) is not None else ""
            if config.resume_from_checkpoint != resume_from:
                config.replace(resume_from_checkpoint=resume_from).save(folder.config)
            folder.stop_file.unlink(missing_ok=True)
            record.status, record.queued_at = "queued", time.time()
            record.finished_at = record.returncode = record.stop_requested_at = None
            record.error = record.advice = ""
            folder.write_record(record)
            info = self.get(name)  # as changed here, even if another request removes it right after
        self._wake.set()
        return info

    def rerun(self, name: str, new_name: str | None = None) -> JobInfo:
        """Queue a fresh run of a job's settings under a new name (default: ``<name>-2``, ``-3``, ...),
        so the earlier run's outputs stay as they are."""
        folder = self._folder(name)
        if new_name is not None:
            check_job_name(new_name)
        with self._records_lock.hold():
            self._locked_record(folder)
            config = TrainConfig.load(folder.config).replace(resume_from_checkpoint="")
        if config.model_name == name:
            # Files named after the job (the tab's jobs, or a name filled in at submit) follow the new name,
            # so the re-run's model does not come out under the earlier job's name.
            config = config.replace(model_name="")
        if new_name is not None:
            return self.submit(config, new_name)
        base = name.rsplit("-", 1)[0] if name.rsplit("-", 1)[-1].isdigit() else name
        number = 2
        while True:
            while self._folder(f"{base}-{number}").path.exists():
                number += 1
            try:
                return self.submit(config, f"{base}-{number}")
            except JobConflictError:
                number += 1  # another request took that name meanwhile: the next one

    def remove(self, name: str) -> None:
        """Delete a job that is not running: its folder, outputs included. Cancel a running job first.
        A job whose record is damaged can be removed too."""
        folder = self._folder(name)
        with self._records_lock.hold():
            try:
                record: JobRecord | None = self._locked_record(folder)
            except JobConflictError:
                record = None  # damaged: removing it is what its message advises
            if record is not None and record.status == "running":
                raise JobConflictError(f"job {name!r} is running; cancel it first, then remove it.")
            # Renamed first, so the job disappears at once even if deleting many files takes a while.
            trash = self.root / f".removed-{name}-{time.time_ns()}"
            folder.path.rename(trash)
        with self._readers_guard:
            self._readers.pop(name, None)
        _delete_removed(trash)

    def wait(self, name: str, timeout: float | None = None, poll_seconds: float = 0.5) -> JobInfo:
        """Block until the job has ended (completed, failed or cancelled); return its final JobInfo.
        Raises TimeoutError after ``timeout`` seconds. Someone must run the queue (this or another manager)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.get(name)
            if info.status in FINAL_STATUSES:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {name!r} is still {info.status} after {timeout} s (step {info.step}).")
            time.sleep(poll_seconds)

    def shutdown(self, stop_running: bool = False, timeout: float = 60.0) -> None:
        """Stop running the queue. A running child keeps training (a later manager adopts it) unless
        ``stop_running``: then it is asked to stop and waited for up to ``timeout`` seconds."""
        if self._stopping.is_set():
            return  # already shut down
        if stop_running and self._running and self._thread is not None and self._thread.is_alive():
            for name in list(self._running):
                try:
                    self.cancel(name)
                except JobConflictError:
                    pass  # it ended meanwhile: nothing left to stop
            deadline = time.monotonic() + timeout
            while self._running and time.monotonic() < deadline:
                self._wake.set()
                time.sleep(min(self.poll_interval, 0.2))
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(5.0, 4 * self.poll_interval))
        self._running = {}  # a child still running is now followed by whichever manager runs the queue next
        self._worker_lock.release()

    @property
    def runs_queue(self) -> bool:
        """Whether this manager is the one starting jobs under its root now."""
        return self._worker_lock.held

    # --- the queue ----------------------------------------------------------------------------------
    def _run_queue(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.poll_interval)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self._tick()
            except Exception:  # the queue must keep going for the other jobs; the error is logged in full
                logger.exception("dreamcore jobs: the job queue hit an error (it keeps running)")

    def _tick(self) -> None:
        if not self._worker_lock.held:
            if not self._worker_lock.acquire(blocking=False):
                return  # another manager runs this root's queue
            self._recover()
        for child in list(self._running.values()):
            self._watch(child)
        while len(self._running) < len(self._slots) and self._start_next():
            pass

    def _recover(self) -> None:
        """After taking the queue over: adopt a child that still runs, finish the records of those gone,
        and delete what removals left behind."""
        for leftover in self.root.glob(".removed-*"):
            _delete_removed(leftover)
        for info in self.list():
            if info.status != "running":
                continue
            record = self._folder(info.name).read_record()
            identity = record.process()
            if identity is not None and is_running(identity):
                self._running[info.name] = _Child(info.name, identity.pid, popen=None, identity=identity,
                                                  gpu=record.gpu)
                logger.info("dreamcore jobs: %s is still training (pid %s); following it.", info.name, record.pid)
                continue
            if record.pid is not None and identify(record.pid) is not None:
                logger.warning("dreamcore jobs: a process with pid %s runs, but its start time and command line are "
                               "not those recorded for %s's training process; it is left alone.", record.pid,
                               info.name)
            self._finish(info.name, returncode=None, interrupted=True)

    def _watch(self, child: _Child) -> None:
        if child.popen is not None:
            ended, returncode = child.popen.poll() is not None, child.popen.returncode
        else:
            ended, returncode = child.identity is None or not is_running(child.identity), None
        if ended:
            del self._running[child.name]
            self._finish(child.name, returncode, forced=child.killed_at is not None)
            return
        record = self._folder(child.name).read_record()
        if (record.stop_requested_at is not None and child.killed_at is None
                and time.time() - record.stop_requested_at > self.stop_grace_seconds):
            logger.warning("dreamcore jobs: %s did not stop within %.0f s of Cancel; ending it.", child.name,
                           self.stop_grace_seconds)
            child.killed_at = time.time()
            if child.popen is not None:
                child.popen.kill()
            elif child.identity is not None:
                kill_process(child.identity)

    def _start_next(self) -> bool:
        """Start the oldest queued job on a free slot; False when none is queued (or no slot is free)."""
        busy = [child.gpu for child in self._running.values()]
        free = [slot for slot in self._slots if slot not in busy]
        if not free:
            return False
        gpu = free[0]
        with self._records_lock.hold():
            queued = [i for i in self.list() if i.status == "queued"]
            if not queued:
                return False
            info = min(queued, key=lambda i: i.queue_position or 0)
            folder = self._folder(info.name)
            record = folder.read_record()
            record.attempt += 1
            folder.stop_file.unlink(missing_ok=True)
            with open(folder.log, "a", encoding="utf-8") as log:
                started = time.strftime("%Y-%m-%d %H:%M:%S") + ("" if gpu is None else f" on GPU {gpu}")
                log.write(f"=== attempt {record.attempt} started {started} ===\n")
            try:
                argv = self._child_command(folder, record.attempt)
                popen = start_child(argv, folder, gpu)
            except OSError as error:
                record.status, record.finished_at = "failed", time.time()
                record.error = f"could not start the training process ({self.python}): {error}"
                record.advice = "Check the Python interpreter setting of the job runner."
                folder.write_record(record)
                return True  # this job is settled; the next may start
            record.status, record.started_at, record.pid, record.gpu = "running", time.time(), popen.pid, gpu
            # The command line is the argv it was started with: read back at once, the system may still show it
            # empty while the new program is being set up. None if it already ended: never adopted, nor needs be.
            identity = identify(popen.pid)
            record.pid_started_at = identity.started_at if identity else None
            record.pid_command = list(argv) if identity else None
            record.returncode = record.finished_at = None
            folder.write_record(record)
            self._running[info.name] = _Child(info.name, popen.pid, popen, gpu=gpu)
        logger.info("dreamcore jobs: started %s (pid %s%s).", info.name, popen.pid,
                    "" if gpu is None else f", GPU {gpu}")
        return True

    def _finish(self, name: str, returncode: int | None, forced: bool = False, interrupted: bool = False) -> None:
        """Write a job's final status from what its events say and how its child ended."""
        folder = self._folder(name)
        progress = self._read_progress(folder)
        with self._records_lock.hold():
            record = folder.read_record()
            record.returncode, record.pid, record.finished_at = returncode, None, time.time()
            record.pid_started_at = record.pid_command = None
            if progress.finished_status == "completed":
                record.status, record.error, record.advice = "completed", "", ""
            elif progress.finished_status == "stopped":
                record.status, record.error = "cancelled", ""
                record.advice = f"Stopped at step {progress.step}; Resume continues from the saved state."
            elif forced:
                record.status = "cancelled"
                record.error = (f"the training process did not stop within {self.stop_grace_seconds:.0f} s of "
                                "Cancel and was ended")
                record.advice = "Resume continues from the last state saved before that (checkpointing_steps)."
            elif progress.error is not None:
                record.status = "failed"
                record.error = f"{progress.error['error_type']}: {progress.error['message']}"
                record.advice = progress.error["advice"]
            else:
                record.status = "failed"
                where = f" at step {progress.step}" if progress.step else (
                    f" during '{progress.stage}'" if progress.stage else "")
                record.error = describe_exit(returncode) + where + (
                    " (found when dreamcore started again)" if interrupted else "")
                record.advice = advice_for_exit(returncode)
            folder.write_record(record)
            folder.stop_file.unlink(missing_ok=True)
        logger.info("dreamcore jobs: %s %s%s", name, record.status, f": {record.error}" if record.error else "")

    # --- helpers ------------------------------------------------------------------------------------
    def _folder(self, name: str) -> JobFolder:
        return JobFolder(self.root / check_job_name(name))

    def _existing(self, name: str) -> JobFolder:
        folder = self._folder(name)
        if not folder.record.exists():
            raise JobNotFoundError(f"no job named {name!r} under {self.root}.")
        return folder

    def _locked_record(self, folder: JobFolder) -> JobRecord:
        """The job's record, read while holding the records lock: a job that is not there is not found, a
        damaged record is a conflict that names the file."""
        if not folder.record.exists():
            raise JobNotFoundError(f"no job named {folder.name!r} under {self.root}.")
        try:
            return folder.read_record()
        except JobRecordError as error:
            raise JobConflictError(str(error)) from error

    def _read_progress(self, folder: JobFolder) -> JobProgress:
        """The job's events so far (one reader per job, used by one thread at a time)."""
        with self._readers_guard:
            reader = self._readers.get(folder.name)
            if reader is None:
                reader = self._readers[folder.name] = EventsReader(folder.events)
            return copy.deepcopy(reader.read())

    def _info(self, folder: JobFolder, attempts: int = 2) -> JobInfo | None:
        """The job's JobInfo; None when its folder vanished meanwhile (removed by another request)."""
        try:
            record = folder.read_record()
        except JobRecordError as error:
            if not folder.path.exists():
                return None
            return JobInfo(name=folder.name, status="failed", error=str(error), folder=str(folder.path),
                           advice="Remove this job; its record cannot be read.")
        try:
            return build_job_info(folder, record, self._read_progress(folder))
        except FileNotFoundError:
            if not folder.path.exists():
                return None  # removed while its files were being read
            if attempts <= 1:
                raise
            # Removed and submitted again under the same name while being read: read the new job.
            return self._info(folder, attempts - 1)

    def _queued_at(self, info: JobInfo) -> float:
        try:
            return self._folder(info.name).read_record().queued_at
        except JobRecordError:
            return float("inf")

    def _status_text(self, folder: JobFolder) -> str:
        try:
            return folder.read_record().status
        except JobRecordError:
            return "its record is damaged"

    @staticmethod
    def _job_config(config: TrainConfig, folder: JobFolder, local_models: bool = True) -> TrainConfig:
        """The job's copy of the settings: outputs go to the job folder and are named after the job (unless
        model_name is set), local paths made absolute. ``local_models=False``: a relative model value that
        looks like a hub id stays one, even where a folder of that name exists."""
        changes: dict[str, str] = {"output_dir": str(folder.output)}
        if not config.model_name:
            # Left empty, the files would take the output folder's name: output.safetensors for every job.
            changes["model_name"] = folder.name
        for name in _PATH_FIELDS:
            value = getattr(config, name)
            if value and not Path(value).is_absolute():
                changes[name] = str(Path(value).resolve())
        for name in _MODEL_FIELDS:
            value = getattr(config, name)
            if not local_models and is_hub_id(value):
                continue
            if value and not Path(value).is_absolute() and Path(value).exists():
                changes[name] = str(Path(value).resolve())
        if config.resume_from_checkpoint not in ("", "latest") and not STATE_NAME.fullmatch(
                config.resume_from_checkpoint) and not Path(config.resume_from_checkpoint).is_absolute():
            changes["resume_from_checkpoint"] = str(Path(config.resume_from_checkpoint).resolve())
        return config.replace(**changes)


def _delete_removed(trash: Path) -> None:
    """Delete a removed job's renamed folder; if that fails, it is tried again when the queue is next taken
    over (the job is already gone from the list)."""
    try:
        shutil.rmtree(trash)
    except FileNotFoundError:
        pass  # another manager is deleting it too
    except OSError as error:
        logger.warning("dreamcore jobs: could not delete %s yet (%s); it is retried at the next start.", trash, error)


def _gpu_slots(gpus: Sequence[str] | None) -> list[str | None]:
    """The queue's slots: one per GPU id given (checked), or one slot with the environment's GPUs."""
    if gpus is None:
        return [None]
    slots = [str(gpu).strip() for gpu in gpus]
    bad = [gpu for gpu in slots if not gpu or "," in gpu]
    if not slots or bad or len(set(slots)) != len(slots):
        raise ValueError(f"gpus: give distinct CUDA device ids, one per GPU (e.g. 0,1), not {list(gpus)!r}")
    return slots
