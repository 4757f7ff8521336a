"""LikenessTracker: the per-save scoring the training loop drives, with pipelines that draw real faces."""

from __future__ import annotations

import json

from dreamcore.config import TrainConfig
from dreamcore.likeness import LikenessTracker


def test_tracks_checkpoints_marks_the_best_and_stops_when_likeness_stops_rising(
        tmp_path, photo_folder, astronaut, grace_hopper, second_view, FacePipeline):
    tracker = LikenessTracker(photo_paths=sorted(photo_folder.iterdir()), instance_prompt="photo of sks person",
                              class_prompt="photo of a person", out_dir=tmp_path / "likeness", num_samples=2,
                              num_inference_steps=2, prompt_variations=(), patience=1)
    user, stranger = second_view(astronaut), grace_hopper
    # Step 100 draws a stranger, step 200 the user, step 300 the user for the class prompt too (drift).
    for step, pipeline in ((100, FacePipeline(stranger, stranger)), (200, FacePipeline(user, stranger)),
                           (300, FacePipeline(user, user))):
        tracker.evaluate(pipeline, step)
        if step == 200:
            assert tracker.best_index == 1 and not tracker.should_stop()

    assert [score.step for score in tracker.scores] == [100, 200, 300]
    assert tracker.scores[0].likeness < 0.5 < tracker.scores[1].likeness
    assert tracker.scores[2].class_drift > tracker.drift_bound
    assert tracker.best.step == 200
    assert tracker.should_stop()  # step 300 did not beat step 200's likeness
    report = json.loads((tmp_path / "likeness" / "scores.json").read_text())
    assert report == json.loads(json.dumps(tracker.report()))
    assert report["best_step"] == 200
    assert "<- best" in (tmp_path / "likeness" / "table.txt").read_text()
    assert (tmp_path / "likeness" / "likeness.png").is_file()
    assert (tmp_path / "likeness" / "samples" / "step-000300" / "samples.json").is_file()


def test_settings_come_from_the_training_config(tmp_path, photo_folder):
    config = TrainConfig(pretrained_model_name_or_path="m", instance_data_dir=str(photo_folder),
                         instance_prompt="photo of sks person", class_prompt="photo of a person",
                         output_dir=str(tmp_path / "run"), seed=7, n_save_sample=3, save_infer_steps=12,
                         save_guidance_scale=6.5, resolution=256, score_likeness=True, likeness_early_stop=2)
    tracker = LikenessTracker.from_config(config, sorted(photo_folder.iterdir()))
    assert (tracker.instance_prompt, tracker.class_prompt) == ("photo of sks person", "photo of a person")
    assert (tracker.seed, tracker.num_samples, tracker.num_inference_steps) == (7, 3, 12)
    assert (tracker.guidance_scale, tracker.resolution, tracker.patience) == (6.5, 256, 2)
    assert tracker.out_dir == tmp_path / "run" / "likeness"
    assert not tracker.should_stop()
