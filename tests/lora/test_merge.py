"""Fusing a LoRA into a model (generate --lora, merge-lora): a LoRA of another model is refused with its file
named and what to use instead, before diffusers' loader meets layers the model lacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dreamcore.components import ModelComponents
from dreamcore.lora.export import lora_weights_from_models
from dreamcore.lora.files import LoraWeights, kohya_metadata, read_lora, write_kohya_file, write_peft_folder
from dreamcore.lora.kohya import LoraFormatError
from dreamcore.lora.merge import apply_lora, unfit_layers
from dreamcore.tiny import build_tiny_model

from lora_adapters import with_adapters

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def adapted(family: str, seed: int = 0) -> ModelComponents:
    """A tiny model of ``family`` with LoRA adapters on its UNet and text encoders, lora_B not zero."""
    return with_adapters(build_tiny_model(family, seed=seed), UNET_TARGETS, TEXT_TARGETS, seed=seed)


@pytest.fixture(scope="module")
def sd1_lora() -> LoraWeights:
    return lora_weights_from_models(adapted("sd1"))


@pytest.fixture(scope="module")
def sdxl_lora() -> LoraWeights:
    return lora_weights_from_models(adapted("sdxl", seed=1))


def test_a_lora_of_its_own_model_fits_and_changes_the_weights(sdxl_lora, tmp_path: Path) -> None:
    base = build_tiny_model("sdxl", seed=1)
    assert unfit_layers(base, sdxl_lora) == []
    before = base.unet.state_dict()["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"].clone()
    path = write_kohya_file(tmp_path / "own.safetensors", sdxl_lora, kohya_metadata(sdxl_lora, "base", "ukj"))
    apply_lora(base, path)
    after = base.unet.state_dict()["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"]
    assert not torch.equal(before, after)


def test_a_layer_of_another_size_or_missing_is_named(sdxl_lora) -> None:
    parts = {part: dict(state) for part, state in sdxl_lora.parts.items()}
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
    parts["unet"][key] = torch.zeros(2, parts["unet"][key].shape[1] + 8)
    parts["unet"]["down_blocks.0.attentions.0.proj_in.lora_A.weight"] = torch.zeros(2, 16)
    parts["unet"]["down_blocks.0.attentions.0.proj_in.lora_B.weight"] = torch.zeros(16, 2)
    changed = LoraWeights(parts, sdxl_lora.alphas, "sdxl")
    assert unfit_layers(build_tiny_model("sdxl"), changed) == [
        "unet.down_blocks.0.attentions.0.proj_in", "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"]


def test_a_lora_of_another_family_is_refused_by_name(sd1_lora, tmp_path: Path) -> None:
    path = write_kohya_file(tmp_path / "sd1-face.safetensors", sd1_lora, kohya_metadata(sd1_lora, "v1-5", "ukj"))
    with pytest.raises(LoraFormatError, match=r"sd1-face.safetensors is a LoRA for SD1.x models but the model is "
                                              r"SDXL; use it with an SD1.x model"):
        apply_lora(build_tiny_model("sdxl"), path)


def test_a_lora_whose_family_is_not_told_is_refused_by_its_layers(sd1_lora, tmp_path: Path) -> None:
    # The bare weights file of a diffusers LoRA folder has no family in it, and a tiny model's widths name none:
    # it is read as a LoRA of the model it is given to.
    weights_file = write_peft_folder(tmp_path / "peft", sd1_lora) / "pytorch_lora_weights.safetensors"
    assert read_lora(weights_file, default_family="sdxl").family == "sdxl"
    model = build_tiny_model("sdxl")
    untouched = {k: v.clone() for k, v in model.unet.state_dict().items()}
    with pytest.raises(LoraFormatError, match=r"pytorch_lora_weights.safetensors: \d+ of its layers are not in this "
                                              r"SDXL model .*use it with the model it was trained on"):
        apply_lora(model, weights_file)
    assert all(np.array_equal(v.numpy(), untouched[k].numpy()) for k, v in model.unet.state_dict().items())
