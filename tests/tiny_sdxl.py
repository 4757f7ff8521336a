"""A tiny SDXL base built in code for the conversion and LoRA tests: SDXL's block layout (three UNet levels, the
first without attention, two resnets a level, several transformer blocks where SDXL has ten, the "text_time"
added embedding; CLIP ViT-L and OpenCLIP-bigG-shaped text encoders, the second with its projection; a
four-level VAE), a few channels each, seeded random weights."""

from __future__ import annotations

from typing import Any

import torch

from dreamcore.assets import load_component_config, load_sdxl_tokenizers
from dreamcore.components import ModelComponents

RESOLUTION = 64  # pixels; latents are 8x8
TEXT_WIDTHS = (16, 24)  # the two text encoders' hidden sizes; the UNet attends to both side by side
POOLED_WIDTH = 16  # text encoder 2's projection: the pooled embedding
TIME_ID_WIDTH = 8  # each of the six size/crop ids


def tiny_sdxl_configs() -> dict[str, dict[str, Any]]:
    configs = {name: load_component_config("sdxl", name)
               for name in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")}
    configs["unet"].update(block_out_channels=[16, 16, 32], norm_num_groups=8, attention_head_dim=[2, 2, 4],
                           transformer_layers_per_block=[1, 1, 2], cross_attention_dim=sum(TEXT_WIDTHS),
                           addition_time_embed_dim=TIME_ID_WIDTH,
                           projection_class_embeddings_input_dim=POOLED_WIDTH + 6 * TIME_ID_WIDTH,
                           sample_size=RESOLUTION // 8)
    configs["vae"].update(block_out_channels=[8, 16, 16, 16], norm_num_groups=4, sample_size=RESOLUTION)
    configs["text_encoder"].update(hidden_size=TEXT_WIDTHS[0], intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, projection_dim=TEXT_WIDTHS[0])
    configs["text_encoder_2"].update(hidden_size=TEXT_WIDTHS[1], intermediate_size=48, num_hidden_layers=3,
                                     num_attention_heads=2, projection_dim=POOLED_WIDTH)
    return configs


def build_tiny_sdxl(seed: int = 0) -> ModelComponents:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = tiny_sdxl_configs()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(configs["unet"])
    vae = AutoencoderKL.from_config(configs["vae"])
    text = [{k: v for k, v in configs[name].items() if k not in ("architectures", "model_type", "torch_dtype")}
            for name in ("text_encoder", "text_encoder_2")]
    text_encoder = CLIPTextModel(CLIPTextConfig(**text[0])).eval()
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text[1])).eval()
    # Random non-zero biases everywhere (the libraries start most at zero), so a misplaced one shows.
    with torch.no_grad():
        for module in (unet, vae, text_encoder, text_encoder_2):
            for name, parameter in module.named_parameters():
                if name.endswith("bias"):
                    parameter.normal_(0, 0.02)
    scheduler = DDPMScheduler.from_config(configs["scheduler"])
    tokenizer, tokenizer_2 = load_sdxl_tokenizers()
    return ModelComponents("sdxl", unet.eval(), vae.eval(), text_encoder, tokenizer, scheduler, architecture=configs,
                           text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
