"""The standalone app's Generate panel: a job's model drawn through the panel's handler, as its button does."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from form_loader import glue  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from tiny_runs import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def app_with_job(tmp_path_factory: pytest.TempPathFactory):
    """The app over a folder holding one completed job (trained in this process)."""
    from dreamcore import train
    from dreamcore.commands.demo import make_demo_photos
    from dreamcore.jobs.folder import JobFolder, JobRecord
    from dreamcore.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("app")
    model = save_tiny_model(root / "tiny", fmt="diffusers")
    make_demo_photos(root / "photos", count=3, size=64)
    folder = JobFolder(root / "out" / "jobs" / "anna")
    config = tiny_config(model, root / "photos", folder.output, save_interval=3, model_name="anna",
                         instance_prompt="photo of ukj person", class_prompt="photo of a person")
    train(config)
    config.save(folder.config)
    now = time.time()
    folder.write_record(JobRecord(name="anna", status="completed", created_at=now, queued_at=now, finished_at=now))
    app_module = importlib.import_module("dreamcore_webui.app")
    app, blocks, handlers = app_module.build_app(root / "out")
    yield app, handlers.generate_panel, root
    handlers.controller.manager().shutdown()


def test_the_panel_lists_the_jobs_models_and_prefills_its_prompt(app_with_job) -> None:
    _app, panel, _root = app_with_job
    assert panel.choices()[:2] == ["anna: final", "anna: step 3"]
    assert panel.prompt_for("anna: step 3") == "photo of ukj person"


def test_generate_shows_the_images_with_their_parameters_and_reuses_the_seed(app_with_job) -> None:
    _app, panel, root = app_with_job
    first = panel.generate("anna: final", "photo of ukj person", "blurry", "random", 7.0, 2.0, "Euler a", 0, 0, 2.0)
    assert len(first.gallery) == 2, first.message
    for path, caption in first.gallery:
        assert Path(path).parent == root / "out" / "generated"
        assert Image.open(path).info["parameters"] == caption
        assert "Negative prompt: blurry" in caption and "Model: anna" in caption
    assert f"Seed: {first.last_seed}," in first.parameters
    again = panel.generate("anna: final", "photo of ukj person", "blurry", first.last_seed, 7.0, 2.0, "Euler a", 0, 0,
                           1.0)
    assert np.array_equal(np.asarray(Image.open(again.gallery[0][0])), np.asarray(Image.open(first.gallery[0][0])))
    assert again.gallery[0][0] != first.gallery[0][0]  # a new file, the first one kept


def test_bad_values_are_listed_not_raised(app_with_job) -> None:
    _app, panel, root = app_with_job
    result = panel.generate("anna: final", " ", "", "lucky", 7.0, 0.0, "Euler a", 65, 0, 1.0)
    assert result.gallery == []
    for field in ("prompt:", "seed:", "num_inference_steps:", "width:"):
        assert field in result.message
    missing = panel.generate(str(root / "nowhere.safetensors"), "x", "", "1", 7.0, 2.0, "DDIM", 0, 0, 1.0)
    assert "nowhere.safetensors" in missing.message and missing.gallery == []


def test_compare_checkpoints_shows_the_jobs_grid(app_with_job) -> None:
    _app, panel, _root = app_with_job
    path, message = panel.compare("anna")
    assert path is not None, message
    grid = Image.open(path)
    assert grid.width > 2 * 64 and grid.height > 4 * 64 and "2 checkpoints x 4 prompts" in message
