"""One preset's measured result, and the table the bench prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dreamcore.bench.measure import Phases


@dataclass
class PresetResult:
    label: str
    status: str  # "ok", "NaN" (the loss became NaN/inf) or "error: ..."
    steps: int = 0
    phases: Phases | None = None
    peak_allocated_gib: float | None = None  # torch.cuda.max_memory_allocated() over the whole run
    peak_device_gib: float | None = None  # nvidia-smi memory.used peak, sampled every 200 ms
    train_peak_allocated_gib: float | None = None  # the same two, during the training steps only
    train_peak_device_gib: float | None = None
    train_window: tuple[float, float] | None = None  # epoch seconds of the training steps
    first_losses: tuple[float, ...] = ()
    last_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["first_losses"] = list(self.first_losses)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PresetResult":
        values = dict(values)
        if values.get("phases") is not None:
            values["phases"] = Phases(**{**values["phases"],
                                         "save_pauses_s": tuple(values["phases"].get("save_pauses_s") or ())})
        values["first_losses"] = tuple(values.get("first_losses") or ())
        if values.get("train_window") is not None:
            values["train_window"] = tuple(values["train_window"])
        return cls(**values)


COLUMNS = ("preset", "s/step", "it/s", "warm-up s", "train alloc GiB", "train device GiB", "run alloc GiB",
           "run device GiB", "2000 steps s", "status")


def table_rows(results: list[PresetResult], guide_steps: int) -> list[tuple[str, ...]]:
    rows = []
    for result in results:
        p = result.phases
        rows.append((result.label,
                     f"{p.steady_s_per_step:.4f}" if p else "-",
                     f"{p.steady_it_per_s:.2f}" if p else "-",
                     f"{p.warmup_s:.1f} ({p.warmup_steps})" if p else "-",
                     _gib(result.train_peak_allocated_gib), _gib(result.train_peak_device_gib),
                     _gib(result.peak_allocated_gib), _gib(result.peak_device_gib),
                     f"{p.projected_total_s(guide_steps):.0f}" if p else "-",
                     result.status))
    return rows


def format_table(results: list[PresetResult], guide_steps: int) -> str:
    """A Markdown table (readable in a terminal, pasteable into BENCHMARKS.md)."""
    rows = [COLUMNS, *table_rows(results, guide_steps)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def format_parts(results: list[PresetResult], guide_steps: int) -> str:
    """How each 2,000-step total is made up (the parts are measured; the steps are projected)."""
    lines = [f"{guide_steps}-step total = load + class images + prepare + warm-up + "
             f"(steps - warm-up) x steady s/step + export:"]
    for result in results:
        p = result.phases
        if p is None:
            continue
        lines.append(f"  {result.label}: {p.load_s:.1f} + {p.class_images_s:.1f} + {p.prepare_s:.1f} + "
                     f"{p.warmup_s:.1f} + {guide_steps - p.warmup_steps} x {p.steady_s_per_step:.4f} + "
                     f"{p.export_s:.1f} = {p.projected_total_s(guide_steps):.0f} s")
        if p.total_s is not None and p.median_step_s and p.slowest_step_s is not None:
            lines.append(f"    (measured: {result.steps} steps in {p.total_s:.1f} s end to end; median step "
                         f"{p.median_step_s * 1000:.1f} ms, slowest {p.slowest_step_s * 1000:.1f} ms at step "
                         f"{p.slowest_step}, {p.slowest_step_s / p.median_step_s:.1f}x the median)")
            if p.save_pauses_s and p.slowest_other_step_s is not None:
                lines.append(f"    (saves: the steps holding them took "
                             f"{', '.join(f'{pause:.2f}' for pause in p.save_pauses_s)} s; of the other steps the "
                             f"slowest {p.slowest_other_step_s * 1000:.1f} ms at step {p.slowest_other_step}, "
                             f"{p.slowest_other_step_s / p.median_step_s:.1f}x the median)")
        if p.validate_s is not None and p.export_samples_s is not None:
            lines.append(f"    (load: {p.validate_s:.1f} s to the model load, {p.load_s - p.validate_s:.1f} s loading; "
                         f"export: {p.export_samples_s:.1f} s samples, {p.export_s - p.export_samples_s:.1f} s files)")
        if p.class_setup_s is not None and p.class_first_batch_s is not None:
            later = (f", then {p.class_batches - 1} more at {p.class_batch_s:.2f} s each"
                     if p.class_batch_s is not None else "")
            lines.append(f"    (class images: {p.class_setup_s:.1f} s to the first batch, first batch "
                         f"{p.class_first_batch_s:.2f} s{later})")
    return "\n".join(lines)


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
