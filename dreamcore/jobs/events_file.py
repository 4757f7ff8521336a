"""A run's ``events.jsonl``: one JSON object per training event, appended as it happens, read by the tab.

A job's child writes it in the job folder (its ``log.txt`` is the child's output); a run of the command line
writes it, and a ``log.txt`` of its own, in the output folder (RunFiles). The file outlives the processes, so a
restarted WebUI rebuilds a job's progress from it. Each line is written with a single ``write`` and flushed; a
line cut short by a kill has no newline yet and is not read until it is complete (it never will be, so it is
ignored).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from dreamcore.events import SAVING_STAGE, Event, Progress, Stage, describe

EVENTS_FILE_NAME = "events.jsonl"
LOG_FILE_NAME = "log.txt"

# Event kinds the job runner adds to those of dreamcore.events.
JOB_STARTED = "job_started"  # the child began an attempt: {"attempt", "pid"}
JOB_ERROR = "job_error"  # the child caught an error: {"error_type", "message", "advice", "traceback"}
RUN_STARTED = "run_started"  # a command-line run began writing its output folder's file: {"pid", "command"}
JOB_MODEL = "job_model"  # the child read the family of the model the job trains: {"family"} (a family's name)


class EventWriter:
    """The child's callback: appends each event as one JSON line and flushes it at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle: TextIO = open(self.path, "a+", encoding="utf-8")
        if self._handle.tell() > 0:
            # An earlier attempt killed mid-write left a line without its newline: end it, so this
            # attempt's first event starts a line of its own.
            self._handle.seek(self._handle.tell() - 1)
            last = self._handle.read(1)
            if last != "\n":
                self._handle.write("\n")
                self._handle.flush()

    def __call__(self, event: Event) -> None:
        self.write(event.to_dict())

    def write(self, values: dict[str, Any]) -> None:
        line = json.dumps({**values, "time": time.time()}, default=str)
        self._handle.write(line + "\n")
        self._handle.flush()

    def error(self, error: BaseException, advice: str) -> None:
        self.write({"kind": JOB_ERROR, "error_type": type(error).__name__, "message": str(error) or repr(error),
                    "advice": advice, "traceback": "".join(traceback.format_exception(error))})

    def close(self) -> None:
        self._handle.close()


def progress_line(event: Progress) -> str:
    """A training step in words, for log files (the console's bar shows the same)."""
    from dreamcore.console import format_duration

    text = f"step {event.step}/{event.total_steps}: loss {event.loss:.4f}"
    if event.prior_loss is not None:
        text += f" (prior {event.prior_loss:.4f})"
    text += f", lr {event.learning_rate:.2e}"
    if event.step_seconds is not None:
        text += f", {event.step_seconds:.2f} s/step"
    if event.eta_seconds is not None:
        text += f", ETA {format_duration(event.eta_seconds)}"
    return text


