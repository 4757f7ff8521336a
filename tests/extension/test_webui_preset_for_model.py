"""Choosing a base model in the tab offers its family's preset (SDXL LoRA for SDXL, Portrait for SD1), unless the
person picked a preset of their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from form_loader import glue  # noqa: F401  loads dreamcore_webui as the entry file does
from dreamcore.families.sdxl import SDXL
from dreamcore.presets import PORTRAIT_PRESET, default_preset, preset_names


@pytest.fixture(scope="module")
def handlers(tmp_path_factory: pytest.TempPathFactory):
    from dreamcore.tiny import save_tiny_model
    from dreamcore_webui.controller import TrainingController
    from dreamcore_webui.host import StandaloneHost
    from dreamcore_webui.tab import TabHandlers

    root = tmp_path_factory.mktemp("app")
    host = StandaloneHost(root)
    save_tiny_model(host.checkpoint_dir() / "tiny-xl.safetensors", family=SDXL.name, fmt="safetensors")
    save_tiny_model(host.checkpoint_dir() / "tiny-sd1.safetensors", family="sd1", fmt="safetensors")
    return TabHandlers(TrainingController(host, lambda: root), PORTRAIT_PRESET)


def test_an_sdxl_model_offers_the_sdxl_preset_and_an_sd1_model_portrait(handlers):
    xl_preset = default_preset(SDXL.name)
    assert xl_preset != PORTRAIT_PRESET  # else this test could not fail
    # the tab starts on Portrait: choosing SDXL kept it, a full fine-tune at SD1's 512 px
    assert handlers.preset_for_model("tiny-xl.safetensors", PORTRAIT_PRESET) == xl_preset
    assert handlers.preset_for_model("tiny-sd1.safetensors", xl_preset) == PORTRAIT_PRESET
    assert handlers.preset_for_model("tiny-sd1.safetensors", PORTRAIT_PRESET) == PORTRAIT_PRESET


def test_a_preset_the_person_picked_or_an_unreadable_model_keeps_the_preset(handlers, tmp_path: Path):
    picked = next(name for name in preset_names() if name not in (PORTRAIT_PRESET, default_preset(SDXL.name)))
    assert handlers.preset_for_model("tiny-xl.safetensors", picked) == picked
    assert handlers.preset_for_model("", PORTRAIT_PRESET) == PORTRAIT_PRESET
    assert handlers.preset_for_model(str(tmp_path / "missing.safetensors"), PORTRAIT_PRESET) == PORTRAIT_PRESET
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    assert handlers.preset_for_model(str(broken), PORTRAIT_PRESET) == PORTRAIT_PRESET
