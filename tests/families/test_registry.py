"""The model-family registry: every family is complete, detection picks the right one, and nothing outside
the registry needs to know a family's name to load, tokenize or condition."""

from __future__ import annotations

import json

import pytest
import torch

from dreamcore.config import MODEL_FAMILIES, TrainConfig
from dreamcore.families import (FAMILIES, FAMILY_NAMES, UnknownFamilyError, family_of_folder, family_of_key_layout,
                                get_family, key_layout_probes)
from dreamcore.models import load_base_model, save_diffusers_folder
from dreamcore.tiny import build_tiny_model


def test_config_choices_come_from_the_registry() -> None:
    assert MODEL_FAMILIES == ("auto", *FAMILY_NAMES)
    assert TrainConfig(model_family=FAMILY_NAMES[-1]).model_family == FAMILY_NAMES[-1]


def test_unknown_family_is_named_with_the_known_ones() -> None:
    with pytest.raises(UnknownFamilyError, match="'sd9' is unknown; use one of sd1, sd2"):
        get_family("sd9")


@pytest.mark.parametrize("name", ["sd1", "sd2", "sd2-v"])
def test_each_family_is_self_consistent(name: str) -> None:
    family = get_family(name)
    assert len(family.text_encoder_names) == len(family.tokenizer_names) == len(family.text_encoder_classes) \
        == len(family.pad_tokens)
    assert family.prediction_type in ("epsilon", "v_prediction")
    assert family.default_resolution % 8 == 0
    assert key_layout_probes()[family.key_layout] == family.single_file_probe
    assert family_of_key_layout(family.key_layout, family.prediction_type) is family
    tokenizer = family.shipped_tokenizer()
    assert tokenizer.pad_token == family.pad_tokens[0]
    assert family.shipped_config("scheduler")["prediction_type"] == family.prediction_type


@pytest.mark.parametrize("name", ["sd1", "sd2", "sd2-v"])
def test_folder_detection_matches_what_the_folder_holds(name: str, tmp_path) -> None:
    folder = save_diffusers_folder(build_tiny_model(name), tmp_path / name)
    configs = [json.loads((folder / part).read_text()) for part in
               ("model_index.json", "text_encoder/config.json", "scheduler/scheduler_config.json")]
    assert family_of_folder(*configs) is get_family(name)
    assert load_base_model(str(folder)).family == name


def test_sd2_and_sd2_v_share_weights_but_not_sd1() -> None:
    sd1, sd2, sd2_v = (get_family(n) for n in ("sd1", "sd2", "sd2-v"))
    assert sd2.same_weights_as(sd2_v) and not sd1.same_weights_as(sd2)


def test_conditioning_of_sd1_is_the_text_encoders_last_hidden_state() -> None:
    model = build_tiny_model("sd1")
    family = get_family(model.family)
    (ids,) = family.token_ids(model, ["photo of sks person", "photo"], None)
    assert ids.shape == (2, model.tokenizer.model_max_length)
    with torch.no_grad():
        encoded = family.encode([model.text_encoder], [ids])
        conditioning = family.unet_conditioning(encoded, 64)
        expected = model.text_encoder(ids)[0]
    assert torch.equal(conditioning.encoder_hidden_states, expected)
    assert conditioning.unet_kwargs() == {"encoder_hidden_states": conditioning.encoder_hidden_states}


def test_every_registered_family_has_a_distinct_name() -> None:
    assert len(set(FAMILIES)) == len(FAMILIES) and list(FAMILIES) == list(FAMILY_NAMES)
