"""Whole-model conversion between diffusers components and one original-layout (single-file) state dict.

Pure functions over state dicts: no files, no modules. ``to_single_file_layout`` prefixes each component
the way the WebUIs expect; ``split_single_file_layout`` takes a file's state dict apart again and fails
on any key it cannot place, except the few listed in ``UNUSED_KEYS`` that no SD1/SD2 model reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from dreamcore.convert.errors import ModelLoadError
from dreamcore.convert.text_keys import (POSITION_IDS, SD1_TEXT_PREFIX, SD2_TEXT_PREFIX, clip_to_openclip,
                                         openclip_to_clip)
from dreamcore.convert.unet_keys import UNET_PREFIX, unet_key_table
from dreamcore.convert.vae_keys import VAE_PREFIX, vae_key_table
from dreamcore.families.registry import family_of_key_layout
from dreamcore.families.sd1 import SD1

EMA_PREFIX = "model_ema."
# Training-time buffers of the original LatentDiffusion class: the noise schedule (recomputed from the
# scheduler config; ``check_noise_schedule`` compares it), the EMA bookkeeping and the loss weights.
SCHEDULE_KEYS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "model_ema.decay", "model_ema.num_updates",
)
# The VAE's training loss (discriminator, LPIPS) rides along in some files; generation never uses it.
VAE_LOSS_PREFIX = "first_stage_model.loss."


# Older SD1 files keep the CLIP text model one level up (transformers before it nested ``text_model``).
# The WebUIs rename these on load; so does ``normalise_legacy_keys``.
LEGACY_SD1_TEXT_PREFIXES = {
    "cond_stage_model.transformer.embeddings.": "cond_stage_model.transformer.text_model.embeddings.",
    "cond_stage_model.transformer.encoder.": "cond_stage_model.transformer.text_model.encoder.",
    "cond_stage_model.transformer.final_layer_norm.": "cond_stage_model.transformer.text_model.final_layer_norm.",
}


def normalise_legacy_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with legacy SD1 text encoder names moved to today's (see LEGACY_SD1_TEXT_PREFIXES)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        for old, new in LEGACY_SD1_TEXT_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        if key in out:
            raise ModelLoadError(f"key {key!r} appears in both the legacy and the current layout; the file is "
                                 "damaged")
        out[key] = tensor
    return out


@dataclass
class SplitCheckpoint:
    """A single file's weights taken apart into diffusers-layout state dicts per component."""

    unet: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor]
    text_encoder: dict[str, torch.Tensor]
    ignored: list[str] = field(default_factory=list)  # keys no SD1/SD2 model reads (see UNUSED_KEYS)
    has_ema: bool = False


def to_single_file_layout(unet: Mapping[str, torch.Tensor], vae: Mapping[str, torch.Tensor],
                          text_encoder: Mapping[str, torch.Tensor], family: str, unet_config: Mapping[str, Any],
                          vae_config: Mapping[str, Any], text_layers: int,
                          max_positions: int = 77) -> dict[str, torch.Tensor]:
    """diffusers state dicts -> the original single-file layout (SD1: OpenAI CLIP, SD2: OpenCLIP)."""
    out: dict[str, torch.Tensor] = {}
    out.update(_prefixed(unet_to_original(unet, unet_config), UNET_PREFIX))
    out.update(_prefixed(vae_to_original(vae, vae_config), VAE_PREFIX))
    if family == SD1.key_layout:
        text = {key: tensor for key, tensor in text_encoder.items() if key != POSITION_IDS}
        # Older transformers (the WebUIs' 4.30) keep position ids as weights; write the exact values.
        text[POSITION_IDS] = torch.arange(max_positions, dtype=torch.int64).unsqueeze(0)
        out.update(_prefixed(text, SD1_TEXT_PREFIX))
    else:
        out.update(_prefixed(clip_to_openclip(dict(text_encoder), text_layers), SD2_TEXT_PREFIX))
    return out


