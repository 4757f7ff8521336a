"""Settings that cannot work are refused before any model loads, each with its limit or its folder: absurd
numbers, folders training would have to write into but cannot, broken config files; unusual numbers are
warnings; a run's start removes what killed writers left in its output folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dreamcore.config import ConfigError, TrainConfig, plausibility_warnings


@pytest.fixture
def settings(tmp_path: Path) -> dict:
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(3):
        Image.new("RGB", (64, 64), (index * 60, 20, 20)).save(photos / f"{index}.png")
    model = tmp_path / "model"
    model.mkdir()
    return {"pretrained_model_name_or_path": str(model), "instance_data_dir": str(photos),
            "instance_prompt": "photo of sks dog", "class_prompt": "photo of a dog",
            "output_dir": str(tmp_path / "out"), "resolution": 64}


@pytest.mark.parametrize("name, value, message", [
    ("max_train_steps", 10**30, "max_train_steps: 1e+30 is above the limit of 10,000,000 steps"),
    ("learning_rate", 1e9, "learning_rate: 1e+09 is above the limit of 1 "),
    ("learning_rate", float("inf"), "learning_rate: must be a finite number"),
    ("text_encoder_lr", 5.0, "text_encoder_lr: 5 is above the limit of 1 "),
    ("resolution", 8192, "resolution: 8,192 is above the limit of 4,096 pixels"),
    ("resolution", 515, "resolution: 515 is not a multiple of 8"),
    ("train_batch_size", 100_000, "train_batch_size: 100,000 is above the limit of 4,096"),
    ("save_infer_steps", 5000, "save_infer_steps: 5,000 is above the limit of 1,000 sampling steps"),
    ("prior_loss_weight", float("nan"), "prior_loss_weight: must be a finite number"),
    ("adam_epsilon", float("inf"), "adam_epsilon: must be a finite number"),
])
def test_absurd_values_are_errors_that_name_the_limit(name, value, message, settings) -> None:
    config = TrainConfig(**{**settings, name: value})
    problems = config.problems()
    assert any(message in problem for problem in problems), problems
    with pytest.raises(ConfigError):
        config.validate()


def test_absurd_values_from_a_json_body_are_refused(settings) -> None:
    with pytest.raises(ConfigError, match="max_train_steps: 1e\\+30 is above the limit"):
        TrainConfig.from_dict({**settings, "max_train_steps": 1e30, "learning_rate": 1e9}).validate()


@pytest.mark.parametrize("changes, message", [
    ({"max_train_steps": 200_000}, "max_train_steps: 200,000 is unusually high (above 100,000 steps"),
    ({"learning_rate": 5e-3}, "learning_rate: 0.005 is unusually high (above 0.001"),
    ({"resolution": 2048}, "resolution: 2,048 is unusually high (above 1,024 pixels"),
    ({"learning_rate": 1e-10}, "learning_rate: 1e-10 is unusually low"),
])
def test_unusual_values_are_warnings_not_errors(changes, message, settings) -> None:
    config = TrainConfig(**{**settings, **changes})
    assert config.problems() == []
    assert any(message in warning for warning in plausibility_warnings(config))


def test_usual_values_warn_of_nothing(settings) -> None:
    assert plausibility_warnings(TrainConfig(**{**settings, "resolution": 512})) == []
    lora = TrainConfig(**{**settings, "resolution": 512, "use_lora": True, "learning_rate": 1e-4})
    assert plausibility_warnings(lora) == []


def test_a_read_only_class_folder_short_of_images_is_refused_before_loading(settings, read_only_folder) -> None:
    config = TrainConfig(**{**settings, "with_prior_preservation": True, "class_data_dir": str(read_only_folder),
                            "num_class_images": 10})
    assert any(f"class_data_dir: {read_only_folder} holds 0 of the 10 class images" in p and "not writable" in p
               for p in config.problems()), config.problems()
    full = TrainConfig(**{**settings, "with_prior_preservation": True, "class_data_dir": str(read_only_folder),
                          "num_class_images": 0})
    assert full.problems() == []  # nothing to generate: reading is enough


def test_a_read_only_output_folder_is_refused_before_loading(settings, read_only_folder) -> None:
    config = TrainConfig(**{**settings, "output_dir": str(read_only_folder / "run")})
    assert any(p.startswith("output_dir:") and "not writable" in p for p in config.problems()), config.problems()


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"learning_rat": 1e-6}', "unknown setting 'learning_rat'.*did you mean 'learning_rate'"),
    ('{"max_train_steps": "many"}', "max_train_steps: expected a whole number"),
    ('{"center_crop": "yes"}', "center_crop: expected true or false"),
    ("", "not valid JSON"),
])
def test_broken_config_files_are_named(content, message, tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as raised:
        TrainConfig.load(path)
    assert "Traceback" not in str(raised.value)


def test_a_run_start_cleans_what_killed_writers_left_and_warns(settings) -> None:
    from dreamcore.training.setup import plan_run

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(ended.stdout)  # a process id that no longer runs
    out = Path(settings["output_dir"])
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / f".tmp-run-step-000500.safetensors.{dead}.abcdefgh").write_bytes(b"partial")
    old_state = out / f".old-state.{dead}"
    old_state.mkdir()
    (old_state / "progress.json").write_text("{}")
    warnings: list[str] = []
    plan_run(TrainConfig(**{**settings, "max_train_steps": 200_000}), warnings.append)
    assert sorted(p.name for p in out.rglob("*")) == ["checkpoints", "progress.json", "state"]
    assert any("put back" in w for w in warnings) and any("removed" in w for w in warnings)
    assert any("max_train_steps: 200,000 is unusually high" in w for w in warnings)
