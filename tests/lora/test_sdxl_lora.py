"""SDXL LoRAs in kohya's layout: the names the WebUIs match (lora_unet_ by the LDM layout, lora_te1_, lora_te2_),
exact both ways, in files with the metadata the WebUIs read, and loaded by diffusers to the adapted model's image.

The oracle restates, from the host facts (the WebUI's built-in Lora extension, networks.py), how the WebUI turns
an SDXL kohya name into one of its module names: ``lora_unet_*`` of diffusers' names goes through its diffusers
-> LDM renaming, any other ``lora_unet_*`` is read as an LDM name (``diffusion_model_*``); ``lora_te1_text_model_*``
is embedder 0's CLIP (``0_transformer_text_model_*``); ``lora_te2_`` names go to embedder 1's OpenCLIP
(``1_model_transformer_resblocks_N_*``, q, k and v onto the fused attention). Its module names come from
dreamcore's SDXL single file, what the WebUI loads.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamcore.components import ModelComponents
from dreamcore.convert.sdxl_single_file import components_to_sdxl_single_file
from dreamcore.lora.export import lora_weights_from_models
from dreamcore.lora.files import (LoraWeights, convert_lora, kohya_metadata, looks_like_lora, read_lora,
                                  write_kohya_file, write_peft_folder)
from dreamcore.lora.kohya import LoraFormatError, kohya_to_peft, peft_to_kohya

from lora_adapters import with_adapters
from tiny_sdxl import build_tiny_sdxl

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def sdxl_with_adapters(model: ModelComponents, seed: int = 0) -> ModelComponents:
    """PEFT LoRA adapters on the UNet and both text encoders, as a trained run leaves them (lora_B not zero)."""
    return with_adapters(model, UNET_TARGETS, TEXT_TARGETS, unet_alpha=4, seed=seed)


@pytest.fixture(scope="module")
def adapted() -> ModelComponents:
    return sdxl_with_adapters(build_tiny_sdxl(seed=11))


@pytest.fixture(scope="module")
def sdxl_lora(adapted) -> LoraWeights:
    return lora_weights_from_models(adapted)


def webui_module_name(kohya: str, modules: set[str]) -> str | None:
    """The WebUI layer an SDXL kohya LoRA name applies to (None: it would report the key as unmatched)."""
    name = None
    if m := re.fullmatch(r"lora_unet_down_blocks_(\d+)_attentions_(\d+)_(.+)", kohya):
        name = f"diffusion_model_input_blocks_{1 + 3 * int(m[1]) + int(m[2])}_1_{m[3]}"
    elif m := re.fullmatch(r"lora_unet_mid_block_attentions_(\d+)_(.+)", kohya):
        name = f"diffusion_model_middle_block_1_{m[2]}"
    elif m := re.fullmatch(r"lora_unet_up_blocks_(\d+)_attentions_(\d+)_(.+)", kohya):
        name = f"diffusion_model_output_blocks_{3 * int(m[1]) + int(m[2])}_1_{m[3]}"
    elif kohya.startswith("lora_unet_"):
        name = "diffusion_model_" + kohya[len("lora_unet_"):]
    elif kohya.startswith("lora_te1_text_model_"):
        name = "0_transformer_text_model_" + kohya[len("lora_te1_text_model_"):]
    elif m := re.fullmatch(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", kohya):
        rest = m[2].replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj").replace("self_attn", "attn")
        name = f"1_model_transformer_resblocks_{m[1]}_{rest}"
    if name is None:
        return None
    if name in modules:
        return name
    fused = re.fullmatch(r"(.*)_[qkv]_proj", name)
    return fused[1] if fused and fused[1] in modules else None


def webui_layers(components: ModelComponents) -> dict[str, torch.Tensor]:
    """Module name (as the WebUI flattens an SDXL model's) -> that layer's weight, from the single file."""
    layers = {}
    for key, tensor in components_to_sdxl_single_file(components).items():
        if key.startswith("model.diffusion_model.") and key.endswith(".weight"):
            layers[key[len("model."):-len(".weight")].replace(".", "_")] = tensor
        elif key.startswith("conditioner.embedders.") and key.endswith(("weight", "in_proj_weight")):
            embedder, path = key[len("conditioner.embedders."):].split(".", 1)
            layers[f"{embedder}_" + path.rsplit(".", 1)[0].replace(".", "_")] = tensor
    return layers


def test_names_are_kohya_sdxl_ones(sdxl_lora) -> None:
    assert set(sdxl_lora.parts) == {"unet", "text_encoder", "text_encoder_2"}
    state = peft_to_kohya(sdxl_lora.parts, sdxl_lora.alphas, "sdxl")
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in state
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in state
    assert "lora_unet_output_blocks_0_1_proj_in.alpha" in state
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in state
    assert "lora_te2_text_model_encoder_layers_2_mlp_fc1.lora_up.weight" in state
    assert not any(key.startswith("lora_te_") or "down_blocks" in key for key in state)
    assert state["lora_te2_text_model_encoder_layers_0_mlp_fc2.alpha"].ndim == 0
    assert float(state["lora_unet_input_blocks_4_1_proj_out.alpha"]) == 4.0


def test_every_key_lands_on_a_webui_layer_of_the_right_shape(sdxl_lora) -> None:
    layers = webui_layers(build_tiny_sdxl(seed=11))
    state = peft_to_kohya(sdxl_lora.parts, sdxl_lora.alphas, "sdxl")
    names = {key.split(".", 1)[0] for key in state}
    assert {name.split("_")[1] for name in names} == {"unet", "te1", "te2"}
    fused_parts = defaultdict(set)
    for name in names:
        target = webui_module_name(name, set(layers))
        assert target is not None, f"the WebUI would not match {name}"
        weight = layers[target]
        down, up = state[name + ".lora_down.weight"], state[name + ".lora_up.weight"]
        if target.endswith("_attn") and name.startswith("lora_te2_"):
            fused_parts[target].add(name.rsplit("_", 2)[-2])
            assert up.shape[0] * 3 == weight.shape[0] and down.shape[1] == weight.shape[1]
        else:
            assert up.shape[0] == weight.shape[0] and down.shape[1] == weight.shape[1], name
    assert fused_parts  # the second encoder's q, k, v went to OpenCLIP's fused attention, all three and out
    for target, parts in fused_parts.items():
        assert parts == {"q", "k", "v"}, target
        assert target + "_out_proj" in layers


def test_kohya_and_peft_convert_both_ways_exactly(sdxl_lora) -> None:
    state = peft_to_kohya(sdxl_lora.parts, sdxl_lora.alphas, "sdxl")
    parts, alphas = kohya_to_peft(state, "sdxl")
    assert alphas == sdxl_lora.alphas
    assert parts.keys() == sdxl_lora.parts.keys()
    for part, weights in sdxl_lora.parts.items():
        assert parts[part].keys() == weights.keys()
        assert all(torch.equal(parts[part][key], weights[key]) for key in weights)


def test_diffusers_named_unet_keys_read_as_the_same_modules(sdxl_lora) -> None:
    """Some tools name SDXL UNet LoRAs by diffusers' modules (lora_unet_down_blocks_...); they read the same."""
    unet = {key: value for key, value in peft_to_kohya({"unet": sdxl_lora.parts["unet"]}, sdxl_lora.alphas).items()}
    assert any(key.startswith("lora_unet_down_blocks_1_attentions_0_") for key in unet)
    parts, _ = kohya_to_peft(unet, "sdxl")
    assert parts["unet"].keys() == sdxl_lora.parts["unet"].keys()


def test_a_lora_of_another_family_is_refused(sdxl_lora) -> None:
    state = peft_to_kohya(sdxl_lora.parts, sdxl_lora.alphas, "sdxl")
    with pytest.raises(LoraFormatError, match=r"it is an SDXL LoRA \(lora_te1_/lora_te2_\)"):
        kohya_to_peft(state, "sd1")
    sd1_style = {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(2, 16)}
    with pytest.raises(LoraFormatError, match=r"it is an SD1/SD2 LoRA \(lora_te_\)"):
        kohya_to_peft(sd1_style, "sdxl")
    with pytest.raises(LoraFormatError, match="a sd1 model has no text_encoder_2"):
        peft_to_kohya(sdxl_lora.parts, sdxl_lora.alphas, "sd1")


def test_kohya_file_carries_what_the_webui_reads_and_reads_back(sdxl_lora, tmp_path: Path) -> None:
    metadata = kohya_metadata(sdxl_lora, "sd_xl_base_1.0.safetensors", "ukj person")
    assert metadata["ss_base_model_version"].startswith("sdxl_")  # how the WebUI lists it as an SDXL LoRA
    assert metadata["ss_v2"] == "False" and metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert metadata["ss_network_args"] == '{"text_encoder": true}'
    path = write_kohya_file(tmp_path / "ukj.safetensors", sdxl_lora, metadata, half=False)
    assert looks_like_lora(path)
    back = read_lora(path)
    assert back.family == "sdxl" and back.alphas == sdxl_lora.alphas
    assert all(torch.equal(back.parts[p][k], v) for p, w in sdxl_lora.parts.items() for k, v in w.items())


def test_family_is_told_from_the_keys_without_metadata(sdxl_lora, tmp_path: Path) -> None:
    from dreamcore.convert.checkpoint_files import write_safetensors

    state = peft_to_kohya(sdxl_lora.parts, sdxl_lora.alphas, "sdxl")
    path = write_safetensors(tmp_path / "bare.safetensors", state, {})
    assert read_lora(path).family == "sdxl"
    refiner = write_safetensors(tmp_path / "refiner.safetensors", state, {"ss_base_model_version": "sdxl_refiner_v1-0"})
    with pytest.raises(LoraFormatError, match=r"refiner.safetensors: a LoRA for sdxl_refiner_v1-0 .*not of the refiner: "
                                              r"use one trained on SDXL base 1.0"):
        read_lora(refiner)


def test_diffusers_folder_and_back(sdxl_lora, tmp_path: Path) -> None:
    folder = write_peft_folder(tmp_path / "peft", sdxl_lora)
    from safetensors.torch import load_file

    assert {key.split(".")[0] for key in load_file(str(folder / "pytorch_lora_weights.safetensors"))} == {
        "unet", "text_encoder", "text_encoder_2"}
    from_folder = read_lora(folder)
    assert from_folder.family == "sdxl" and from_folder.alphas == sdxl_lora.alphas
    again = convert_lora(folder, tmp_path / "again.safetensors", half=False)
    assert read_lora(again).alphas == sdxl_lora.alphas


def _pipeline(components: ModelComponents):
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline(
        vae=components.vae, text_encoder=components.text_encoder, text_encoder_2=components.text_encoder_2,
        tokenizer=components.tokenizer, tokenizer_2=components.tokenizer_2, unet=components.unet,
        scheduler=DDIMScheduler.from_config(components.scheduler.config))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _render(pipeline) -> np.ndarray:
    return pipeline("photo of ukj person", num_inference_steps=2, guidance_scale=5.0, height=64, width=64,
                    generator=torch.Generator().manual_seed(3), output_type="np").images[0]


def test_diffusers_loads_the_kohya_file_to_the_adapted_models_image(adapted, sdxl_lora, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    expected = _render(_pipeline(adapted))
    base = _pipeline(build_tiny_sdxl(seed=11))
    untouched = _render(base)
    assert np.abs(untouched - expected).max() > 0.01  # the LoRA changes the picture
    path = write_kohya_file(tmp_path / "ukj.safetensors", sdxl_lora,
                            kohya_metadata(sdxl_lora, "base", "ukj person"), half=False)
    base.load_lora_weights(load_file(str(path)))  # diffusers' own reader of kohya SDXL LoRAs
    np.testing.assert_allclose(_render(base), expected, atol=1e-4, rtol=0)
