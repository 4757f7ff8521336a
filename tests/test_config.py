"""TrainConfig: every validation error, all reported at once; the CLI generated from the dataclass."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from pathlib import Path

import pytest
from PIL import Image

from dreamcore.config import (ConfigError, TrainConfig, add_config_arguments, config_fields,
                              config_from_arguments)

GUIDE_COMMAND = """
  --pretrained_model_name_or_path={model}
  --pretrained_vae_name_or_path="stabilityai/sd-vae-ft-mse"
  --output_dir={out}
  --revision="fp16"
  --with_prior_preservation --prior_loss_weight=1.0
  --seed=1337
  --resolution=512
  --train_batch_size=1
  --train_text_encoder
  --mixed_precision="fp16"
  --use_8bit_adam
  --gradient_accumulation_steps=1
  --learning_rate=1e-6
  --lr_scheduler="constant"
  --lr_warmup_steps=0
  --num_class_images=50
  --sample_batch_size=4
  --max_train_steps=800
  --save_interval=10000
  --save_sample_prompt="photo of ukj person"
  --concepts_list="{concepts}"
"""


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    return folder


def parse(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return config_from_arguments(parser.parse_args(argv))


def test_guide_command_parses_verbatim(tmp_path: Path, photos: Path, model_dir: Path) -> None:
    concepts = tmp_path / "concepts_list.json"
    concepts.write_text(json.dumps([{"instance_prompt": "photo of ukj person", "class_prompt": "photo of a person",
                                     "instance_data_dir": str(photos), "class_data_dir": str(tmp_path / "cls")}]))
    argv = shlex.split(GUIDE_COMMAND.format(model=model_dir, out=tmp_path / "out", concepts=concepts))
    config = parse(argv)
    assert config.train_text_encoder and config.use_8bit_adam and config.with_prior_preservation
    assert config.mixed_precision == "fp16" and config.learning_rate == 1e-6 and config.max_train_steps == 800
    assert config.revision == "fp16" and config.save_sample_prompt == "photo of ukj person"
    assert config.problems() == []
    assert config.concepts()[0].class_prompt == "photo of a person"
    # the flags typed are recorded as chosen, defaults typed out included (--prior_loss_weight=1.0)
    assert {"mixed_precision", "use_8bit_adam", "prior_loss_weight", "learning_rate"} <= set(config.chosen_settings)
    assert not config.chose("max_grad_norm") and not config.chose("memory_preset")


def test_explicit_settings_survive_memory_preset_auto(tmp_path: Path, photos: Path, model_dir: Path) -> None:
    from dreamcore.presets import apply_memory_preset

    common = ["--pretrained_model_name_or_path", str(model_dir), "--instance_data_dir", str(photos),
              "--instance_prompt", "photo of sks person"]
    exact, message = apply_memory_preset(parse([*common, "--mixed_precision", "no"]), free_bytes=80 * 2**30)
    assert exact.mixed_precision == "no" and exact.memory_preset == "auto" and not exact.optimizer_in_backward
    assert "kept your own settings (mixed_precision given)" in message
    # the guide's fp16 and 8-bit Adam state a memory budget: on a GPU a tier keeps it, and says so
    guide, message = apply_memory_preset(parse([*common, "--mixed_precision", "fp16", "--use_8bit_adam"]),
                                         free_bytes=80 * 2**30)
    assert guide.memory_preset == "16GB" and "memory_preset none to run them literally" in message
    # a saved train_config.json keeps what was chosen, and only that, through --config
    saved = exact.save(tmp_path / "train_config.json")
    again = parse(["--config", str(saved), "--seed", "3"])
    assert set(again.chosen_settings) == {*exact.chosen_settings, "seed"}
    assert apply_memory_preset(again, free_bytes=80 * 2**30)[0].mixed_precision == "no"


def test_every_field_has_a_flag_and_help() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    for f in config_fields():
        assert f"--{f.name}" in flags
        assert f.metadata["help"] and f.metadata["group"]


def test_flags_override_config_file(tmp_path: Path, photos: Path, model_dir: Path) -> None:
    base = TrainConfig(pretrained_model_name_or_path=str(model_dir), instance_data_dir=str(photos),
                       instance_prompt="photo of sks person", learning_rate=3e-6, max_train_steps=10)
    path = base.save(tmp_path / "c.json")
    config = parse(["--config", str(path), "--max_train_steps", "20"])
    assert config.learning_rate == 3e-6 and config.max_train_steps == 20


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    config = TrainConfig(pretrained_model_name_or_path="", instance_data_dir=str(tmp_path / "missing"),
                         instance_prompt="photo of sks person", with_prior_preservation=True, resolution=510,
                         lr_scheduler="sometimes", max_train_steps=0, output_dir=str(not_a_dir / "out"),
                         train_batch_size=0, learning_rate=-1.0)
    with pytest.raises(ConfigError) as raised:
        config.validate()
    text = "\n".join(raised.value.problems)
    for expected in ("pretrained_model_name_or_path", "does not exist", "class_prompt", "multiple of 8",
                     "lr_scheduler", "max_train_steps", "output_dir", "train_batch_size", "learning_rate"):
        assert expected in text, expected
    assert len(raised.value.problems) >= 9


def test_a_missing_path_or_a_bad_rate_says_what_to_check(tmp_path: Path) -> None:
    config = TrainConfig(pretrained_model_name_or_path=str(tmp_path / "v1-5.safetensors"),
                         pretrained_vae_name_or_path=str(tmp_path / "vae.safetensors"),
                         instance_data_dir=str(tmp_path / "photos"), instance_prompt="photo of sks person",
                         output_dir=str(tmp_path / "out"), learning_rate=-1.0)
    problems = {p.split(":")[0]: p for p in config.problems()}
    assert str(tmp_path / "v1-5.safetensors") in problems["pretrained_model_name_or_path"]
    assert "check the path of the base model" in problems["pretrained_model_name_or_path"]
    assert "leave it empty for the base model's own" in problems["pretrained_vae_name_or_path"]
    assert str(tmp_path / "photos") in problems["instance"] and "check instance_data_dir" in problems["instance"]
    assert "the guide uses 1e-6" in problems["learning_rate"]


def test_empty_photo_folder(tmp_path: Path, model_dir: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    config = TrainConfig(pretrained_model_name_or_path=str(model_dir), instance_data_dir=str(empty),
                         instance_prompt="photo of sks person", output_dir=str(tmp_path / "o"))
    assert any("holds no images" in p and str(empty) in p for p in config.problems())


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not valid JSON"),
    ('{"instance_prompt": "x"}', "expected a JSON list"),
    ("[]", "expected a JSON list"),
    ('[{"instance_prompt": "photo of sks person"}]', "missing instance_data_dir"),
    ('[{"instance_prompt": "p", "instance_data_dir": "d", "colour": "red"}]', "unknown key"),
    ('["just a string"]', "expected an object"),
])
def test_bad_concepts_file(tmp_path: Path, model_dir: Path, content: str, expected: str) -> None:
    path = tmp_path / "concepts.json"
    path.write_text(content)
    config = TrainConfig(pretrained_model_name_or_path=str(model_dir), concepts_list=str(path),
                         output_dir=str(tmp_path / "o"))
    problems = config.problems()
    assert any(expected in p and str(path) in p for p in problems), problems


def test_unreadable_concepts_file(tmp_path: Path, model_dir: Path) -> None:
    config = TrainConfig(pretrained_model_name_or_path=str(model_dir), concepts_list=str(tmp_path / "nope.json"),
                         output_dir=str(tmp_path / "o"))
    assert any("cannot read" in p and "nope.json" in p for p in config.problems())


def test_from_dict_rejects_unknown_and_mistyped_keys() -> None:
    with pytest.raises(ConfigError) as raised:
        TrainConfig.from_dict({"learning_rat": 1e-6, "max_train_steps": "many", "train_text_encoder": "yes"})
    text = str(raised.value)
    assert "learning_rat" in text and "did you mean 'learning_rate'" in text
    assert "max_train_steps" in text and "train_text_encoder" in text


def test_round_trip_through_json(tmp_path: Path) -> None:
    config = TrainConfig(pretrained_model_name_or_path="m", instance_prompt="photo of sks person",
                         max_train_steps=None, learning_rate=1e-6)
    loaded = TrainConfig.load(config.save(tmp_path / "train_config.json"))
    assert loaded == config and loaded.chosen_settings == config.chosen_settings
    assert config.chosen_settings == ("instance_prompt", "learning_rate", "max_train_steps",
                                      "pretrained_model_name_or_path")
    assert config.replace(seed=1).chosen_settings == config.chosen_settings  # dreamcore's own changes
    assert config.choose(seed=1).chose("seed")


def test_chosen_settings_come_from_the_keys_given_or_their_record() -> None:
    assert TrainConfig.from_dict({"seed": 3, "resolution": 512}).chosen_settings == ("resolution", "seed")
    recorded = TrainConfig.from_dict({"seed": 3, "resolution": 512, "chosen_settings": ["seed"]})
    assert recorded.chosen_settings == ("seed",)
    with pytest.raises(ConfigError, match="chosen_settings: unknown setting 'sed'"):
        TrainConfig.from_dict({"chosen_settings": ["sed"]})
    with pytest.raises(ConfigError, match="chosen_settings: expected a list of setting names"):
        TrainConfig.from_dict({"chosen_settings": "seed"})


def test_config_is_immutable() -> None:
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.learning_rate = 1.0  # type: ignore[misc]


def test_diffusers_flags_parse_into_their_own_settings(tmp_path: Path, photos: Path, model_dir: Path) -> None:
    config = parse(["--pretrained_model_name_or_path", str(model_dir), "--instance_data_dir", str(photos),
                    "--instance_prompt", "photo of sks person", "--output_dir", str(tmp_path / "out"),
                    "--validation_steps", "100", "--save_interval", "500", "--save_min_steps", "1000",
                    "--lr_scheduler", "cosine_with_restarts", "--lr_num_cycles", "3", "--variant", "fp16",
                    "--tokenizer_max_length", "20", "--text_encoder_use_attention_mask", "--snr_gamma", "5",
                    "--offset_noise", "--resume_from_checkpoint", "checkpoint-500"])
    assert config.problems() == []
    assert (config.validation_steps, config.save_interval, config.save_min_steps) == (100, 500, 1000)
    assert (config.lr_scheduler, config.lr_num_cycles, config.variant) == ("cosine_with_restarts", 3, "fp16")
    assert (config.tokenizer_max_length, config.text_encoder_use_attention_mask) == (20, True)
    assert (config.snr_gamma, config.offset_noise) == (5.0, True)


def test_diffusers_settings_that_cannot_work_are_named(tmp_path: Path, photos: Path) -> None:
    single_file = tmp_path / "model.safetensors"
    single_file.write_bytes(b"x")
    config = TrainConfig(pretrained_model_name_or_path=str(single_file), instance_data_dir=str(photos),
                         instance_prompt="photo of sks person", output_dir=str(tmp_path / "out"), variant="fp16",
                         tokenizer_max_length=0, validation_steps=-1, save_min_steps=-2,
                         resume_from_checkpoint="checkpoint-x")
    problems = "\n".join(config.problems())
    for expected in ("variant: 'fp16' picks the weight files of a diffusers folder", "tokenizer_max_length: must "
                     "be at least 1", "validation_steps: must not be negative", "save_min_steps: must not be "
                     "negative", "'checkpoint-x' is not a saved state folder"):
        assert expected in problems


def test_a_concepts_list_may_give_each_concept_its_own_class_image_count(tmp_path: Path, photos: Path,
                                                                         model_dir: Path) -> None:
    concepts = tmp_path / "concepts.json"
    entry = {"instance_prompt": "photo of sks dog", "instance_data_dir": str(photos), "class_prompt": "photo of a dog"}
    concepts.write_text(json.dumps([{**entry, "num_class_images": 7}, entry]))
    config = TrainConfig(pretrained_model_name_or_path=str(model_dir), concepts_list=str(concepts),
                         output_dir=str(tmp_path / "out"), with_prior_preservation=True, num_class_images=3)
    assert [c.num_class_images for c in config.concepts()] == [7, None]
    from dreamcore.training.setup import plan_run

    plan = plan_run(config.replace(prepare_photos=False), warn=print)
    assert [c.num_class_images for c in plan.concepts] == [7, 3]  # the run's count where a concept has none
    for bad in (-1, 2.5, "7", True):
        concepts.write_text(json.dumps([{**entry, "num_class_images": bad}]))
        with pytest.raises(ConfigError, match="num_class_images must be a whole number"):
            config.concepts()


def test_saved_settings_hold_absolute_paths(tmp_path: Path, photos: Path, model_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(pretrained_model_name_or_path="model", pretrained_vae_name_or_path="stabilityai/sd-vae-ft-mse",
                         instance_data_dir="photos", instance_prompt="photo of sks person", output_dir="out",
                         resume_from_checkpoint="step-4")
    absolute = config.with_absolute_paths()
    assert (absolute.pretrained_model_name_or_path, absolute.instance_data_dir, absolute.output_dir) == \
        (str(model_dir), str(photos), str(tmp_path / "out"))
    # a hub id and a state named by its step are not paths
    assert (absolute.pretrained_vae_name_or_path, absolute.resume_from_checkpoint) == \
        ("stabilityai/sd-vae-ft-mse", "step-4")
    assert absolute.chosen_settings == config.chosen_settings


@pytest.mark.parametrize("resolution, expected", [
    (48, ["resolution: 48 is below 64 pixels", "use 64 or more"]),
    (30, ["resolution: 30 is not a multiple of 8", "and is below 64 pixels", "use 64 or more"]),
    (100, ["resolution: 100 is not a multiple of 8", "use 96."]),
])
def test_a_resolution_below_the_smallest_crop_or_off_the_vaes_grid_is_refused(resolution: int,
                                                                              expected: list[str]) -> None:
    problems = [p for p in TrainConfig(resolution=resolution).problems() if p.startswith("resolution")]
    assert len(problems) == 1, problems  # one problem a setting, every reason in it
    for text in expected:
        assert text in problems[0], problems
    assert not [p for p in TrainConfig(resolution=64).problems() if p.startswith("resolution")]


def test_the_resolutions_help_names_the_model_familys_default() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "SDXL 1024. (default: the model family's)" in text and "(default: 512)" not in text
