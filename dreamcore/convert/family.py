"""Which Stable Diffusion a single file holds, told from its keys the way the WebUIs tell it.

SD1 keeps its text encoder under ``cond_stage_model.transformer.``, SD2 under ``cond_stage_model.model.``
(OpenCLIP), SDXL under ``conditioner.embedders.``. Keys cannot tell SD2's epsilon models from its
v-prediction (768-v) ones: a ``.yaml`` beside the file, our metadata, or a test forward pass (what the
WebUI does) decides that.
"""

from __future__ import annotations

from typing import Mapping

import torch

from dreamcore.convert.errors import ModelLoadError
from dreamcore.convert.text_keys import SD1_TEXT_PREFIX, SD2_TEXT_PREFIX
from dreamcore.convert.unet_keys import UNET_PREFIX
from dreamcore.families.registry import key_layout_probes

UNET_INPUT_CONV = UNET_PREFIX + "input_blocks.0.0.weight"
VAE_ONLY_PROBE = "decoder.conv_in.weight"


def detect_family(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The key layout of a single file's weights (a ``ModelFamily.key_layout`` of the registry: "sd1" or "sd2",
    which holds SD2's epsilon and v models alike, see the module docstring); anything else is a ModelLoadError."""
    keys = state_dict.keys()
    if any(key.startswith("conditioner.embedders.") for key in keys):
        raise ModelLoadError("this is an SDXL model; dreamcore trains Stable Diffusion 1.x and 2.x only")
    if UNET_INPUT_CONV not in state_dict:
        raise ModelLoadError(_what_it_is_instead(keys))
    if state_dict[UNET_INPUT_CONV].dim() != 4:
        raise ModelLoadError(f"{UNET_INPUT_CONV} has shape {tuple(state_dict[UNET_INPUT_CONV].shape)}, not a "
                             "convolution's four dimensions; the file is damaged or not a Stable Diffusion model")
    in_channels = state_dict[UNET_INPUT_CONV].shape[1]
    if in_channels == 9:
        raise ModelLoadError("this is an inpainting model (its UNet takes 9 input channels); use a regular "
                             "SD1.x/SD2.x model as the base")
    if in_channels != 4:
        raise ModelLoadError(f"this UNet takes {in_channels} input channels (an instruct-pix2pix or other "
                             "special model); use a regular SD1.x/SD2.x model as the base")
    for key_layout, probe in key_layout_probes().items():
        if probe in state_dict:
            return key_layout
    raise ModelLoadError("unknown architecture: the file has a Stable Diffusion UNet but no text encoder of SD1 "
                         f"({SD1_TEXT_PREFIX}*) or SD2 ({SD2_TEXT_PREFIX}*); it is not a complete SD1.x/SD2.x "
                         "checkpoint")


def _what_it_is_instead(keys) -> str:
    keys = list(keys)
    if any(key.startswith("lora_") or ".lora_down." in key or ".lora_A." in key for key in keys):
        return ("this is a LoRA, not a full model; use it with the model it was trained on (`dreamcore generate "
                "--model BASE --lora THIS_FILE`, or <lora:NAME:1> in a WebUI prompt)")
    if VAE_ONLY_PROBE in keys or all(key.startswith("first_stage_model.") for key in keys):
        return "this is a VAE on its own, not a full model; pass it as the VAE (--pretrained_vae_name_or_path)"
    if any(key.startswith(("down_blocks.", "unet.", "text_model.")) for key in keys):
        return ("this file holds weights in diffusers layout (one component of a diffusers folder), not a "
                "single-file checkpoint; pass the whole diffusers folder instead")
    if any(key.startswith(("emb_params", "string_to_param")) for key in keys):
        return "this is a textual-inversion embedding, not a model"
    return (f"unknown architecture: no Stable Diffusion UNet ({UNET_INPUT_CONV} is missing); the file is not an "
            "SD1.x/SD2.x checkpoint")


@torch.no_grad()
def looks_v_prediction(unet: torch.nn.Module) -> bool:
    """The WebUI's test for SD2 v-prediction: at the last timestep a v model's output, minus a constant
    input, averages well below -1; an epsilon model's does not. Meaningful for trained SD2 weights only."""
    dtype = next(unet.parameters()).dtype
    context_width = unet.config.cross_attention_dim
    sample = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=dtype)
    context = torch.full((1, 2, context_width), 0.5, dtype=dtype)
    output = unet(sample, torch.tensor([999]), encoder_hidden_states=context).sample
    return (output - sample).mean().item() < -1
