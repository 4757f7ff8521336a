"""Measuring one run: event timestamps from the trainer's callbacks, and the device's memory as users see it."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field

from dreamcore.events import SAVING_STAGE


@dataclass
class RunTimes:
    """perf_counter() stamps of one training run, filled by the trainer's events (``timer(event)``)."""

    started: float = field(default_factory=time.perf_counter)
    stages: dict[str, float] = field(default_factory=dict)
    last_class_image: float | None = None
    # each class-image progress event: the first says generation starts (models on the device), then one a batch
    class_image_stamps: list[float] = field(default_factory=list)
    last_samples: float | None = None  # when the last checkpoint's samples were written
    steps: list[float] = field(default_factory=list)  # stamp of each completed step, in order
    save_stamps: list[float] = field(default_factory=list)  # each save's start during training
    losses: list[float] = field(default_factory=list)
    finished: float | None = None
    # The training phase alone (first step to export), for memory: epoch seconds (to match the device
    # sampler's clock) and the torch allocator's peak inside it.
    train_window: tuple[float, float] | None = None
    train_peak_allocated_gib: float | None = None

    def __call__(self, event) -> None:
        now = time.perf_counter()
        if event.kind == "stage":
            self.stages.setdefault(event.name, now)
            if event.name == SAVING_STAGE:
                self.save_stamps.append(now)
            if event.name in ("train", "export"):
                self._mark_training_phase(event.name)
        elif event.kind == "class_images":
            self.last_class_image = now
            self.class_image_stamps.append(now)
        elif event.kind == "samples":
            self.last_samples = now
        elif event.kind == "progress":
            self.steps.append(now)
            self.losses.append(event.loss)
        elif event.kind == "finished":
            self.finished = now

    def _mark_training_phase(self, stage: str) -> None:
        import torch

        if stage == "train":
            self.train_window = (time.time(), time.time())
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        elif self.train_window is not None:
            self.train_window = (self.train_window[0], time.time())
            if torch.cuda.is_available():
                self.train_peak_allocated_gib = torch.cuda.max_memory_allocated() / 2**30


@dataclass(frozen=True)
class Phases:
    """Seconds spent in each part of a run, and the steady step time after ``warmup_steps``."""

    load_s: float  # start of train() to class-image generation: validation, model load
    class_images_s: float
    prepare_s: float  # models to the device, optimizer, latent cache
    warmup_steps: int
    warmup_s: float  # first step's start to the end of step ``warmup_steps``
    steady_s_per_step: float
    export_s: float  # final samples, diffusers folder, single file
    # Where load and export go (None where the run did not say): start to the model load (imports, checks of
    # config and photos), and the export's samples (the rest of export_s writes the files).
    validate_s: float | None = None
    export_samples_s: float | None = None
    # Where class images go: the stage's start to the first batch (listing, waiting for the other processes,
    # models to the device), the first batch (first-use costs), and the later batches' mean.
    class_setup_s: float | None = None
    class_first_batch_s: float | None = None
    class_batch_s: float | None = None
    class_batches: int = 0
    # The whole run as measured (start to the end of the export), and the steps after warm-up one by one: a save
    # that stalls training shows as a step far slower than the median (issue 23: at most 3x).
    total_s: float | None = None
    median_step_s: float | None = None
    slowest_step_s: float | None = None
    slowest_step: int | None = None  # its number (1-based)
    # The step intervals that hold a save (the samples it draws and its copies to the host: the pause training
    # takes), and the slowest step of the others (a save written beside training must not slow them).
    save_pauses_s: tuple[float, ...] = ()
    slowest_other_step_s: float | None = None
    slowest_other_step: int | None = None

    @property
    def steady_it_per_s(self) -> float:
        return 1.0 / self.steady_s_per_step

    def projected_total_s(self, total_steps: int) -> float:
        """End-to-end time of ``total_steps``: the measured parts plus the remaining steps at steady speed."""
        remaining = max(total_steps - self.warmup_steps, 0)
        return (self.load_s + self.class_images_s + self.prepare_s + self.warmup_s
                + remaining * self.steady_s_per_step + self.export_s)


