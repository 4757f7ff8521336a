"""`train` on a raw photo folder: photos not square at the training size are cropped first (opt-out), around
the face for a person and around the salient region for any other subject."""

from __future__ import annotations

from pathlib import Path

import argparse
import json
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dreamcore import ConfigError, TrainConfig
from dreamcore.training import train
from dreamcore.training.setup import plan_run, prepared_photos


@pytest.fixture
def raw_photos(tmp_path: Path) -> Path:
    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path / "raw"
    folder.mkdir()
    astronaut = Image.fromarray(skimage_data.astronaut())
    astronaut.save(folder / "astronaut.jpg", quality=92)
    # A wider shot with the face off-centre: a plain centre crop would cut it.
    wide = Image.new("RGB", (900, 600), (90, 120, 160))
    wide.paste(astronaut.resize((400, 400)), (40, 100))
    wide.save(folder / "wide.jpg", quality=92)
    Image.fromarray(np.full((300, 500, 3), 200, np.uint8)).save(folder / "wall.png")  # blank: nothing to learn
    return folder


def config(model: Path, photos: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(pretrained_model_name_or_path=str(model), instance_data_dir=str(photos),
                  instance_prompt="photo of sks person", output_dir=str(out), resolution=64, max_train_steps=2,
                  learning_rate=1e-4, lr_warmup_steps=0, checkpointing_steps=0, n_save_sample=1, save_infer_steps=2)
    values.update(overrides)
    return TrainConfig(**values)


def test_raw_photos_are_prepared_before_training(tiny_model_dir: Path, raw_photos: Path, tmp_path: Path) -> None:
    originals = {p: p.read_bytes() for p in raw_photos.iterdir()}
    events = []
    result = train(config(tiny_model_dir, raw_photos, tmp_path / "out"), callbacks=[events.append])
    prepared = sorted((tmp_path / "out" / "prepared").glob("*/*.png"))
    assert [p.stem for p in prepared] == ["astronaut", "wide"]
    assert all(Image.open(p).size == (64, 64) for p in prepared)
    warnings = [e.message for e in events if e.kind == "log" and e.level == "warning"]
    assert any("wall.png" in message and "blank" in message for message in warnings)  # the unusable one is named
    assert {p: p.read_bytes() for p in raw_photos.iterdir()} == originals  # originals untouched
    assert result.status == "completed"


def test_opting_out_uses_the_photos_as_they_are(tiny_model_dir: Path, raw_photos: Path, tmp_path: Path) -> None:
    result = train(config(tiny_model_dir, raw_photos, tmp_path / "out", prepare_photos=False))
    assert result.status == "completed"
    assert not (tmp_path / "out" / "prepared").exists()


def test_a_folder_with_nothing_usable_is_refused_before_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "walls"
    folder.mkdir()
    Image.new("RGB", (200, 120), (10, 10, 10)).save(folder / "a.png")
    with pytest.raises(ConfigError, match="walls"):
        train(config(tiny_model_dir, folder, tmp_path / "out"))
    assert not list((tmp_path / "out").glob("*.safetensors"))


def _dog_photo(size: tuple[int, int], centre_x: float, background: tuple[int, int, int]) -> Image.Image:
    """A dog-like blob (body, head, legs) standing off-centre on a plain background: no face anywhere."""
    photo = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(photo)
    x, y, s = centre_x, size[1] * 0.55, size[1] * 0.2
    draw.ellipse((x - s, y - 0.5 * s, x + s, y + 0.5 * s), fill=(120, 70, 30))
    draw.ellipse((x + 0.6 * s, y - 1.1 * s, x + 1.3 * s, y - 0.3 * s), fill=(120, 70, 30))
    for offset in (-0.8, -0.45, 0.45, 0.8):
        draw.rectangle((x + (offset - 0.08) * s, y + 0.3 * s, x + (offset + 0.08) * s, y + s), fill=(120, 70, 30))
    return photo


def test_a_dog_is_trained_from_raw_photos_with_every_photo_kept(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The user report: raw dog photos were all refused for having no face. Each is cropped around the dog,
    and the run's plan (what train does before loading a model) trains from all of them."""
    folder = tmp_path / "dog"
    folder.mkdir()
    for index, (centre_x, background) in enumerate([(480, (230, 230, 220)), (140, (90, 130, 170)),
                                                    (450, (200, 190, 160))]):
        _dog_photo((600, 360), centre_x, background).save(folder / f"dog{index}.jpg", quality=92)
    warnings: list[str] = []
    plan = plan_run(config(tiny_model_dir, folder, tmp_path / "out", instance_prompt="photo of sks dog",
                           class_prompt="photo of a dog"), warnings.append)
    assert [p.stem for p in plan.concepts[0].photos] == ["dog0", "dog1", "dog2"]
    assert all(Image.open(p).size == (64, 64) for p in plan.concepts[0].photos)
    assert plan.total_steps == 2 and plan.photo_count == 3
    assert not any("skipping" in message or "face" in message for message in warnings), warnings
    report = json.loads(next((tmp_path / "out" / "prepared").glob("*/report/prepare_report.json")).read_text())
    for photo in report["photos"]:
        assert photo["cropped_around"] == "salient region"
        left, _, right, _ = photo["crop_box"]
        assert left <= photo["salient_point"][0] <= right


def _train_options() -> set[str]:
    from dreamcore.cli import build_parser

    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return set(commands.choices["train"]._option_string_actions)


def test_train_warnings_name_only_options_train_has(tmp_path: Path) -> None:
    """A person's set: a photo of two people is skipped with a way out that train offers, a photo without a
    face is kept with a warning to check it."""
    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path / "raw"
    folder.mkdir()
    astronaut = Image.fromarray(skimage_data.astronaut())
    astronaut.save(folder / "astronaut.jpg", quality=92)
    pair = Image.new("RGB", (1024, 512))
    pair.paste(astronaut, (0, 0))
    pair.paste(astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (512, 0))
    pair.save(folder / "two people.jpg", quality=92)
    _dog_photo((600, 360), 450, (230, 230, 220)).save(folder / "from behind.png")
    warnings: list[str] = []
    photos = prepared_photos(folder, tmp_path / "prepared", 64, warnings.append,
                             instance_prompt="photo of sks person", class_prompt="photo of a person")
    assert sorted(p.stem for p in photos) == ["astronaut", "from behind"]
    assert any("two people.jpg" in w and "2 faces" in w and "--no-prepare_photos" in w for w in warnings)
    assert any("from behind.png" in w and "check that it shows the person" in w for w in warnings)
    named = {flag for message in warnings for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", message)}
    assert named and named <= _train_options(), named
