"""What flows out of a training run (events, to callbacks) and what flows in (stop requests).

A callback is any callable taking one event. Events are small frozen dataclasses; ``event.kind`` names
them for consumers that serialise events (the job runner, the REST API, the tab).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


@dataclass(frozen=True)
class Event:
    kind: str = field(init=False, default="event")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Log(Event):
    message: str
    level: str = "info"  # "info" | "warning" | "error"
    kind: str = field(init=False, default="log")


@dataclass(frozen=True)
class Stage(Event):
    """A phase of the run began: "validate", "load", "class_images", "cache", "train", "export", "done"."""

    name: str
    detail: str = ""
    kind: str = field(init=False, default="stage")


@dataclass(frozen=True)
class Progress(Event):
    """One optimizer step finished. ``loss`` is the step's mean loss (prior term included)."""

    step: int
    total_steps: int
    loss: float
    learning_rate: float
    steps_per_second: float
    eta_seconds: float
    prior_loss: float | None = None
    kind: str = field(init=False, default="progress")


@dataclass(frozen=True)
class ClassImagesProgress(Event):
    done: int
    total: int
    kind: str = field(init=False, default="class_images")


@dataclass(frozen=True)
class SamplesSaved(Event):
    step: int
    paths: tuple[str, ...]
    prompt: str
    kind: str = field(init=False, default="samples")


@dataclass(frozen=True)
class CheckpointSaved(Event):
    """A model or a resumable state was written. ``what`` is "checkpoint", "state" or "final"."""

    step: int
    path: str
    what: str
    kind: str = field(init=False, default="checkpoint")


@dataclass(frozen=True)
class Finished(Event):
    """The run ended. ``status`` is "completed" or "stopped"; outputs maps names to paths."""

    status: str
    step: int
    outputs: dict[str, str]
    kind: str = field(init=False, default="finished")


Callback = Callable[[Event], None]


class StopSignal(Protocol):
    def is_set(self) -> bool: ...


class StopRequest:
    """A stop request the caller sets (from another thread, a signal handler or a UI button). Training ends
    after the step in flight, the one after the last step reported (the loop reads each step's loss while
    the next step runs, see training/late_read.py)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


class Emitter:
    """Sends each event to every callback; a failing callback is an error of the caller's, not swallowed."""

    def __init__(self, callbacks: list[Callback] | None = None):
        self.callbacks = list(callbacks or [])

    def __call__(self, event: Event) -> None:
        for callback in self.callbacks:
            callback(event)

    def log(self, message: str, level: str = "info") -> None:
        self(Log(message, level))
