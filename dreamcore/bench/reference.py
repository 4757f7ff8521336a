"""Timing another trainer beside the bench, on the same card: ``python -m dreamcore.bench.reference``.

diffusers' example scripts (``train_dreambooth_lora_sdxl.py``) show their optimizer steps as a tqdm bar,
``Steps:  50%|█████     | 30/60 [00:12<00:12, 2.41it/s, loss=0.1]``. This runs such a command, stamps each step
count the moment the bar first shows it, samples the device's memory with nvidia-smi, and reports the steady time
a step after the warm-up steps and the peak memory, as the bench does for dreamcore's own presets. The bar's own
rate is a moving average; the stamps give the mean over the steady steps.

    python -m dreamcore.bench.reference --warmup 15 --log ref.log --json ref.json -- python train.py ...
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

# the count of a tqdm bar whose description is "Steps" (other bars: loading weights, class images)
STEP_BAR = re.compile(r"^Steps:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)\b")


@dataclass
class ReferenceResult:
    label: str
    returncode: int
    steps: int  # the highest step count the bar showed
    warmup_steps: int
    steady_s_per_step: float | None  # None when the run showed too few steps
    total_s: float  # the command, start to exit
    peak_device_gib: float | None  # nvidia-smi memory.used peak over the whole command (None without nvidia-smi)
    train_peak_device_gib: float | None  # the same from the first step shown to the last

    def summary(self) -> str:
        steady = "no steady state" if self.steady_s_per_step is None else \
            f"steady {self.steady_s_per_step:.4f} s/step ({1 / self.steady_s_per_step:.2f} it/s) after " \
            f"{self.warmup_steps} warm-up steps"
        memory = "peak device memory not sampled (no nvidia-smi)" if self.peak_device_gib is None else \
            f"peak device {self.peak_device_gib:.2f} GiB (training {_gib(self.train_peak_device_gib)} GiB)"
        return (f"{self.label}: exit {self.returncode}, {self.steps} steps shown, {steady}; {memory}; "
                f"{self.total_s:.0f} s in all")


def step_stamps(pieces: Iterable[tuple[float, str]]) -> list[tuple[int, float]]:
    """(step count, stamp) for each count the "Steps" bar shows, at the first piece that shows it, in order.
    ``pieces``: (stamp, text) of each line or carriage-return-separated piece of the output."""
    stamps: list[tuple[int, float]] = []
    for stamp, text in pieces:
        match = STEP_BAR.match(text.strip())
        if match is None:
            continue
        count = int(match.group(1))
        if count > 0 and (not stamps or count > stamps[-1][0]):
            stamps.append((count, stamp))
    return stamps


def steady_seconds_per_step(stamps: Sequence[tuple[int, float]], warmup_steps: int) -> float:
    """The mean time of a step after ``warmup_steps``: from the first count at or past the warm-up to the last
    (a bar may skip counts; the steps between two stamps are counted, not the stamps). Raises ValueError when
    fewer than two counts were shown past the warm-up."""
    steady = [(count, stamp) for count, stamp in stamps if count >= warmup_steps]
    if len(steady) < 2 or steady[-1][0] == steady[0][0]:
        raise ValueError(f"the bar showed {len(steady)} step counts from step {warmup_steps} on; the steady state "
                         "needs two: run more steps or lower --warmup")
    (first_count, first_stamp), (last_count, last_stamp) = steady[0], steady[-1]
    return (last_stamp - first_stamp) / (last_count - first_count)


def _pieces(stream, log) -> Iterable[tuple[float, str]]:
    """Each line or carriage-return-separated piece of ``stream`` (bytes) as it arrives, stamped (epoch seconds),
    copied to ``log``."""
    pending = b""
    while True:
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            break
        log.write(chunk)
        log.flush()
        now = time.time()
        pending += chunk
        parts = re.split(rb"[\r\n]", pending)
        pending = parts.pop()  # not ended yet
        for part in parts:
            yield now, part.decode("utf-8", errors="replace")
    if pending:
        yield time.time(), pending.decode("utf-8", errors="replace")


def time_command(command: Sequence[str], warmup_steps: int, log_path: Path, label: str = "reference"
                 ) -> ReferenceResult:
    """Run ``command`` (its output, stdout and stderr together, copied to ``log_path``) and time its "Steps"
    bar; the device's memory is sampled meanwhile."""
    from dreamcore.bench.measure import DeviceMemorySampler

    started = time.time()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with DeviceMemorySampler() as sampler, log_path.open("wb") as log:
        process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        stamps = step_stamps(_pieces(process.stdout, log))
        returncode = process.wait()
    try:
        steady = steady_seconds_per_step(stamps, warmup_steps)
    except ValueError:
        steady = None
    train_peak = sampler.peak_mib_between(stamps[0][1], stamps[-1][1]) if stamps else None
    return ReferenceResult(label, returncode, stamps[-1][0] if stamps else 0, warmup_steps, steady,
                           time.time() - started, _gib_of(sampler.peak_mib), _gib_of(train_peak))


def _gib_of(mib: int | None) -> float | None:
    return None if mib is None else mib / 1024


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dreamcore.bench.reference",
                                     description="Time another trainer's steps (its tqdm 'Steps' bar) and sample "
                                                 "the GPU's memory, beside dreamcore bench on the same card.")
    parser.add_argument("--warmup", type=int, default=20, help="steps counted as warm-up (default 20)")
    parser.add_argument("--log", type=Path, required=True, help="the command's whole output goes here")
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    parser.add_argument("--label", default="reference", help="the result's name in the report")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to time, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to time after --")
    result = time_command(command, args.warmup, args.log, args.label)
    print(result.summary(), flush=True)
    if args.json is not None:
        from dreamcore.fileio import atomic_write_text

        atomic_write_text(args.json, json.dumps({"command": command, **asdict(result)}, indent=2) + "\n")
    if result.returncode != 0:
        print(f"{args.label}: the command failed; its output is in {args.log}", file=sys.stderr)
        return result.returncode
    return 0 if result.steady_s_per_step is not None else 1


if __name__ == "__main__":
    sys.exit(main())
