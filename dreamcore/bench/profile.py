"""Where a step's time goes: torch.profiler over a few steady steps of a bench run.

The summary answers the first question of any speed work: is the GPU busy (the sum of its kernel times is
close to the step's wall time: faster kernels or less work help), or idle (the host cannot launch work fast
enough: fewer launches help)? The top kernels say which work dominates.
"""

from __future__ import annotations

import time
from pathlib import Path


PROFILED_STEPS = 5


def profile_start_step(warmup_steps: int) -> int:
    """The step after which profiling starts: steps ``warmup - PROFILED_STEPS`` .. ``warmup - 1`` are profiled.

    Stopping the profiler and summarizing its events takes a second or two inside a progress callback. The
    steady window opens at the stamp of step ``warmup_steps`` (bench.measure.phases), so profiling must end at
    the step before it, or that second lands in the first steady interval.
    """
    return warmup_steps - PROFILED_STEPS - 1


class StepProfiler:
    """A training callback profiling steps ``first_step + 1 .. first_step + steps`` and writing a summary
    (at the progress event of step ``first_step + steps``)."""

    def __init__(self, out: Path, first_step: int, steps: int, label: str):
        self.out, self.first_step, self.steps, self.label = out, first_step, steps, label
        self.profiler = None
        self.started = 0.0

    def __call__(self, event) -> None:
        if event.kind != "progress":
            return
        import torch

        if event.step == self.first_step:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.start()
            self.started = time.perf_counter()
        elif event.step == self.first_step + self.steps and self.profiler is not None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = (time.perf_counter() - self.started) / self.steps
            self.profiler.stop()
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(summarize(self.profiler, self.steps, wall, self.label))
            self.profiler = None


def summarize(profiler, steps: int, wall_s_per_step: float, label: str) -> str:
    import torch

    averages = profiler.key_averages()
    # The kernels themselves (device events): an operator's own entry repeats its kernels' time.
    kernels = [e for e in averages if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    time_of, where = _self_device_us, "GPU kernels"
    if kernels and any(_self_device_us(e) for e in kernels):
        averages = kernels
    else:  # no GPU ran anything (a CPU run): rank the operators by CPU time
        time_of, where = (lambda e: float(e.self_cpu_time_total)), "CPU operations"
    total_us = sum(time_of(e) for e in averages)
    busy_ms = total_us / 1000 / steps
    lines = [f"{label}: {steps} steps profiled; wall {wall_s_per_step * 1000:.1f} ms a step (profiler on), "
             f"{where} {busy_ms:.1f} ms a step = {100 * busy_ms / (wall_s_per_step * 1000):.0f}% busy",
             "", f"top operations by {where.split()[0]} time (self, per step):"]
    for event in sorted(averages, key=time_of, reverse=True)[:25]:
        share = 100 * time_of(event) / total_us if total_us else 0.0
        lines.append(f"  {share:5.1f}%  {time_of(event) / 1000 / steps:8.2f} ms  {event.count / steps:8.1f}x  "
                     f"{event.key[:110]}")
    if where == "GPU kernels":
        # Several processes run NCCL's kernels beside the step's, so the kernel total above can exceed the wall.
        # (Per stream says nothing under a CUDA graph: its replay spreads the kernels over a hundred streams.)
        gpu = torch.autograd.DeviceType.CUDA
        timeline = [(int("nccl" in e.name.lower()), e.time_range.start, e.time_range.end)
                    for e in profiler.events() if getattr(e, "device_type", None) == gpu]
        busy = busy_time_by_key(timeline)  # 0: the step's kernels, 1: communication
        any_us = busy_time_by_key([(0, start, end) for _, start, end in timeline]).get(0, 0.0)
        step_ms, nccl_ms, any_ms = (value / 1000 / steps for value in (busy.get(0, 0.0), busy.get(1, 0.0), any_us))
        wall_ms = wall_s_per_step * 1000
        lines += ["", f"time with a kernel running (per step): any {any_ms:.1f} ms ({100 * any_ms / wall_ms:.0f}% of "
                  f"the wall); the step's {step_ms:.1f} ms; NCCL's {nccl_ms:.1f} ms, {any_ms - step_ms:.1f} ms of it "
                  f"with none of the step's running; nothing running {max(wall_ms - any_ms, 0.0):.1f} ms"]
    return "\n".join(lines) + "\n"


def busy_time_by_key(intervals: list[tuple[int, float, float]]) -> dict[int, float]:
    """For (key, start, end) kernel intervals: per key, the length of their union (overlapping kernels counted
    once)."""
    busy: dict[int, float] = {}
    by_key: dict[int, list[tuple[float, float]]] = {}
    for key, start, end in intervals:
        by_key.setdefault(key, []).append((start, end))
    for key, spans in by_key.items():
        total, reach = 0.0, float("-inf")
        for start, end in sorted(spans):
            if end > reach:
                total += end - max(start, reach)
                reach = end
        busy[key] = total
    return busy


def _self_device_us(event) -> float:
    value = getattr(event, "self_device_time_total", None)
    if value is None:
        value = getattr(event, "self_cuda_time_total", 0.0)
    return float(value or 0.0)
