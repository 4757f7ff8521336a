"""JobInfo: everything a UI or API client shows about one job, read from its folder."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from dreamcore.jobs.events_file import JobProgress
from dreamcore.jobs.folder import JobFolder, JobRecord


@dataclass
class JobInfo:
    name: str
    status: str  # "queued" | "running" | "completed" | "failed" | "cancelled"
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    steps_per_second: float = 0.0
    eta_seconds: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    samples: list[tuple[int, list[str]]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # "single_file", "diffusers", ...
    error: str = ""
    advice: str = ""
    log_tail: list[str] = field(default_factory=list)
    folder: str = ""
    # Beyond the core fields: what a detailed view wants.
    stage: str = ""
    family: str = ""  # the model family the job trains, by name ("sdxl"; get_family gives its label); empty until read
    attempt: int = 0
    stop_requested: bool = False
    checkpoints: list[tuple[int, str, str]] = field(default_factory=list)  # (step, what, path)
    messages: list[str] = field(default_factory=list)
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    queue_position: int | None = None  # 1 = next to start; None unless queued

    @property
    def progress_fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-ready values; a loss that became NaN or infinite (a diverged run) is None, as JSON
        has no such numbers."""
        values = dataclasses.asdict(self)
        values["progress_fraction"] = self.progress_fraction
        return _finite(values)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def build_job_info(folder: JobFolder, record: JobRecord, progress: JobProgress, log_lines: int = 40) -> JobInfo:
    return JobInfo(
        name=record.name, status=record.status, step=progress.step, total_steps=progress.total_steps,
        loss=progress.loss, steps_per_second=progress.steps_per_second,
        eta_seconds=progress.eta_seconds if record.status == "running" else None,
        losses=list(progress.losses), samples=[(step, list(paths)) for step, paths in progress.samples],
        outputs=dict(progress.outputs), error=record.error, advice=record.advice,
        log_tail=folder.log_tail(log_lines), folder=str(folder.path), stage=progress.stage,
        family=progress.family,
        attempt=record.attempt, stop_requested=record.stop_requested_at is not None,
        checkpoints=list(progress.checkpoints), messages=progress.messages[-20:], created_at=record.created_at,
        started_at=record.started_at, finished_at=record.finished_at)
