"""Tiny Stable Diffusion models built in code: SD's block layout with a few channels and random weights.

Tests and the demo use them in place of real weights, which never reach this machine. The layout (four
UNet levels, two resnets a level, cross-attention where SD has it, a four-level VAE, a CLIP text encoder
with the real tokenizer) is the real one, so key tables and loading code are exercised as for SD1.5/SD2.

A tiny SDXL has SDXL's layout in the same way (``tiny_sdxl_configs``): three UNet levels, the first without
attention, several transformer blocks where SDXL has ten, the "text_time" added embedding; CLIP ViT-L- and
OpenCLIP-bigG-shaped text encoders, the second with its projection; a four-level VAE.

The WebUIs cannot load those: their model code builds every GroupNorm with 32 groups and SD1's text encoder
as the full CLIP ViT-L/14 from its own config. ``webui_tiny_component_configs`` is a small SD1 model they
can load, with a ``.yaml`` beside it describing its UNet and VAE (``save_tiny_model(..., webui=True)``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from dreamcore.assets import load_component_config, load_tokenizer
from dreamcore.components import ModelComponents
from dreamcore.families.sd1 import SD1
from dreamcore.families.sdxl import SDXL

TINY_RESOLUTION = 64  # pixels; the VAE downsamples by 8, so latents are 8x8
SDXL_TEXT_WIDTHS = (16, 24)  # the tiny SDXL's two text encoders; its UNet attends to both side by side
SDXL_POOLED_WIDTH = 16  # its text encoder 2's projection: the pooled embedding
SDXL_TIME_ID_WIDTH = 8  # each of the six size/crop ids


def tiny_component_configs(family: str = SD1.name) -> dict[str, dict[str, Any]]:
    """Configs of a tiny model of the given family (the shipped full-size configs, shrunk)."""
    if family == SDXL.name:
        return tiny_sdxl_configs()
    unet = load_component_config(family, "unet")
    unet.update(block_out_channels=[16, 32, 32, 32], norm_num_groups=8, cross_attention_dim=32,
                sample_size=TINY_RESOLUTION // 8,
                attention_head_dim=[2, 2, 2, 2] if family != SD1.name else 2)
    vae = load_component_config(family, "vae")
    vae.update(block_out_channels=[8, 16, 16, 16], norm_num_groups=4, sample_size=TINY_RESOLUTION)
    text_encoder = load_component_config(family, "text_encoder")
    text_encoder.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        projection_dim=32)
    scheduler = load_component_config(family, "scheduler")
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler}


def tiny_sdxl_configs() -> dict[str, dict[str, Any]]:
    """Configs of a tiny SDXL base: the shipped SDXL configs with a few channels each."""
    configs = {name: load_component_config(SDXL.name, name)
               for name in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")}
    configs["unet"].update(block_out_channels=[16, 16, 32], norm_num_groups=8, attention_head_dim=[2, 2, 4],
                           transformer_layers_per_block=[1, 1, 2], cross_attention_dim=sum(SDXL_TEXT_WIDTHS),
                           addition_time_embed_dim=SDXL_TIME_ID_WIDTH,
                           projection_class_embeddings_input_dim=SDXL_POOLED_WIDTH + 6 * SDXL_TIME_ID_WIDTH,
                           sample_size=TINY_RESOLUTION // 8)
    configs["vae"].update(block_out_channels=[8, 16, 16, 16], norm_num_groups=4, sample_size=TINY_RESOLUTION)
    configs["text_encoder"].update(hidden_size=SDXL_TEXT_WIDTHS[0], intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, projection_dim=SDXL_TEXT_WIDTHS[0])
    configs["text_encoder_2"].update(hidden_size=SDXL_TEXT_WIDTHS[1], intermediate_size=48, num_hidden_layers=3,
                                     num_attention_heads=2, projection_dim=SDXL_POOLED_WIDTH)
    return configs


def webui_tiny_component_configs() -> dict[str, dict[str, Any]]:
    """An SD1 model the WebUIs load: UNet and VAE as small as their model code allows (every channel count 32,
    GroupNorm(32)), the full-size CLIP ViT-L/14 text encoder they always build for SD1 (random weights)."""
    unet = load_component_config(SD1.name, "unet")
    # Two levels, cross-attention on the first only, one resnet a level: the smallest UNet with a down- and an
    # up-sampler and both kinds of block. Two heads of 16 channels.
    unet.update(block_out_channels=[32, 32], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1, norm_num_groups=32,
                attention_head_dim=2, sample_size=TINY_RESOLUTION // 8)
    vae = load_component_config(SD1.name, "vae")
    # Four levels as in SD: the WebUIs take latents as 1/8 of the image size.
    vae.update(block_out_channels=[32, 32, 32, 32], layers_per_block=1, norm_num_groups=32,
               sample_size=TINY_RESOLUTION)
    return {"unet": unet, "vae": vae, "text_encoder": load_component_config(SD1.name, "text_encoder"),
            "scheduler": load_component_config(SD1.name, "scheduler")}


def webui_original_config_yaml(configs: dict[str, dict[str, Any]]) -> str:
    """The ``.yaml`` the WebUIs build the tiny SD1 model from (their default SD1 config has SD's sizes)."""
    from dreamcore.convert.original_config import original_config, original_config_yaml

    return original_config_yaml(original_config(SD1.name, configs["unet"], configs["vae"], configs["scheduler"]))


def build_components(configs: dict[str, dict[str, Any]], family: str, seed: int = 0) -> ModelComponents:
    """Instantiate diffusers/transformers modules from component configs with seeded random weights."""
    if family == SDXL.name:
        return build_tiny_sdxl(configs, seed)
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(_strip_private(configs["unet"]))
    vae = AutoencoderKL.from_config(_strip_private(configs["vae"]))
    text_config = {k: v for k, v in configs["text_encoder"].items() if k not in ("architectures", "model_type")}
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    scheduler = DDIMScheduler.from_config(_strip_private(configs["scheduler"]))
    return ModelComponents(family, unet, vae, text_encoder, load_tokenizer(family), scheduler, architecture=configs)


def build_tiny_sdxl(configs: dict[str, dict[str, Any]] | None = None, seed: int = 0) -> ModelComponents:
    """A tiny SDXL base (``tiny_sdxl_configs`` unless ``configs``) with seeded random weights, every bias
    non-zero too (the libraries start most at zero), so that a misplaced one shows in conversion tests."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from dreamcore.assets import load_sdxl_tokenizers

    configs = configs or tiny_sdxl_configs()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(_strip_private(configs["unet"]))
    vae = AutoencoderKL.from_config(_strip_private(configs["vae"]))
    text = [{k: v for k, v in configs[name].items() if k not in ("architectures", "model_type", "torch_dtype")}
            for name in ("text_encoder", "text_encoder_2")]
    text_encoder = CLIPTextModel(CLIPTextConfig(**text[0])).eval()
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text[1])).eval()
    with torch.no_grad():
        for module in (unet, vae, text_encoder, text_encoder_2):
            for name, parameter in module.named_parameters():
                if name.endswith("bias"):
                    parameter.normal_(0, 0.02)
    scheduler = DDPMScheduler.from_config(_strip_private(configs["scheduler"]))
    tokenizer, tokenizer_2 = load_sdxl_tokenizers()
    return ModelComponents(SDXL.name, unet.eval(), vae.eval(), text_encoder, tokenizer, scheduler, architecture=configs,
                           text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)


def build_tiny_model(family: str = SD1.name, seed: int = 0, webui: bool = False) -> ModelComponents:
    """A tiny model; ``webui``: the SD1 one the WebUIs load, carrying its ``.yaml`` text."""
    if not webui:
        return build_components(tiny_component_configs(family), family, seed)
    if family != SD1.name:
        raise ValueError(f"a tiny model for the WebUIs is SD1 only (got family {family!r})")
    configs = webui_tiny_component_configs()
    model = build_components(configs, family, seed)
    model.original_config_text = webui_original_config_yaml(configs)
    return model


def save_tiny_model(directory: str | Path, family: str = SD1.name, fmt: str = "diffusers", seed: int = 0,
                    webui: bool = False) -> Path:
    """Write a tiny model as a diffusers folder or a single ``.safetensors`` file; returns its path.

    ``webui``: the SD1 model the WebUIs load, as a single file (fp16: its text encoder is full-size) with its
    ``.yaml`` beside it.
    """
    if webui and fmt == "diffusers":
        raise ValueError("a tiny model for the WebUIs is a single file: use format 'safetensors' or 'ckpt'")
    model = build_tiny_model(family, seed, webui=webui)
    directory = Path(directory)
    if fmt == "diffusers":
        from dreamcore.models import save_diffusers_folder

        save_diffusers_folder(model, directory)
        return directory
    if fmt in ("safetensors", "ckpt"):
        from dreamcore.convert import save_single_file

        name = f"tiny-{family}-webui" if webui else f"tiny-{family}"
        path = directory if directory.suffix in (".safetensors", ".ckpt") else directory / f"{name}.{fmt}"
        save_single_file(model, path, half=webui)
        return path
    raise ValueError(f"unknown format {fmt!r}: use 'diffusers', 'safetensors' or 'ckpt'")


def _strip_private(config: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in config.items() if not k.startswith("_")}
