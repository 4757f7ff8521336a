"""evaluate_pipeline end to end on a tiny model (CPU), and its wiring with a pipeline that draws real faces."""

from __future__ import annotations

import json
import numpy as np
import pytest
from PIL import Image

from dreamcore.likeness import (LikenessError, embed_photos, evaluate_pipeline, expand_prompts, format_table,
                                plot_scores, select_best)
from dreamcore.likeness.evaluate import MANIFEST_NAME, read_manifest


def tiny_pipeline(seed: int):
    from diffusers import StableDiffusionPipeline

    from dreamcore.tiny import build_tiny_model

    model = build_tiny_model("sd1", seed=seed)
    return StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=model.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def test_tiny_model_runs_end_to_end_and_writes_table_and_plot(tmp_path, photo_folder):
    photos = sorted(photo_folder.iterdir())
    reference = embed_photos(photos)
    options = dict(num_samples=2, num_inference_steps=2, guidance_scale=5.0, prompt_variations=("{}, smiling",),
                   reference=reference)
    pipelines = {100: tiny_pipeline(0), 200: tiny_pipeline(1)}
    scores = []
    for step, pipeline in pipelines.items():
        scores.append(evaluate_pipeline(pipeline, photos, "photo of sks person",
                                        "photo of a person", step, out_dir=tmp_path / f"step-{step}",
                                        label=f"step-{step}", **options))

    for step, score in zip((100, 200), scores):
        assert score.step == step and score.num_samples == 4 and score.num_class_samples == 2
        assert set(score.prompts) == {"photo of sks person", "photo of sks person, smiling"}
        # A tiny random model draws 64px noise: no face, so no likeness, but variety is measured.
        assert score.face_rate == 0 and score.likeness == 0
        assert score.variety is not None and score.variety > 0
        instance, class_paths, manifest_step = read_manifest(tmp_path / f"step-{step}")
        assert manifest_step == step and len(class_paths) == 2
        assert [len(paths) for paths in instance.values()] == [2, 2]
        for path in [*class_paths, *instance["photo of sks person"]]:
            with Image.open(path) as image:
                assert image.size == (64, 64)

    table = format_table(scores)
    assert "step-100" in table and "step-200" in table and "0/4" in table
    assert select_best(scores) is None  # no faces, no pick
    plot = plot_scores(scores, tmp_path / "likeness.png")
    assert plot.is_file() and plot.stat().st_size > 1000

    # Fixed seeds: the same weights give the same samples and the same score.
    again = evaluate_pipeline(pipelines[100], photos, "photo of sks person", "photo of a person", 100,
                              out_dir=tmp_path / "again", **options)
    assert again.variety == scores[0].variety
    first = json.loads((tmp_path / "step-100" / MANIFEST_NAME).read_text())["instance"]["photo of sks person"][0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "step-100" / first)),
                          np.asarray(Image.open(tmp_path / "again" / first)))


def test_pipeline_wiring_with_real_faces(tmp_path, photo_folder, astronaut, grace_hopper, second_view,
                                        FacePipeline):
    pipeline = FacePipeline(second_view(astronaut), grace_hopper)
    score = evaluate_pipeline(pipeline, sorted(photo_folder.iterdir()), "photo of sks person", "photo of a person",
                              step=500, seed=42, num_samples=3, num_inference_steps=7, guidance_scale=6.0,
                              prompt_variations=("{}, smiling", "{}, outdoors"), negative_prompt="blurry")
    assert [call["prompt"] for call in pipeline.calls] == [
        "photo of sks person", "photo of sks person, smiling", "photo of sks person, outdoors", "photo of a person"]
    for call in pipeline.calls:
        assert call["seeds"] == [42, 43, 44] and call["count"] == 3
        assert call["num_inference_steps"] == 7 and call["guidance_scale"] == 6.0
        assert call["negative_prompt"] == "blurry"
    assert score.face_rate == 1.0 and score.likeness > 0.5
    assert score.class_drift < 0.5
    assert select_best([score]) == 0


def test_no_class_prompt_means_no_drift_and_prompts_are_checked(photo_folder, astronaut, grace_hopper,
                                                                 FacePipeline):
    pipeline = FacePipeline(astronaut, grace_hopper)
    score = evaluate_pipeline(pipeline, sorted(photo_folder.iterdir()), "photo of sks person", "", step=1,
                              num_samples=1, prompt_variations=())
    assert score.class_drift is None and len(pipeline.calls) == 1
    with pytest.raises(LikenessError, match="no '{}'"):
        expand_prompts("photo of sks person", ("smiling",))
    with pytest.raises(LikenessError, match="instance_prompt is empty"):
        expand_prompts("  ", ())
    with pytest.raises(LikenessError, match="num_samples"):
        evaluate_pipeline(pipeline, [], "photo of sks person", "", step=1, num_samples=0)
