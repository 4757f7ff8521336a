"""The tab's Prepare crops at the size training will use: the base model's family's resolution unless the person
changed the resolution under Advanced from the preset's (the standalone app's host; the tab is the WebUI's)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from form_loader import glue  # noqa: F401  loads dreamcore_webui as the entry file does
from dreamcore.families import DEFAULT_FAMILY
from dreamcore.families.sdxl import SDXL
from dreamcore.presets import PORTRAIT_PRESET, default_preset, preset_overrides


@pytest.fixture
def handlers(tmp_path: Path):
    from dreamcore.tiny import save_tiny_model
    from dreamcore_webui.controller import TrainingController
    from dreamcore_webui.host import StandaloneHost
    from dreamcore_webui.tab import TabHandlers

    host = StandaloneHost(tmp_path / "app")
    save_tiny_model(host.checkpoint_dir() / "tiny-xl.safetensors", family=SDXL.name, fmt="safetensors")
    return TabHandlers(TrainingController(host, lambda: tmp_path / "app"), PORTRAIT_PRESET)


@pytest.fixture
def cups(tmp_path: Path) -> Path:
    """A photo without a face, of a subject that is not a person (no face detector needed)."""
    folder = tmp_path / "cups"
    folder.mkdir()
    photo = Image.new("RGB", (300, 400), (200, 200, 190))
    ImageDraw.Draw(photo).ellipse((120, 200, 260, 360), fill=(120, 70, 30))
    photo.save(folder / "cup.png")
    return folder


def prepared_side(photos_dir: str) -> int:
    (crop,) = Path(photos_dir).glob("*.png")
    with Image.open(crop) as image:
        return image.width


def test_prepare_crops_at_the_base_models_family_resolution_unless_the_resolution_was_changed(handlers, cups):
    portrait = preset_overrides(PORTRAIT_PRESET)["resolution"]
    assert portrait != SDXL.training_resolution  # else this test could not fail
    # the Portrait preset's resolution, untouched, and an SDXL base: SDXL's, as training will use
    report, _, photos_dir = handlers.prepare(str(cups), None, "sks", "xl", portrait, "portrait", "cup",
                                             "tiny-xl.safetensors", PORTRAIT_PRESET)
    assert prepared_side(photos_dir) == SDXL.training_resolution, report
    assert f"size: {SDXL.training_resolution} px, {SDXL.label}'s training resolution" in report
    # SDXL's own preset
    xl_preset = default_preset(SDXL.name)
    report, _, photos_dir = handlers.prepare(str(cups), None, "sks", "xl2", preset_overrides(xl_preset)["resolution"],
                                             "portrait", "cup", "tiny-xl.safetensors", xl_preset)
    assert prepared_side(photos_dir) == SDXL.training_resolution, report

    # a resolution changed under Advanced wins, as it does for training
    report, _, photos_dir = handlers.prepare(str(cups), None, "sks", "small", 128, "portrait", "cup",
                                             "tiny-xl.safetensors", PORTRAIT_PRESET)
    assert prepared_side(photos_dir) == 128 and "size: 128 px, the resolution set under Advanced" in report

    # no base model chosen yet: the preset's, saying so
    report, _, photos_dir = handlers.prepare(str(cups), None, "sks", "none", portrait, "portrait", "cup", "",
                                             PORTRAIT_PRESET)
    assert prepared_side(photos_dir) == portrait == DEFAULT_FAMILY.training_resolution
    assert "choose the base model to crop at its family's" in report


def test_prepare_names_a_base_model_that_is_gone(handlers, cups):
    report, preview, photos_dir = handlers.prepare(str(cups), None, "sks", "gone", None, "portrait", "cup",
                                                   "deleted.safetensors", PORTRAIT_PRESET)
    assert "deleted.safetensors" in report and "refresh" in report
    assert preview == [] and photos_dir == str(cups)