def is_log_step(step: int, total_steps: int) -> bool:
    """The steps a log file gets a line for: about a hundred a run, and the first and the last."""
    return step == 1 or step == total_steps or step % max(1, total_steps // 100) == 0


class RunFiles:
    """A run's ``events.jsonl`` (every event, in a job's format) and ``log.txt`` (the lines a person reads, and
    every hundredth of the run's steps) in its output folder, for the command line. Opened at the run's first
    event after its settings were accepted (the "load" stage, when the output folder exists): a refused run
    leaves no folder behind. Earlier events are kept until then."""

    def __init__(self, output_dir: str | Path, command: str = ""):
        self.output_dir = Path(output_dir)
        self.command = command
        self.events: EventWriter | None = None
        self._log: TextIO | None = None
        self._early: list[Event] = []

    def __call__(self, event: Event) -> None:
        if self.events is None:
            if not (isinstance(event, Stage) and event.name == "load"):
                self._early.append(event)
                return
            self._open()
            for early in self._early:
                self._write(early)
            self._early.clear()
        self._write(event)

    def _open(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.events = EventWriter(self.output_dir / EVENTS_FILE_NAME)
        self.events.write({"kind": RUN_STARTED, "pid": os.getpid(), "command": self.command})
        self._log = open(self.output_dir / LOG_FILE_NAME, "a", encoding="utf-8")
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log.write(f"=== run started {started}" + (f": {self.command}" if self.command else "") + " ===\n")

    def _write(self, event: Event) -> None:
        assert self.events is not None and self._log is not None
        self.events(event)
        if isinstance(event, Progress):
            line = progress_line(event) if is_log_step(event.step, event.total_steps) else None
        else:
            line = describe(event)
        if line is not None:
            self._log.write(line + "\n")
            self._log.flush()

    def error(self, error: BaseException, advice: str = "") -> None:
        """The error that ended the run, in both files (nothing when it ended before they were opened)."""
        if self.events is None or self._log is None:
            return
        self.events.error(error, advice)
        self._log.write(f"error: {error}\n" + (f"{advice}\n" if advice else ""))
        self._log.flush()

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
        if self._log is not None:
            self._log.close()


@dataclass
class JobProgress:
    """What the events of a job say so far; the current attempt's fields reset at each ``job_started``."""

    attempt: int = 0
    pid: int | None = None
    stage: str = ""
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    steps_per_second: float = 0.0
    eta_seconds: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    samples: list[tuple[int, list[str]]] = field(default_factory=list)
    checkpoints: list[tuple[int, str, str]] = field(default_factory=list)  # (step, what, path)
    outputs: dict[str, str] = field(default_factory=dict)
    finished_status: str | None = None  # "completed" | "stopped" in this attempt
    error: dict[str, str] | None = None  # the JOB_ERROR event of this attempt
    messages: list[str] = field(default_factory=list)  # Log events, newest last (bounded)
    family: str = ""  # the model family the job trains ("sdxl"); empty until the child has read it

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == JOB_STARTED:
            self.attempt = int(event.get("attempt", self.attempt + 1))
            self.pid = event.get("pid")
            self.finished_status = None
            self.error = None
            self.stage = "starting"
        elif kind == "stage":
            name = str(event.get("name", ""))
            # a pause for saving is shown with what it saves; training goes on after it (see below)
            self.stage = f"saving {event.get('detail', '')}".rstrip() if name == SAVING_STAGE else name
        elif kind == "progress":
            if self.stage.startswith(SAVING_STAGE):
                self.stage = "train"
            step = int(event["step"])
            # A resumed attempt starts again from its last saved state: drop the losses it will redo.
            while self.losses and self.losses[-1][0] >= step:
                self.losses.pop()
            self.step, self.total_steps = step, int(event["total_steps"])
            self.loss = float(event["loss"])
            self.steps_per_second = float(event.get("steps_per_second") or 0.0)
            self.eta_seconds = event.get("eta_seconds")
            self.losses.append((step, self.loss))
        elif kind == "samples":
            self.samples.append((int(event["step"]), [str(p) for p in event.get("paths", [])]))
        elif kind == "checkpoint":
            self.checkpoints.append((int(event["step"]), str(event.get("what", "")), str(event["path"])))
        elif kind == "finished":
            self.finished_status = str(event["status"])
            self.step = int(event.get("step", self.step))
            self.outputs.update({str(k): str(v) for k, v in (event.get("outputs") or {}).items()})
            if self.finished_status == "completed":
                # nothing is under way any more: the last stage shown beside "completed" read as still running
                self.eta_seconds, self.stage = 0.0, ""
        elif kind == JOB_MODEL:
            self.family = str(event["family"])
        elif kind == JOB_ERROR:
            self.error = {k: str(event.get(k, "")) for k in ("error_type", "message", "advice", "traceback")}
        elif kind == "log":
            self.messages.append(str(event.get("message", "")))
            del self.messages[:-200]


class EventsReader:
    """Reads a job's events file incrementally: each call parses only the lines added since the last one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.progress = JobProgress()
        self._offset = 0
        self._identity: tuple[int, int] | None = None

    def read(self) -> JobProgress:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._reset(None)
            return self.progress
        identity = (stat.st_dev, stat.st_ino)
        if identity != self._identity or stat.st_size < self._offset:
            self._reset(identity)  # the file was replaced (job removed and submitted again)
        if stat.st_size == self._offset:
            return self.progress
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        complete = data.rfind(b"\n") + 1
        for line in data[:complete].splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                # Only a write cut short by a kill produces this; say so where the job's messages show.
                self.progress.messages.append(f"{self.path}: skipped an unfinished event line (the training "
                                              "process was stopped while writing it).")
                continue
            self.progress.apply(event)
        self._offset += complete
        return self.progress

    def _reset(self, identity: tuple[int, int] | None) -> None:
        self.progress = JobProgress()
        self._offset = 0
        self._identity = identity