def split_single_file_layout(state_dict: Mapping[str, torch.Tensor], family: str, unet_config: Mapping[str, Any],
                             vae_config: Mapping[str, Any], text_layers: int,
                             use_ema: bool = False) -> SplitCheckpoint:
    """A single file's state dict -> diffusers-layout state dicts; an unplaceable key is an error naming it."""
    unet_original, vae_original, text_original = {}, {}, {}
    ignored: list[str] = []
    has_ema = any(key.startswith(EMA_PREFIX) and key not in SCHEDULE_KEYS for key in state_dict)
    text_prefix = SD1_TEXT_PREFIX if family == SD1.key_layout else SD2_TEXT_PREFIX
    for key, tensor in state_dict.items():
        if key.startswith(UNET_PREFIX):
            unet_original[key[len(UNET_PREFIX):]] = tensor
        elif key.startswith(VAE_LOSS_PREFIX) or key in SCHEDULE_KEYS or key.startswith(EMA_PREFIX):
            ignored.append(key)
        elif key.startswith(VAE_PREFIX):
            vae_original[key[len(VAE_PREFIX):]] = tensor
        elif key.startswith(text_prefix):
            text_original[key[len(text_prefix):]] = tensor
        else:
            model = family_of_key_layout(family)
            raise ModelLoadError(f"unexpected key {key!r}: it is not part of an {model.label} model "
                                 f"({model.text_encoder_label} text encoder)")
    if use_ema:
        if not has_ema:
            raise ModelLoadError("this file has no EMA weights (no 'model_ema.*' keys); load it without use_ema")
        unet_original = {key: _ema_tensor(state_dict, key) for key in unet_original}
    if family == SD1.key_layout:
        if (SD1_TEXT_PREFIX + POSITION_IDS) in state_dict:
            ignored.append(SD1_TEXT_PREFIX + POSITION_IDS)  # arange(77) by definition; see to_single_file_layout
        text = {key: tensor for key, tensor in text_original.items() if key != POSITION_IDS}
        unknown = [key for key in text if not key.startswith("text_model.")]
        if unknown:
            raise ModelLoadError(f"unexpected text encoder key {SD1_TEXT_PREFIX}{unknown[0]}: it is not part of "
                                 "SD1's CLIP text encoder")
    else:
        text = openclip_to_clip(text_original, text_layers)
    return SplitCheckpoint(unet=unet_from_original(unet_original, unet_config),
                           vae=vae_from_original(vae_original, vae_config), text_encoder=text,
                           ignored=ignored, has_ema=has_ema)


def unet_to_original(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    table = unet_key_table(config)
    return _rename(state_dict, table.to_original, "UNet")


def unet_from_original(state_dict: Mapping[str, torch.Tensor],
                       config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    table = unet_key_table(config)
    return _rename(state_dict, table.to_diffusers, "UNet", prefix=UNET_PREFIX)


def vae_to_original(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return _rename(state_dict, vae_key_table(config).to_original, "VAE")


def vae_from_original(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return _rename(state_dict, vae_key_table(config).to_diffusers, "VAE", prefix=VAE_PREFIX)


def _rename(state_dict: Mapping[str, torch.Tensor], rename, what: str, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        try:
            new_key, reshape = rename(key)
        except ModelLoadError as error:
            raise ModelLoadError(str(error).replace(repr(key), repr(prefix + key), 1)) from None
        if reshape:
            tensor = _reshape_attention(tensor, to_conv=not prefix, key=prefix + key)
        if new_key in out:
            raise ModelLoadError(f"{what} keys collide at {new_key!r}; the file is damaged")
        out[new_key] = tensor
    return out


def _reshape_attention(tensor: torch.Tensor, to_conv: bool, key: str) -> torch.Tensor:
    """Linear [C, C] <-> 1x1 convolution [C, C, 1, 1] (biases, 1-D, stay as they are)."""
    if tensor.ndim == 1:
        return tensor
    if to_conv:
        return tensor.reshape(*tensor.shape, 1, 1) if tensor.ndim == 2 else tensor
    if tensor.ndim == 4 and tensor.shape[2:] != (1, 1):
        raise ModelLoadError(f"VAE key {key!r} has shape {tuple(tensor.shape)}; an attention projection must be "
                             "a 1x1 convolution")
    return tensor.reshape(tensor.shape[0], tensor.shape[1]) if tensor.ndim == 4 else tensor


def _ema_tensor(state_dict: Mapping[str, torch.Tensor], unet_key: str) -> torch.Tensor:
    # The original trainer (LitEma) names each EMA copy after its parameter with the dots removed.
    ema_key = EMA_PREFIX + ("diffusion_model." + unet_key).replace(".", "")
    if ema_key not in state_dict:
        raise ModelLoadError(f"the EMA weights are incomplete: {ema_key!r} (EMA copy of "
                             f"{UNET_PREFIX}{unet_key}) is missing; load the file without use_ema")
    return state_dict[ema_key]


def _prefixed(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: tensor for key, tensor in state_dict.items()}
