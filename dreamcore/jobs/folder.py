"""One job = one folder: its settings, its state record, its events, its log and its outputs.

    <root>/<name>/job.json            status record (JobRecord), rewritten atomically
    <root>/<name>/train_config.json   the TrainConfig the child trains with (output_dir = ./output)
    <root>/<name>/events.jsonl        training events, appended by the child
    <root>/<name>/log.txt             the child's stdout and stderr
    <root>/<name>/stop                present = stop requested (the child polls it)
    <root>/<name>/output/             samples, checkpoints, resumable state and the exported model
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreamcore.fileio import atomic_write_text

if TYPE_CHECKING:
    from dreamcore.jobs.process import ProcessIdentity

JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
FINAL_STATUSES = ("completed", "failed", "cancelled")


class JobFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    record = property(lambda self: self.path / "job.json")
    config = property(lambda self: self.path / "train_config.json")
    events = property(lambda self: self.path / "events.jsonl")
    log = property(lambda self: self.path / "log.txt")
    stop_file = property(lambda self: self.path / "stop")
    output = property(lambda self: self.path / "output")

    def read_record(self) -> "JobRecord":
        try:
            values = json.loads(self.record.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise JobRecordError(f"{self.record}: cannot read the job record ({error}); remove the folder "
                                 f"{self.path} if the job is not needed.") from error
        known = {f.name for f in dataclasses.fields(JobRecord)}
        return JobRecord(**{k: v for k, v in values.items() if k in known})

    def write_record(self, record: "JobRecord") -> None:
        atomic_write_text(self.record, json.dumps(dataclasses.asdict(record), indent=2) + "\n")

    def log_tail(self, lines: int = 40) -> list[str]:
        try:
            with open(self.log, "rb") as handle:
                handle.seek(0, 2)
                size = handle.tell()
                handle.seek(max(0, size - 64 * 1024))
                text = handle.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return text.splitlines()[-lines:]


class JobRecordError(RuntimeError):
    """A job folder whose job.json is missing or damaged."""


@dataclass
class JobRecord:
    """What the parent knows about a job that the events do not say (written only by JobManagers)."""

    name: str
    status: str = "queued"
    created_at: float = 0.0
    queued_at: float = 0.0  # queue order: oldest first
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int = 0
    pid: int | None = None
    # With the pid, what tells the running child apart from a later process that reuses its pid.
    pid_started_at: float | None = None
    pid_command: list[str] | None = None
    returncode: int | None = None
    error: str = ""
    advice: str = ""
    stop_requested_at: float | None = None
    gpu: str | None = None  # the GPU a running job was started on (JobManager(gpus=...)), else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def process(self) -> ProcessIdentity | None:
        """The running child's identity; None when none is recorded (also in records written before
        dreamcore kept it: such a pid is never trusted)."""
        from dreamcore.jobs.process import ProcessIdentity

        if self.pid is None or self.pid_started_at is None or self.pid_command is None:
            return None
        return ProcessIdentity(self.pid, self.pid_started_at, tuple(self.pid_command))
