"""The table, the plot and the JSON run report of checkpoint scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dreamcore.likeness import (CheckpointScore, LikenessError, PromptScore, format_table, load_report, plot_scores,
                                run_report, save_report, scores_from_json, scores_from_report, scores_to_json)
from dreamcore.likeness.report import SERIES_COLOURS


def make_scores():
    prompt = PromptScore(num_samples=4, faces_found=3, likeness=0.5, variety=0.2)
    return [
        CheckpointScore(500, 0.42, 0.75, 0.21, 0.19, 4, 4, "model-step-000500", {"photo of sks person": prompt}),
        CheckpointScore(1000, 0.66, 1.0, 0.30, 0.15, 4, 4, "model-step-001000"),
        CheckpointScore(1500, 0.74, 1.0, 0.58, 0.09, 4, 4, "model-step-001500"),
        CheckpointScore(2000, 0.70, 0.5, None, None, 4, 0, "model-step-002000"),
    ]


def test_table_has_a_row_per_checkpoint_and_marks_the_best():
    table = format_table(make_scores(), drift_bound=0.5, variety_bound=0.05)
    rows = [line for line in table.splitlines() if line.startswith("model-step")]
    assert len(rows) == 4
    # Step 1500 has the highest likeness but drifted over the bound; step 2000 (drift unmeasured) wins.
    assert rows[3].endswith("<- best") and "2000" in rows[3]
    assert "class drift over bound" in rows[2]
    assert "3/4" in rows[0] and "0.420" in rows[0] and "n/a" in rows[3]
    assert "<- best" not in "".join(rows[:3])


def test_plot_is_a_png_with_the_three_series(tmp_path):
    path = plot_scores(make_scores(), tmp_path / "plots" / "likeness.png", drift_bound=0.5, variety_bound=0.05)
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    for colour in SERIES_COLOURS.values():
        assert (pixels == colour).all(axis=1).sum() > 50, f"series colour {colour} not drawn"
    assert not list(tmp_path.glob("plots/.tmp-*"))


def test_plot_of_a_single_checkpoint_and_of_nothing(tmp_path):
    assert plot_scores(make_scores()[:1], tmp_path / "one.png").is_file()
    with pytest.raises(LikenessError, match="no checkpoint scores"):
        plot_scores([], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_scores_round_trip_through_json(tmp_path):
    scores = make_scores()
    assert scores_from_json(json.loads(json.dumps(scores_to_json(scores)))) == scores
    report = run_report(scores, drift_bound=0.5, variety_bound=0.05)
    assert report["best_index"] == 3 and report["best_step"] == 2000
    assert scores_from_report(json.loads(json.dumps(report))) == scores
    path = save_report(tmp_path / "scores.json", scores)
    assert load_report(path) == scores


def test_malformed_json_names_the_file_and_the_problem(tmp_path):
    broken = tmp_path / "scores.json"
    broken.write_text("{not json")
    with pytest.raises(LikenessError, match="scores.json is not valid JSON"):
        load_report(broken)
    with pytest.raises(LikenessError, match="lacks likeness"):
        scores_from_json([{"step": 1, "face_rate": 1, "class_drift": None, "variety": None, "num_samples": 1}])
    with pytest.raises(LikenessError, match="expected a list"):
        scores_from_json({"step": 1})
    with pytest.raises(LikenessError, match="wrong type"):
        scores_from_json([{"step": 1, "likeness": "high", "face_rate": 1, "class_drift": None, "variety": None,
                           "num_samples": 1}])
