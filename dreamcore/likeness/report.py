"""Show checkpoint scores: a text table, a PNG plot over steps, and the JSON run report.

The plot is drawn with Pillow alone (already a dependency) so the report needs no plotting library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

from dreamcore.fileio import atomic_path, atomic_write_text
from dreamcore.likeness.scores import CheckpointScore, LikenessError, scores_from_json, scores_to_json
from dreamcore.likeness.selection import DEFAULT_DRIFT_BOUND, DEFAULT_VARIETY_BOUND, select_best, within_bounds

BEST_MARK = "<- best"
SERIES_COLOURS = {"likeness": (31, 119, 180), "class drift": (214, 39, 40), "variety": (44, 160, 44)}
REPORT_VERSION = 1


def format_table(scores: Sequence[CheckpointScore], best_index: int | None = None,
                 drift_bound: float = DEFAULT_DRIFT_BOUND, variety_bound: float = DEFAULT_VARIETY_BOUND) -> str:
    """One row per checkpoint; the best (``select_best`` unless given) is marked, out-of-bounds ones flagged."""
    if best_index is None:
        best_index = select_best(scores, drift_bound, variety_bound)
    header = f"{'checkpoint':<24} {'step':>6} {'likeness':>8} {'faces':>7} {'class drift':>11} {'variety':>7}"
    lines = [header, "-" * len(header)]
    for index, score in enumerate(scores):
        faces_found = round(score.face_rate * score.num_samples)
        note = BEST_MARK if index == best_index else ("" if within_bounds(score, drift_bound, variety_bound)
                                                       else _bound_note(score, drift_bound, variety_bound))
        lines.append(f"{_shorten(score.label or '-', 24):<24} {_text(score.step):>6} {score.likeness:>8.3f} "
                     f"{f'{faces_found}/{score.num_samples}':>7} {_number(score.class_drift):>11} "
                     f"{_number(score.variety):>7}  {note}".rstrip())
    lines.append(f"likeness and class drift: 0..1, 0.5 = same person (dlib); bounds: class drift <= "
                 f"{drift_bound:g}, variety >= {variety_bound:g}")
    if best_index is None and scores:
        lines.append("no checkpoint drew a recognisable face within the bounds; look at the samples yourself")
    return "\n".join(lines)


def plot_scores(scores: Sequence[CheckpointScore], path: str | Path, best_index: int | None = None,
                drift_bound: float = DEFAULT_DRIFT_BOUND, variety_bound: float = DEFAULT_VARIETY_BOUND,
                size: tuple[int, int] = (720, 420)) -> Path:
    """Draw likeness, class drift and variety over steps (0..1 axis) as a PNG; the best step is marked."""
    if not scores:
        raise LikenessError(f"nothing to plot into {path}: no checkpoint scores")
    if best_index is None:
        best_index = select_best(scores, drift_bound, variety_bound)
    width, height = size
    left, right, top, bottom = 56, width - 150, 24, height - 44
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    steps = [score.step if score.step is not None else index for index, score in enumerate(scores)]
    low, high = min(steps), max(steps)

    def x_of(step: float) -> float:  # 20 pixels inside the frame so end points stay visible
        return left + 20 + (right - left - 40) * ((step - low) / (high - low) if high > low else 0.5)

    def y_of(value: float) -> float:
        return bottom - (bottom - top) * min(max(value, 0.0), 1.0)

    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        draw.line([(left, y_of(tick)), (right, y_of(tick))], fill=(225, 225, 225))
        draw.text((left - 8, y_of(tick)), f"{tick:.2f}", fill="black", font=font, anchor="rm")
    for step in sorted(set(steps)):
        draw.text((x_of(step), bottom + 8), str(step), fill="black", font=font, anchor="mt")
    draw.text(((left + right) / 2, height - 8), "step", fill="black", font=font, anchor="ms")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.line([(left, y_of(drift_bound)), (right, y_of(drift_bound))], fill=SERIES_COLOURS["class drift"], width=1)
    draw.text((right - 4, y_of(drift_bound) - 3), "drift bound", fill=SERIES_COLOURS["class drift"], font=font,
              anchor="rs")
    if best_index is not None:
        best_x, best_y = x_of(steps[best_index]), y_of(scores[best_index].likeness)
        draw.line([(best_x, top), (best_x, bottom)], fill=(150, 150, 150), width=1)
        draw.ellipse([best_x - 9, best_y - 9, best_x + 9, best_y + 9], outline="black", width=2)
        draw.text((best_x, top - 4), "best", fill="black", font=font, anchor="ms")

    series = {"likeness": [score.likeness for score in scores],
              "class drift": [score.class_drift for score in scores],
              "variety": [score.variety for score in scores]}
    for row, (name, values) in enumerate(series.items()):
        colour = SERIES_COLOURS[name]
        points = [(x_of(step), y_of(value)) for step, value in zip(steps, values) if value is not None]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        legend_y = top + 10 + row * 20
        draw.line([(right + 14, legend_y), (right + 38, legend_y)], fill=colour, width=3)
        label = name if any(value is not None for value in values) else f"{name} (n/a)"
        draw.text((right + 44, legend_y), label, fill="black", font=font, anchor="lm")

    path = Path(path)
    with atomic_path(path) as temp:
        image.save(temp, format="PNG")
    return path


def run_report(scores: Sequence[CheckpointScore], drift_bound: float = DEFAULT_DRIFT_BOUND,
               variety_bound: float = DEFAULT_VARIETY_BOUND) -> dict[str, Any]:
    """The likeness section of train_config.json's run report: every checkpoint, the bounds, the best."""
    best_index = select_best(scores, drift_bound, variety_bound)
    return {"version": REPORT_VERSION, "drift_bound": drift_bound, "variety_bound": variety_bound,
            "best_index": best_index,
            "best_step": scores[best_index].step if best_index is not None else None,
            "checkpoints": scores_to_json(scores)}


def scores_from_report(report: Any, source: str = "likeness report") -> list[CheckpointScore]:
    """Read the checkpoint scores back from :func:`run_report`'s dict. Raises LikenessError if malformed."""
    if not isinstance(report, dict) or "checkpoints" not in report:
        raise LikenessError(f"{source}: expected an object with 'checkpoints' (written by dreamcore score)")
    return scores_from_json(report["checkpoints"], source)


def save_report(path: str | Path, scores: Sequence[CheckpointScore], drift_bound: float = DEFAULT_DRIFT_BOUND,
                variety_bound: float = DEFAULT_VARIETY_BOUND) -> Path:
    return atomic_write_text(path, json.dumps(run_report(scores, drift_bound, variety_bound), indent=2) + "\n")


def load_report(path: str | Path) -> list[CheckpointScore]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise LikenessError(f"cannot read likeness scores {path} ({error.strerror})") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LikenessError(f"{path} is not valid JSON ({error}); write it again with 'dreamcore score'") from error
    return scores_from_report(data, str(path))


def _bound_note(score: CheckpointScore, drift_bound: float, variety_bound: float) -> str:
    notes = []
    if score.class_drift is not None and score.class_drift > drift_bound:
        notes.append("class drift over bound")
    if score.variety is not None and score.variety < variety_bound:
        notes.append("variety under bound")
    return "; ".join(notes)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]
