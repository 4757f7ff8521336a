"""SDXL single files: the WebUI key layout, read back exactly, through a diffusers folder and back bit for bit,
the same image as the pipeline it came from; diffusers' own converter reads what dreamcore writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dreamcore.convert import load_single_file, read_state_dict, save_single_file
from dreamcore.convert.sdxl_single_file import components_to_sdxl_single_file, projection_text_encoder_state_dict
from dreamcore.components import ModelComponents

from convert_helpers import assert_same_tensors
from tiny_sdxl import POOLED_WIDTH, TEXT_WIDTHS, build_tiny_sdxl


@pytest.fixture(scope="module")
def tiny() -> ModelComponents:
    return build_tiny_sdxl(seed=3)


def sdxl_module_state(components: ModelComponents) -> dict[str, torch.Tensor]:
    from dreamcore.convert.modules import text_encoder_state_dict

    out = {f"unet.{k}": v for k, v in components.unet.state_dict().items()}
    out.update({f"vae.{k}": v for k, v in components.vae.state_dict().items()})
    out.update({f"text.{k}": v for k, v in text_encoder_state_dict(components.text_encoder).items()})
    out.update({f"text2.{k}": v for k, v in projection_text_encoder_state_dict(components.text_encoder_2).items()})
    return out


def test_the_file_has_the_webui_sdxl_layout(tiny) -> None:
    state = components_to_sdxl_single_file(tiny)
    prefixes = {key.split(".")[0] + "." + key.split(".")[1] for key in state}
    assert prefixes == {"model.diffusion_model", "first_stage_model.encoder", "first_stage_model.decoder",
                        "first_stage_model.quant_conv", "first_stage_model.post_quant_conv", "conditioner.embedders"}
    assert {key.split(".")[2] for key in state if key.startswith("conditioner.")} == {"0", "1"}
    # the added conditioning's MLP: pooled text embedding + six size/crop ids in, time-embedding width out
    first = state["model.diffusion_model.label_emb.0.0.weight"]
    assert first.shape[1] == tiny.unet.config.projection_class_embeddings_input_dim
    assert state["model.diffusion_model.label_emb.0.2.weight"].shape[0] == first.shape[0]
    # CLIP ViT-L kept whole, with its position ids written as the WebUIs' transformers keep them
    ids = state["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"]
    assert ids.dtype == torch.int64 and torch.equal(ids, torch.arange(77).unsqueeze(0))
    # OpenCLIP ViT-bigG: q, k, v fused, the projection as open_clip's [width, projection] matrix
    fused = state["conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight"]
    assert fused.shape == (3 * TEXT_WIDTHS[1], TEXT_WIDTHS[1])
    q = tiny.text_encoder_2.state_dict()["text_model.encoder.layers.2.self_attn.q_proj.weight"]
    assert torch.equal(fused[:TEXT_WIDTHS[1]], q)
    projection = state["conditioner.embedders.1.model.text_projection"]
    assert projection.shape == (TEXT_WIDTHS[1], POOLED_WIDTH)
    assert torch.equal(projection, tiny.text_encoder_2.text_projection.weight.t())
    # the second resnet of the second level, attention and its 2 transformer blocks at input_blocks.5
    assert "model.diffusion_model.input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight" in state
    assert "model.diffusion_model.input_blocks.7.1.transformer_blocks.1.ff.net.2.bias" in state
    assert not any(key.startswith("model.diffusion_model.input_blocks.1.1.") for key in state)  # no attention


def test_diffusers_own_converter_reads_our_file_to_the_same_weights(tiny) -> None:
    """An independent reading of the layout: diffusers' single-file converter functions."""
    from diffusers.loaders import single_file_utils as diffusers_single_file

    state = components_to_sdxl_single_file(tiny)
    unet = diffusers_single_file.convert_ldm_unet_checkpoint(dict(state), dict(tiny.unet.config))
    vae = diffusers_single_file.convert_ldm_vae_checkpoint(dict(state), dict(tiny.vae.config))
    text_2 = diffusers_single_file.convert_open_clip_checkpoint(tiny.text_encoder_2, dict(state),
                                                                prefix="conditioner.embedders.1.model.")
    assert_same_tensors(unet, tiny.unet.state_dict())
    assert_same_tensors(vae, tiny.vae.state_dict())
    assert_same_tensors(text_2, projection_text_encoder_state_dict(tiny.text_encoder_2))


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_the_file_reloads_every_weight_exactly(suffix, tiny, tmp_path) -> None:
    reloaded = load_single_file(save_single_file(tiny, tmp_path / f"tiny-sdxl{suffix}"))
    assert reloaded.family == "sdxl"
    assert reloaded.architecture is not None  # the tiny configs travel in the file
    assert_same_tensors(sdxl_module_state(tiny), sdxl_module_state(reloaded))
    assert type(reloaded.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert reloaded.tokenizer.pad_token == "<|endoftext|>" and reloaded.tokenizer_2.pad_token == "!"
    assert reloaded.scheduler.config.prediction_type == "epsilon"


def _save_folder(components: ModelComponents, folder: Path) -> Path:
    from diffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline(vae=components.vae, text_encoder=components.text_encoder,
                              text_encoder_2=components.text_encoder_2, tokenizer=components.tokenizer,
                              tokenizer_2=components.tokenizer_2, unet=components.unet,
                              scheduler=components.scheduler).save_pretrained(str(folder), safe_serialization=True)
    return folder


def _load_folder(folder: Path, template: ModelComponents) -> ModelComponents:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return ModelComponents(
        "sdxl", UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
        AutoencoderKL.from_pretrained(folder, subfolder="vae"),
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder"), template.tokenizer, template.scheduler,
        architecture=template.architecture,
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2"),
        tokenizer_2=template.tokenizer_2)


@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
def test_single_to_diffusers_folder_to_single_is_bit_for_bit(half, tiny, tmp_path) -> None:
    first = save_single_file(tiny, tmp_path / "first.safetensors", half=half)
    loaded = load_single_file(first)
    folder = _save_folder(loaded, tmp_path / "diffusers")
    second = save_single_file(_load_folder(folder, loaded), tmp_path / "second.safetensors", half=half)
    first_tensors, first_metadata = read_state_dict(first)
    second_tensors, second_metadata = read_state_dict(second)
    assert_same_tensors(first_tensors, second_tensors)
    expected = torch.float16 if half else torch.float32
    assert {t.dtype for t in first_tensors.values() if t.is_floating_point()} == {expected}
    assert first_metadata["dreamcore.family"] == second_metadata["dreamcore.family"] == "sdxl"
    assert first_metadata["dreamcore.architecture"] == second_metadata["dreamcore.architecture"]


def _render(components: ModelComponents) -> np.ndarray:
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline(
        vae=components.vae, text_encoder=components.text_encoder, text_encoder_2=components.text_encoder_2,
        tokenizer=components.tokenizer, tokenizer_2=components.tokenizer_2, unet=components.unet,
        scheduler=DDIMScheduler.from_config(components.scheduler.config))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline("photo of ukj person", negative_prompt="blurry", num_inference_steps=2, guidance_scale=5.0,
                    height=64, width=64, generator=torch.Generator().manual_seed(7), output_type="np").images[0]


def test_exported_file_renders_the_same_image_as_its_pipeline(tiny, tmp_path) -> None:
    expected = _render(tiny)
    assert expected.std() > 0.01  # structure, not a constant image
    exact = load_single_file(save_single_file(tiny, tmp_path / "model.safetensors"))
    np.testing.assert_allclose(_render(exact), expected, atol=1e-6, rtol=0)
