"""Likeness over a training run: score each saved checkpoint, keep the report, say which is best.

The training loop calls :meth:`LikenessTracker.evaluate` at every save with the pipeline it samples
with; the tracker embeds the training photos once, scores the checkpoint, and rewrites
``<output_dir>/likeness/`` (table, plot, scores.json) so the run's state is on disk after every save.
It reads a TrainConfig and never changes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dreamcore.fileio import atomic_write_text
from dreamcore.likeness.evaluate import DEFAULT_PROMPT_VARIATIONS, evaluate_pipeline
from dreamcore.likeness.report import format_table, plot_scores, run_report, save_report
from dreamcore.likeness.scores import CheckpointScore, PhotoReference, embed_photos
from dreamcore.likeness.selection import DEFAULT_DRIFT_BOUND, DEFAULT_VARIETY_BOUND, select_best, should_stop_early

LIKENESS_FOLDER = "likeness"


@dataclass
class LikenessTracker:
    """Scores of one run's checkpoints so far, and the settings every checkpoint is scored with."""

    photo_paths: Sequence[Path]
    instance_prompt: str
    class_prompt: str
    out_dir: Path
    seed: int = 1337
    num_samples: int = 4
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    resolution: int | None = None
    prompt_variations: Sequence[str] = DEFAULT_PROMPT_VARIATIONS
    drift_bound: float = DEFAULT_DRIFT_BOUND
    variety_bound: float = DEFAULT_VARIETY_BOUND
    patience: int = 0  # likeness_early_stop: 0 = never stop early
    scores: list[CheckpointScore] = field(default_factory=list)
    _reference: PhotoReference | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: Any, photo_paths: Sequence[Path]) -> "LikenessTracker":
        """Settings from a TrainConfig: the first concept's prompts, the sample settings, likeness_early_stop."""
        concept = config.concepts()[0]
        return cls(photo_paths=list(photo_paths), instance_prompt=concept.instance_prompt,
                   class_prompt=concept.class_prompt, out_dir=Path(config.output_dir) / LIKENESS_FOLDER,
                   seed=config.seed, num_samples=config.n_save_sample, num_inference_steps=config.save_infer_steps,
                   guidance_scale=config.save_guidance_scale, negative_prompt=config.save_sample_negative_prompt,
                   resolution=config.resolution, patience=config.likeness_early_stop)

    @property
    def reference(self) -> PhotoReference:
        """The training photos' faces, embedded on first use (raises LikenessError if none has a face)."""
        if self._reference is None:
            self._reference = embed_photos(self.photo_paths)
        return self._reference

    def evaluate(self, pipeline: Any, step: int, label: str = "") -> CheckpointScore:
        """Score the checkpoint ``pipeline`` samples from, add it to the run and rewrite the report files."""
        score = evaluate_pipeline(
            pipeline, self.photo_paths, self.instance_prompt, self.class_prompt, step, seed=self.seed,
            num_samples=self.num_samples, num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale, prompt_variations=self.prompt_variations,
            out_dir=self.out_dir / "samples" / f"step-{step:06d}", negative_prompt=self.negative_prompt,
            label=label or f"step-{step:06d}", reference=self.reference, height=self.resolution,
            width=self.resolution)
        self.scores.append(score)
        self.write_report()
        return score

    @property
    def best_index(self) -> int | None:
        return select_best(self.scores, self.drift_bound, self.variety_bound)

    @property
    def best(self) -> CheckpointScore | None:
        index = self.best_index
        return None if index is None else self.scores[index]

    def should_stop(self) -> bool:
        """True when early stopping is on and likeness has not risen for ``patience`` saves."""
        return self.patience > 0 and should_stop_early(self.scores, self.patience)

    def table(self) -> str:
        return format_table(self.scores, self.best_index, self.drift_bound, self.variety_bound)

    def report(self) -> dict[str, Any]:
        """The likeness section for train_config.json's run report."""
        return run_report(self.scores, self.drift_bound, self.variety_bound)

    def write_report(self) -> None:
        """``likeness/scores.json``, ``likeness/likeness.png`` and ``likeness/table.txt`` for the run so far."""
        save_report(self.out_dir / "scores.json", self.scores, self.drift_bound, self.variety_bound)
        plot_scores(self.scores, self.out_dir / "likeness.png", self.best_index, self.drift_bound, self.variety_bound)
        atomic_write_text(self.out_dir / "table.txt", self.table() + "\n")
