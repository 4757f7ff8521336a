"""Pick the best checkpoint from its scores, and tell when training has stopped improving likeness.

The best checkpoint is the one whose samples look most like the user, among those that have not paid for
it by turning the class prompt into the user (class drift above its bound) or by collapsing every seed
onto one picture (variety below its bound). These functions read scores only; they need no model and no
face library, so they are tested on made-up score series.
"""

from __future__ import annotations

from typing import Sequence

from dreamcore.likeness.faces import SAME_PERSON_SIMILARITY
from dreamcore.likeness.scores import CheckpointScore

# Unrelated people lie 0.7-1.0 apart in dlib's space (similarity 0.17-0.42; the two unrelated women of the
# tests, both frontal, 0.40-0.47). A class-prompt mean at dlib's same-person line (0.5) means the class
# prompt draws the user on average: prior preservation has failed.
DEFAULT_DRIFT_BOUND = SAME_PERSON_SIMILARITY
# Mean pixel difference (image_variety) measured on real photos: two different portraits 0.27-0.34, a
# photo and its mirror image 0.20, a 3-degree rotation 0.10, a 1% shift 0.03, a slight blur 0.01. Below
# 0.05 the seeds give near-copies of one picture: the collapse that overfitting causes.
DEFAULT_VARIETY_BOUND = 0.05


def within_bounds(score: CheckpointScore, drift_bound: float = DEFAULT_DRIFT_BOUND,
                  variety_bound: float = DEFAULT_VARIETY_BOUND) -> bool:
    """Drift at most ``drift_bound`` and variety at least ``variety_bound``; an unmeasured value passes."""
    drift_ok = score.class_drift is None or score.class_drift <= drift_bound
    variety_ok = score.variety is None or score.variety >= variety_bound
    return drift_ok and variety_ok


def select_best(scores: Sequence[CheckpointScore], drift_bound: float = DEFAULT_DRIFT_BOUND,
                variety_bound: float = DEFAULT_VARIETY_BOUND) -> int | None:
    """Index of the checkpoint with the highest likeness within both bounds.

    None when no checkpoint is within bounds or none drew a face at all. On a tie the earlier
    checkpoint wins: fewer steps, less risk of the overtraining the score does not see.
    """
    best_index: int | None = None
    for index, score in enumerate(scores):
        if score.face_rate <= 0 or not within_bounds(score, drift_bound, variety_bound):
            continue
        if best_index is None or score.likeness > scores[best_index].likeness:
            best_index = index
    return best_index


def should_stop_early(scores: Sequence[CheckpointScore], patience: int, min_improvement: float = 0.0) -> bool:
    """True when the last ``patience`` scores did not raise likeness above the best before them.

    ``min_improvement`` is how much higher a score must be to count as a rise (0 = any rise).
    """
    if patience < 1:
        raise ValueError(f"likeness_early_stop (patience): must be at least 1 (got {patience}); use 0 in the "
                         "training settings to turn early stopping off")
    if len(scores) <= patience:
        return False
    best_before = max(score.likeness for score in scores[:-patience])
    return all(score.likeness <= best_before + min_improvement for score in scores[-patience:])
