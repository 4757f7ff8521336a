"""HTML the tab shows: the progress bar and the loss plot (SVG, so no gradio plot component is needed:
gr.LinePlot differs between the gradio versions the WebUIs ship)."""

from __future__ import annotations

import html
import math

from dreamcore.console import format_duration


def progress_html(name: str, status: str, step: int, total_steps: int, steps_per_second: float,
                  eta_seconds: float | None, loss: float | None, stage: str = "") -> str:
    fraction = min(1.0, step / total_steps) if total_steps else 0.0
    loss_text = "-" if loss is None else f"{loss:.4f}"
    speed = f"{steps_per_second:.2f} it/s" if steps_per_second else "- it/s"
    detail = (f"{html.escape(name)}: {html.escape(status)}{' (' + html.escape(stage) + ')' if stage else ''}"
              f" &middot; step {step}/{total_steps or '?'} &middot; {speed} &middot; ETA "
              f"{format_duration(eta_seconds)} &middot; loss {loss_text}")
    return (f'<div class="dreamcore-progress" data-step="{step}" data-total="{total_steps}">'
            f'<div style="background:#8884;border-radius:4px;height:14px;overflow:hidden">'
            f'<div style="background:#4a8;height:100%;width:{fraction * 100:.1f}%"></div></div>'
            f'<div>{detail}</div></div>')


def loss_plot_svg(losses: list[tuple[int, float]], width: int = 480, height: int = 180) -> str:
    """A line of loss over step, with the axis ranges written out; empty text before the first step."""
    points = [(int(step), float(loss)) for step, loss in losses if math.isfinite(float(loss))]
    if not points:
        return '<div class="dreamcore-loss">No loss yet.</div>'
    margin = 36
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    low, high = min(values), max(values)
    span_y = (high - low) or 1.0
    first, last = min(steps), max(steps)
    span_x = (last - first) or 1

    def x(step: int) -> float:
        return margin + (step - first) / span_x * (width - 2 * margin)

    def y(value: float) -> float:
        return height - margin + (low - value) / span_y * (height - 2 * margin)

    line = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
    return (f'<svg class="dreamcore-loss" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" data-points="{len(points)}">'
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="none" stroke="#8886"/>'
            f'<polyline fill="none" stroke="#e63" stroke-width="1.5" points="{line}"/>'
            f'<text x="4" y="{margin - 8}" font-size="11" fill="currentColor">loss {high:.4g}</text>'
            f'<text x="4" y="{height - 6}" font-size="11" fill="currentColor">{low:.4g} &middot; step {first}'
            f'</text><text x="{width - margin}" y="{height - 6}" font-size="11" text-anchor="end" '
            f'fill="currentColor">step {last}</text></svg>')
