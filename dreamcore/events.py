"""What flows out of a training run (events, to callbacks) and what flows in (stop requests).

A callback is any callable taking one event. Events are small frozen dataclasses; ``event.kind`` names
them for consumers that serialise events (the job runner, the REST API, the tab).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol


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
    """A phase of the run began: "validate", "load", "class_images", "cache", "train", "saving" (a pause of the
    training steps for a state, samples or a checkpoint; the detail says which, and training goes on after it),
    "export", "done"."""

    name: str
    detail: str = ""
    kind: str = field(init=False, default="stage")


@dataclass(frozen=True)
class Progress(Event):
    """One optimizer step finished. ``loss`` is the step's mean loss (prior term included). The rate and ETA
    count training steps only (StepClock): 0 and None until the first steps are timed. ``step_seconds``: this
    step's own time, pauses for saving left out."""

    step: int
    total_steps: int
    loss: float
    learning_rate: float
    steps_per_second: float
    eta_seconds: float | None
    prior_loss: float | None = None
    step_seconds: float | None = None
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

SAVING_STAGE = "saving"


def describe(event: Event) -> str | None:
    """The event as one line for a person (the console, a run's log.txt); None for per-step progress, which a
    progress bar or the events file shows."""
    if isinstance(event, Log):
        return ("" if event.level == "info" else f"{event.level.upper()}: ") + event.message
    if isinstance(event, Stage):
        if event.name == SAVING_STAGE:
            return f"saving {event.detail}"
        return f"== {event.name}" + (f": {event.detail}" if event.detail else "")
    if isinstance(event, ClassImagesProgress):
        return f"class images: {event.done}/{event.total}"
    if isinstance(event, SamplesSaved):
        return f"step {event.step}: samples in {event.paths[0].rsplit('/', 1)[0]}" if event.paths else None
    if isinstance(event, CheckpointSaved):
        return f"step {event.step}: {event.what} saved to {event.path}"
    if isinstance(event, Finished):
        lines = [f"Training {event.status} at step {event.step}. Outputs:"]
        lines += [f"  {name:12s} {path}" for name, path in event.outputs.items()]
        return "\n".join(lines)
    return None


class StepClock:
    """Times training steps for the rate and ETA. A step's time runs from the launch of the step before to its
    own, less the pauses for saving and sampling (``paused()``): the host waits for the device one step behind
    (training/late_read.py), so in a steady run that is the device's time for a step. The rate leaves out the
    first ``warmup`` steps, which compilation, kernel selection and allocator warm-up make slow (and whose launch
    the host does not wait for yet), so step 1 shows no rate rather than a wild one."""

    def __init__(self, warmup: int = 2, clock: Callable[[], float] = time.perf_counter):
        self.warmup = warmup
        self._clock = clock
        self._last = clock()
        self._paused = 0.0
        self._timed = 0
        self._counted_steps = 0
        self._counted_seconds = 0.0

    def step_done(self) -> float:
        """A step was launched: its seconds, pauses left out."""
        now = self._clock()
        seconds = max(0.0, now - self._last - self._paused)
        self._last, self._paused = now, 0.0
        self._timed += 1
        if self._timed > self.warmup:
            self._counted_steps += 1
            self._counted_seconds += seconds
        return seconds

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside is not a step's (saving a state or checkpoint, drawing samples)."""
        began = self._clock()
        try:
            yield
        finally:
            self._paused += self._clock() - began

    @property
    def steps_per_second(self) -> float:
        """Training steps per second after the warm-up steps; 0.0 until one is timed."""
        if not self._counted_steps or self._counted_seconds <= 0:
            return 0.0
        return self._counted_steps / self._counted_seconds

    def eta_seconds(self, steps_left: int) -> float | None:
        """Seconds for ``steps_left`` more steps at the measured rate; None while there is no rate yet."""
        rate = self.steps_per_second
        return steps_left / rate if rate > 0 else None


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
