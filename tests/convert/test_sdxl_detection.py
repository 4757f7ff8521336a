"""Telling SDXL files apart from their keys, and refusing what dreamcore cannot train on with the reason."""

from __future__ import annotations

import pytest
import torch

from dreamcore.convert import ModelLoadError, load_single_file
from dreamcore.convert.checkpoint_files import write_safetensors
from dreamcore.convert.sdxl_keys import check_sdxl_base, detect_sdxl_kind, is_sdxl_state_dict
from dreamcore.convert.sdxl_single_file import components_to_sdxl_single_file, sdxl_single_file_to_components
from dreamcore.components import ModelComponents

from tiny_sdxl import build_tiny_sdxl, tiny_sdxl_configs


@pytest.fixture(scope="module")
def tiny() -> ModelComponents:
    return build_tiny_sdxl(seed=5)


@pytest.fixture(scope="module")
def state(tiny) -> dict[str, torch.Tensor]:
    return components_to_sdxl_single_file(tiny)


def refiner_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A refiner's layout: OpenCLIP alone, as embedder 0."""
    out = {k: v for k, v in state.items() if not k.startswith("conditioner.")}
    out.update({k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v
                for k, v in state.items() if k.startswith("conditioner.embedders.1.")})
    return out


def test_base_files_and_fine_tunes_are_recognised(state) -> None:
    assert is_sdxl_state_dict(state)
    assert detect_sdxl_kind(state) == "base"
    check_sdxl_base(state)
    # a fine-tune saved by other trainers: extra keys no pipeline reads are left out, not errors
    fine_tune = {**state, "conditioner.embedders.1.model.logit_scale": torch.tensor(4.6),
                 "model_ema.decay": torch.tensor(0.999)}
    configs = tiny_sdxl_configs()
    assert sdxl_single_file_to_components(fine_tune, configs).family == "sdxl"


def test_only_keys_that_hold_something_are_reported_as_left_out(state, caplog) -> None:
    # the position ids (0..76 by definition) are in SDXL base 1.0 and in every file dreamcore writes
    assert "conditioner.embedders.0.transformer.text_model.embeddings.position_ids" in state
    configs = tiny_sdxl_configs()
    with caplog.at_level("INFO", logger="dreamcore.convert.sdxl_single_file"):
        sdxl_single_file_to_components(state, configs, source="mine.safetensors")
    assert "left out" not in caplog.text
    with caplog.at_level("INFO", logger="dreamcore.convert.sdxl_single_file"):
        sdxl_single_file_to_components({**state, "conditioner.embedders.1.model.logit_scale": torch.tensor(4.6)},
                                       configs, source="theirs.safetensors")
    assert ("theirs.safetensors: left out 1 key no SDXL pipeline reads "
            "(e.g. conditioner.embedders.1.model.logit_scale)") in caplog.text


def test_sd_files_are_not_sdxl() -> None:
    assert not is_sdxl_state_dict({"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(2),
                                   "model.diffusion_model.input_blocks.0.0.weight": torch.ones(2, 4, 3, 3)})


def test_a_refiner_is_refused_with_the_reason(state, tmp_path) -> None:
    refiner = refiner_of(state)
    assert detect_sdxl_kind(refiner) == "refiner"
    path = write_safetensors(tmp_path / "sd_xl_refiner_1.0.safetensors", refiner, {})
    with pytest.raises(ModelLoadError, match=r"sd_xl_refiner_1.0.safetensors: this is an SDXL refiner.*"
                                             r"without CLIP ViT-L.*SDXL base 1.0"):
        load_single_file(path)


@pytest.mark.parametrize("channels, words", [(9, "inpainting"), (8, "8 input channels")])
def test_special_unets_are_refused(state, channels, words) -> None:
    special = {**state, "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(16, channels, 3, 3)}
    with pytest.raises(ModelLoadError, match=words):
        check_sdxl_base(special)


def test_v_prediction_is_refused(state) -> None:
    with pytest.raises(ModelLoadError, match="v-prediction"):
        check_sdxl_base({**state, "v_pred": torch.tensor([])})


def test_a_missing_text_encoder_is_named(state) -> None:
    without_clip_l = {k: v for k, v in state.items() if not k.startswith("conditioner.embedders.0.")}
    with pytest.raises(ModelLoadError, match=r"lacks its CLIP ViT-L \(conditioner.embedders.0.transformer"):
        detect_sdxl_kind(without_clip_l)


@pytest.mark.parametrize("key", ["model.diffusion_model.label_emb.0.4.weight",
                                 "conditioner.embedders.1.model.transformer.resblocks.3.ln_1.weight",
                                 "conditioner.embedders.0.transformer.vision_model.post_layernorm.weight",
                                 "conditioner.embedders.2.model.token_embedding.weight",
                                 "denoiser.sigmas"])
def test_an_unknown_key_is_an_error_naming_it(state, key) -> None:
    configs = tiny_sdxl_configs()
    with pytest.raises(ModelLoadError, match=key.replace(".", r"\.")):
        sdxl_single_file_to_components({**state, key: torch.zeros(2)}, configs, source="x.safetensors")


def test_missing_projection_is_named(state) -> None:
    configs = tiny_sdxl_configs()
    incomplete = {k: v for k, v in state.items() if k != "conditioner.embedders.1.model.text_projection"}
    with pytest.raises(ModelLoadError, match="text_projection is missing"):
        sdxl_single_file_to_components(incomplete, configs)


def test_a_wrong_family_argument_is_named(tiny, tmp_path) -> None:
    from dreamcore.convert import save_single_file

    path = save_single_file(tiny, tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"the family given \(--family, model_family\) says sd1 but the weights are SDXL"):
        load_single_file(path, family="sd1")


def test_sd_components_are_not_written_as_sdxl() -> None:
    from dreamcore.tiny import build_tiny_model

    sd1 = build_tiny_model("sd1")
    with pytest.raises(ValueError, match="needs an SDXL model"):
        components_to_sdxl_single_file(sd1)


def test_full_size_layout_is_what_diffusers_calls_sdxl_base() -> None:
    """The published architecture's keys (shapes only, no weights): diffusers' own detection calls them SDXL
    base, and every key comes back to its component."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    from dreamcore.convert.modules import empty_text_encoder, empty_unet, empty_vae, text_encoder_state_dict
    from dreamcore.convert.sdxl_layout import split_sdxl_single_file_layout, to_sdxl_single_file_layout
    from dreamcore.convert.sdxl_single_file import (empty_projection_text_encoder, projection_text_encoder_state_dict,
                                                    published_sdxl_configs)

    configs = published_sdxl_configs()
    unet, vae = empty_unet(configs["unet"]), empty_vae(configs["vae"])
    text_2 = projection_text_encoder_state_dict(empty_projection_text_encoder(configs["text_encoder_2"]))
    state = to_sdxl_single_file_layout(unet.state_dict(), vae.state_dict(),
                                       text_encoder_state_dict(empty_text_encoder(configs["text_encoder"])), text_2,
                                       configs["unet"], configs["vae"], text_layers_2=32)
    assert infer_diffusers_model_type(state) == "xl_base"
    assert state["conditioner.embedders.1.model.text_projection"].shape == (1280, 1280)
    assert state["model.diffusion_model.label_emb.0.0.weight"].shape == (1280, 2816)
    split = split_sdxl_single_file_layout(state, configs["unet"], configs["vae"], text_layers_2=32)
    assert split.unet.keys() == unet.state_dict().keys() and split.text_encoder_2.keys() == text_2.keys()
