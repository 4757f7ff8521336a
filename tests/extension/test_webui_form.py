"""From the tab's raw values to a TrainConfig: every field reachable, every problem named."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dreamcore.config import ConfigError, config_fields
from form_loader import form


def test_main_and_advanced_controls_cover_every_trainconfig_field_once() -> None:
    advanced = [f.name for f in form.advanced_fields()]
    assert len(advanced) == len(set(advanced))
    assert set(advanced) | set(form.MAIN_FIELDS) == {f.name for f in config_fields()}
    assert not set(advanced) & set(form.MAIN_FIELDS)
    grouped = [f.name for fields in form.advanced_groups().values() for f in fields]
    assert sorted(grouped) == sorted(advanced)


def test_optional_numbers_are_text_and_parse_back() -> None:
    field = next(f for f in config_fields() if f.name == "max_train_steps")
    assert form.default_ui_value(field) == ""
    assert form.parse_ui_value(field, "") is None
    assert form.parse_ui_value(field, " 40 ") == 40
    with pytest.raises(ValueError, match="whole number"):
        form.parse_ui_value(field, "forty")
    rate = next(f for f in config_fields() if f.name == "learning_rate")
    assert form.parse_ui_value(rate, 2e-6) == 2e-6
    steps = next(f for f in config_fields() if f.name == "save_infer_steps")
    assert form.parse_ui_value(steps, 12.0) == 12


def _photos(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", (16, 16), (index * 80, 10, 10)).save(folder / f"p{index}.png")
    return folder


def test_build_config_fills_prompts_model_and_photos(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos")
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"x")
    tab_form = form.TabForm(base_model="base [abc]", photos_dir=str(photos), token="ukj", class_word="woman",
                            job_name="anna", advanced={"resolution": 64, "max_train_steps": "8"})
    config = form.build_config(tab_form, {"base [abc]": str(base)}.get, tmp_path / "uploads")
    assert config.pretrained_model_name_or_path == str(base)
    assert config.instance_prompt == "photo of ukj woman" and config.class_prompt == "photo of a woman"
    assert (config.resolution, config.max_train_steps, config.model_name) == (64, 8, "anna")


def test_the_preset_is_a_starting_point_and_only_changed_fields_are_chosen(tmp_path: Path) -> None:
    from dreamcore.presets import PORTRAIT_PRESET, apply_memory_preset, preset_overrides

    photos = _photos(tmp_path / "photos")
    portrait = preset_overrides(PORTRAIT_PRESET)
    advanced = {f.name: form.ui_value(f, portrait.get(f.name, f.default)) for f in form.advanced_fields()}
    tab_form = form.TabForm(base_model="base", photos_dir=str(photos), token="sks", class_word="person",
                            job_name="anna", advanced={**advanced, "resolution": 64}, preset=PORTRAIT_PRESET)
    config = form.build_config(tab_form, lambda title: str(photos), tmp_path / "uploads")
    assert config.mixed_precision == "fp16" and config.use_8bit_adam  # the preset's values ...
    assert set(config.chosen_settings) == {"resolution", "pretrained_model_name_or_path", "instance_data_dir",
                                           "instance_prompt", "class_prompt", "model_name"}  # ... are not chosen
    tiered, _ = apply_memory_preset(config, free_bytes=80 * 2**30)
    assert tiered.memory_preset == "16GB"  # the Portrait preset runs the fast tier on a large card
    exact = form.build_config(form.TabForm(**{**tab_form.__dict__, "advanced": {**advanced, "mixed_precision": "no"}}),
                              lambda title: str(photos), tmp_path / "uploads")
    assert exact.chose("mixed_precision")
    assert apply_memory_preset(exact, free_bytes=80 * 2**30)[0].mixed_precision == "no"
    with pytest.raises(ConfigError, match="Preset: 'Mine' is not one of"):
        form.build_config(form.TabForm(**{**tab_form.__dict__, "preset": "Mine"}), lambda title: str(photos),
                          tmp_path / "uploads")


def test_build_config_lists_every_problem_with_the_controls_name(tmp_path: Path) -> None:
    tab_form = form.TabForm(base_model="gone.safetensors", token="two words", class_word="", job_name="",
                            advanced={"resolution": "abc", "max_train_steps": "x"})
    with pytest.raises(ConfigError) as raised:
        form.build_config(tab_form, lambda title: None, tmp_path / "uploads")
    text = "\n".join(raised.value.problems)
    for expected in ("Base model", "Token", "Class", "Model name", "Photos", "max_train_steps"):
        assert expected in text, text


def test_uploads_are_copied_into_a_fresh_folder_per_start(tmp_path: Path) -> None:
    uploads = [str(p) for p in sorted(_photos(tmp_path / "tmp-upload", 3).iterdir())]
    first = form.collect_uploads(uploads, tmp_path / "uploads" / "anna")
    second = form.collect_uploads(uploads[:1], tmp_path / "uploads" / "anna")
    assert first != second
    assert len(list(first.iterdir())) == 3 and len(list(second.iterdir())) == 1
    assert not [p for p in (tmp_path / "uploads").iterdir() if p.name.startswith(".tmp")]