def phases(times: RunTimes, warmup_steps: int) -> Phases:
    """Split a finished run into phases. Raises ValueError when the run is too short to have a steady state."""
    if len(times.steps) < warmup_steps + 2:
        raise ValueError(f"{len(times.steps)} steps ran; the steady state needs more than warm-up "
                         f"({warmup_steps}) + 1: raise --steps or lower --warmup")
    missing = [name for name in ("train", "export") if name not in times.stages]
    if missing or times.finished is None:
        raise ValueError(f"the run did not report its {', '.join(missing) or 'end'}; it did not finish")
    class_start = times.stages.get("class_images")
    loaded = class_start if class_start is not None else times.stages["train"]
    class_end = times.last_class_image if times.last_class_image is not None else loaded
    train_start = times.stages["train"]
    # A step is reported once the next one is launched (training/late_read.py), so each stamp marks the later
    # of "this step's GPU work done" and "the next step launched": the interval between two stamps is a step
    # either way, except before the last stamp, which no launch follows (an eager, launch-bound step then
    # looks a few ms long). The steady window therefore ends one stamp early.
    steady = times.steps[warmup_steps - 1:-1] if warmup_steps else [train_start, *times.steps[:-1]]
    class_stamps = times.class_image_stamps if class_start is not None else []
    step_times = [b - a for a, b in zip(steady, steady[1:])]  # step i+warmup+1 took step_times[i]
    slowest = max(range(len(step_times)), key=step_times.__getitem__)
    holds_save = [any(a < stamp <= b for stamp in times.save_stamps) for a, b in zip(steady, steady[1:])]
    others = [i for i in range(len(step_times)) if not holds_save[i]]
    slowest_other = max(others, key=step_times.__getitem__) if others else None
    batch_times = [b - a for a, b in zip(class_stamps, class_stamps[1:])]
    return Phases(load_s=loaded - times.started, class_images_s=class_end - loaded,
                  prepare_s=train_start - class_end, warmup_steps=warmup_steps,
                  warmup_s=(times.steps[warmup_steps - 1] if warmup_steps else train_start) - train_start,
                  steady_s_per_step=(steady[-1] - steady[0]) / (len(steady) - 1),
                  export_s=times.finished - times.stages["export"],
                  validate_s=times.stages["load"] - times.started if "load" in times.stages else None,
                  export_samples_s=(times.last_samples - times.stages["export"]
                                    if times.last_samples is not None and times.last_samples > times.stages["export"]
                                    else None),
                  class_setup_s=class_stamps[0] - class_start if class_stamps else None,
                  class_first_batch_s=batch_times[0] if batch_times else None,
                  class_batch_s=sum(batch_times[1:]) / len(batch_times[1:]) if len(batch_times) > 1 else None,
                  class_batches=len(batch_times),
                  total_s=times.finished - times.started, median_step_s=statistics.median(step_times),
                  slowest_step_s=step_times[slowest], slowest_step=warmup_steps + slowest + 1,
                  save_pauses_s=tuple(step_times[i] for i in range(len(step_times)) if holds_save[i]),
                  slowest_other_step_s=step_times[slowest_other] if slowest_other is not None else None,
                  slowest_other_step=warmup_steps + slowest_other + 1 if slowest_other is not None else None)


class DeviceMemorySampler:
    """Peak GPU memory in use on the whole device (nvidia-smi ``memory.used``, context included), sampled
    every ``interval_ms`` from a background process while the ``with`` block runs."""

    def __init__(self, device_index: int = 0, interval_ms: int = 200):
        self.command = ["nvidia-smi", f"--id={device_index}", "--query-gpu=memory.used",
                        "--format=csv,noheader,nounits", f"-lms={interval_ms}"]
        self.peak_mib: int | None = None
        self.samples: list[tuple[float, int]] = []  # (epoch seconds, MiB used)
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("nvidia-smi") is not None

    def __enter__(self) -> "DeviceMemorySampler":
        if not self.available():
            return self
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            text = line.strip()
            if text.isdigit():
                self.samples.append((time.time(), int(text)))
                self.peak_mib = max(self.peak_mib or 0, int(text))

    def peak_mib_between(self, start: float, end: float) -> int | None:
        """Peak of the samples taken in [start, end] (epoch seconds), or None if none fell there."""
        inside = [mib for stamp, mib in self.samples if start <= stamp <= end]
        return max(inside) if inside else None

    def __exit__(self, *exc_info) -> None:
        if self._process is not None:
            time.sleep(0.3)  # one more sample after the run's last allocation
            self._process.terminate()
            self._process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)


def describe_card() -> dict[str, str]:
    """The GPU, driver and library versions, for the report."""
    import torch

    info = {"torch": torch.__version__}
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = "missing"
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info["gpu"] = properties.name
        info["gpu_memory_gib"] = f"{properties.total_memory / 2**30:.1f}"
        info["cuda"] = str(torch.version.cuda)
        if DeviceMemorySampler.available():
            result = subprocess.run(["nvidia-smi", "--id=0", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30)
            info["driver"] = result.stdout.strip()
    else:
        info["gpu"] = "none (CPU)"
    return info
