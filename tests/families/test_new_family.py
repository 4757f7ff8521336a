"""Adding a family is one new module: a family registered at run time (a stub here, as a new module would
define one) is a choice of the settings, the CLI and the tab, and is detected from a diffusers folder and a
single file's keys, with no other edit."""

from __future__ import annotations

import argparse
from typing import Any, Iterator, Mapping

import pytest
import torch

from dreamcore.config import MODEL_FAMILIES, TrainConfig, add_config_arguments
from dreamcore.convert.family import UNET_INPUT_CONV, detect_family
from dreamcore.families import (FAMILIES, FAMILY_NAMES, ModelFamily, family_of_cross_attention_width,
                                family_of_folder, family_of_key_layout, family_of_kohya_version, get_family,
                                register_family)

STUB_PROBE = "conditioner.stub_encoder.token_embedding.weight"


class StubFamily(ModelFamily):
    def recognises_folder(self, model_index: Mapping[str, Any], text_encoder_config: Mapping[str, Any],
                          scheduler_config: Mapping[str, Any]) -> bool:
        return model_index.get("_class_name") == "StubDiffusionPipeline"


STUB = StubFamily(name="stub-xl", label="Stub XL", webui_version="STUB", key_layout="stub", assets_name="stub",
                  prediction_type="epsilon", default_resolution=256, pad_tokens=("!",),
                  single_file_probe=STUB_PROBE, text_encoder_widths=(96,), kohya_version="stub_v1",
                  modelspec_architecture="stub-xl-v1")


@pytest.fixture
def stub_registered() -> Iterator[ModelFamily]:
    register_family(STUB)
    try:
        yield STUB
    finally:
        del FAMILIES[STUB.name]


def test_a_registered_family_is_a_choice_of_the_settings_and_the_cli(stub_registered: ModelFamily) -> None:
    assert STUB.name in MODEL_FAMILIES and STUB.name in FAMILY_NAMES
    config = TrainConfig(model_family=STUB.name)
    assert not any(problem.startswith("model_family") for problem in config.problems())
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert parser.parse_args(["--model_family", STUB.name]).model_family == STUB.name


def test_without_registration_the_name_is_refused() -> None:
    assert STUB.name not in MODEL_FAMILIES
    assert any(p.startswith("model_family") for p in TrainConfig(model_family=STUB.name).problems())


def test_a_registered_family_is_detected_from_a_folder_and_from_keys(stub_registered: ModelFamily) -> None:
    # a folder none of the built-in families claims (one text encoder, under text_encoder_2 only)
    index = {"_class_name": "StubDiffusionPipeline", "text_encoder_2": ["transformers", "CLIPTextModel"]}
    assert family_of_folder(index, {"hidden_act": "gelu"}, {}) is STUB
    assert get_family(STUB.name) is STUB
    assert family_of_key_layout("stub") is STUB
    state = {UNET_INPUT_CONV: torch.zeros(8, 4, 3, 3), STUB_PROBE: torch.zeros(10, 96)}
    assert detect_family(state) == "stub"
    assert family_of_kohya_version("stub_v1") is STUB
    assert family_of_cross_attention_width(96) is STUB


def test_a_name_is_registered_once(stub_registered: ModelFamily) -> None:
    with pytest.raises(ValueError, match="'stub-xl' is registered already"):
        register_family(STUB)
