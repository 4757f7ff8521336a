"""Best-checkpoint pick and early stop on synthetic score series (no model, no face library needed)."""

from __future__ import annotations

import pytest

from dreamcore.likeness import CheckpointScore, select_best, should_stop_early, within_bounds


def series(likeness, drift=None, variety=None, face_rate=None, start=100):
    count = len(likeness)
    drift = drift or [0.25] * count
    variety = variety or [0.2] * count
    face_rate = face_rate or [1.0] * count
    return [CheckpointScore(step=start * (i + 1), likeness=l, face_rate=f, class_drift=d, variety=v, num_samples=4)
            for i, (l, d, v, f) in enumerate(zip(likeness, drift, variety, face_rate))]


def test_rising_then_falling_likeness_picks_the_peak():
    scores = series([0.30, 0.45, 0.62, 0.71, 0.66, 0.52])
    assert select_best(scores, drift_bound=0.5, variety_bound=0.05) == 3


def test_drift_crossing_its_bound_rules_out_the_later_checkpoints():
    # Likeness keeps rising, but from step 400 the class prompt draws the user (drift over 0.5).
    scores = series([0.30, 0.45, 0.60, 0.70, 0.78], drift=[0.22, 0.28, 0.41, 0.55, 0.64])
    assert select_best(scores, drift_bound=0.5, variety_bound=0.05) == 2
    # A looser bound admits them: the bound, not the position, decides.
    assert select_best(scores, drift_bound=0.6, variety_bound=0.05) == 3
    assert not within_bounds(scores[3], drift_bound=0.5, variety_bound=0.05)


def test_collapsed_variety_rules_a_checkpoint_out():
    scores = series([0.40, 0.65, 0.80], variety=[0.20, 0.12, 0.02])
    assert select_best(scores, drift_bound=0.5, variety_bound=0.05) == 1


def test_no_pick_when_nothing_is_within_bounds_or_no_face_was_drawn():
    assert select_best([], 0.5, 0.05) is None
    assert select_best(series([0.6, 0.7], drift=[0.7, 0.8]), 0.5, 0.05) is None
    assert select_best(series([0.0, 0.0], face_rate=[0.0, 0.0]), 0.5, 0.05) is None


def test_unmeasured_drift_and_variety_do_not_block_and_ties_go_to_fewer_steps():
    scores = [CheckpointScore(step=s, likeness=0.6, face_rate=1.0, class_drift=None, variety=None, num_samples=1)
              for s in (100, 200)]
    assert select_best(scores, 0.5, 0.05) == 0


def test_early_stop_when_likeness_stops_rising():
    rising = series([0.3, 0.4, 0.5, 0.6])
    assert not should_stop_early(rising, patience=2)
    plateau = series([0.3, 0.5, 0.62, 0.61, 0.60])
    assert should_stop_early(plateau, patience=2)
    assert not should_stop_early(plateau, patience=3)  # the rise to 0.62 is within the last 3
    assert not should_stop_early(plateau[:2], patience=2)  # too few scores to judge
    # A rise smaller than min_improvement does not count as a rise.
    creeping = series([0.5, 0.6, 0.601, 0.602])
    assert not should_stop_early(creeping, patience=2)
    assert should_stop_early(creeping, patience=2, min_improvement=0.01)


def test_early_stop_refuses_a_patience_below_one():
    with pytest.raises(ValueError, match="likeness_early_stop"):
        should_stop_early(series([0.1, 0.2]), patience=0)
