"""Tiny Stable Diffusion models built in code: SD's block layout with a few channels and random weights.

Tests and the demo use them in place of real weights, which never reach this machine. The layout (four
UNet levels, two resnets a level, cross-attention where SD has it, a four-level VAE, a CLIP text encoder
with the real tokenizer) is the real one, so key tables and loading code are exercised as for SD1.5/SD2.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from dreamcore.assets import load_component_config, load_tokenizer
from dreamcore.components import ModelComponents

TINY_RESOLUTION = 64  # pixels; the VAE downsamples by 8, so latents are 8x8


def tiny_component_configs(family: str = "sd1") -> dict[str, dict[str, Any]]:
    """Configs of a tiny model of the given family (the shipped full-size configs, shrunk)."""
    unet = load_component_config(family, "unet")
    unet.update(block_out_channels=[16, 32, 32, 32], norm_num_groups=8, cross_attention_dim=32,
                sample_size=TINY_RESOLUTION // 8,
                attention_head_dim=[2, 2, 2, 2] if family != "sd1" else 2)
    vae = load_component_config(family, "vae")
    vae.update(block_out_channels=[8, 16, 16, 16], norm_num_groups=4, sample_size=TINY_RESOLUTION)
    text_encoder = load_component_config(family, "text_encoder")
    text_encoder.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        projection_dim=32)
    scheduler = load_component_config(family, "scheduler")
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler}


def build_components(configs: dict[str, dict[str, Any]], family: str, seed: int = 0) -> ModelComponents:
    """Instantiate diffusers/transformers modules from component configs with seeded random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(_strip_private(configs["unet"]))
    vae = AutoencoderKL.from_config(_strip_private(configs["vae"]))
    text_config = {k: v for k, v in configs["text_encoder"].items() if k not in ("architectures", "model_type")}
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    scheduler = DDIMScheduler.from_config(_strip_private(configs["scheduler"]))
    return ModelComponents(family, unet, vae, text_encoder, load_tokenizer(family), scheduler, architecture=configs)


def build_tiny_model(family: str = "sd1", seed: int = 0) -> ModelComponents:
    return build_components(tiny_component_configs(family), family, seed)


def save_tiny_model(directory: str | Path, family: str = "sd1", fmt: str = "diffusers", seed: int = 0) -> Path:
    """Write a tiny model as a diffusers folder or a single ``.safetensors`` file; returns its path."""
    model = build_tiny_model(family, seed)
    directory = Path(directory)
    if fmt == "diffusers":
        from dreamcore.models import save_diffusers_folder

        save_diffusers_folder(model, directory)
        return directory
    if fmt in ("safetensors", "ckpt"):
        from dreamcore.convert import save_single_file

        path = directory if directory.suffix in (".safetensors", ".ckpt") else directory / f"tiny-{family}.{fmt}"
        save_single_file(model, path)
        return path
    raise ValueError(f"unknown format {fmt!r}: use 'diffusers', 'safetensors' or 'ckpt'")


def _strip_private(config: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in config.items() if not k.startswith("_")}
