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
