"""A whole SDXL model between diffusers-layout state dicts and one single-file (WebUI) state dict.

Pure functions over state dicts, as ``layout`` is for SD1/SD2: ``to_sdxl_single_file_layout`` prefixes each
component the way the WebUIs expect; ``split_sdxl_single_file_layout`` takes a file's state dict apart and fails
on any key it cannot place, except those listed as ignored (training buffers, EMA copies and open_clip's
logit scale), which no SDXL pipeline reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from dreamcore.convert.errors import ModelLoadError
from dreamcore.convert.layout import EMA_PREFIX, SCHEDULE_KEYS, VAE_LOSS_PREFIX, vae_from_original, vae_to_original
from dreamcore.convert.sdxl_keys import (CLIP_L_PREFIX, OPENCLIP_G_PREFIX, clip_l_from_original, clip_l_to_original,
                                         openclip_g_from_original, openclip_g_to_original, sdxl_unet_key_table)
from dreamcore.convert.unet_keys import UNET_PREFIX
from dreamcore.convert.vae_keys import VAE_PREFIX


@dataclass
class SplitSdxlCheckpoint:
    """An SDXL single file's weights as diffusers-layout state dicts, one per component."""

    unet: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor]
    text_encoder: dict[str, torch.Tensor]  # CLIP ViT-L, ``text_model.*``
    text_encoder_2: dict[str, torch.Tensor]  # OpenCLIP ViT-bigG, ``text_model.*`` and ``text_projection.weight``
    ignored: list[str] = field(default_factory=list)
    has_ema: bool = False


def to_sdxl_single_file_layout(unet: Mapping[str, torch.Tensor], vae: Mapping[str, torch.Tensor],
                               text_encoder: Mapping[str, torch.Tensor], text_encoder_2: Mapping[str, torch.Tensor],
                               unet_config: Mapping[str, Any], vae_config: Mapping[str, Any], text_layers_2: int,
                               max_positions: int = 77) -> dict[str, torch.Tensor]:
    """diffusers state dicts (text encoders under ``text_model.*`` names) -> the SDXL single-file layout."""
    out: dict[str, torch.Tensor] = {}
    out.update(_prefixed(sdxl_unet_to_original(unet, unet_config), UNET_PREFIX))
    out.update(_prefixed(vae_to_original(vae, vae_config), VAE_PREFIX))
    out.update(_prefixed(clip_l_to_original(text_encoder, max_positions), CLIP_L_PREFIX))
    out.update(_prefixed(openclip_g_to_original(text_encoder_2, text_layers_2), OPENCLIP_G_PREFIX))
    return out


def split_sdxl_single_file_layout(state_dict: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any],
                                  vae_config: Mapping[str, Any], text_layers_2: int,
                                  use_ema: bool = False) -> SplitSdxlCheckpoint:
    """An SDXL base file's state dict -> diffusers-layout state dicts; a key without a place is an error naming it.

    ``use_ema`` takes the UNet's EMA copies (``model_ema.*``) instead of its weights.
    """
    unet, vae, clip_l, openclip_g = {}, {}, {}, {}
    ignored: list[str] = []
    has_ema = any(key.startswith(EMA_PREFIX) and key not in SCHEDULE_KEYS for key in state_dict)
    for key, tensor in state_dict.items():
        if key.startswith(UNET_PREFIX):
            unet[key[len(UNET_PREFIX):]] = tensor
        elif key.startswith(VAE_LOSS_PREFIX) or key in SCHEDULE_KEYS or key.startswith(EMA_PREFIX):
            ignored.append(key)
        elif key.startswith(VAE_PREFIX):
            vae[key[len(VAE_PREFIX):]] = tensor
        elif key.startswith(CLIP_L_PREFIX):
            clip_l[key[len(CLIP_L_PREFIX):]] = tensor
        elif key.startswith(OPENCLIP_G_PREFIX):
            openclip_g[key[len(OPENCLIP_G_PREFIX):]] = tensor
        else:
            raise ModelLoadError(f"unexpected key {key!r}: it is not part of an SDXL base model")
    if use_ema:
        if not has_ema:
            raise ModelLoadError("this file has no EMA weights (no 'model_ema.*' keys); load it without use_ema")
        unet = {key: _ema_tensor(state_dict, key) for key in unet}
    text_encoder = clip_l_from_original(clip_l)
    text_encoder_2, openclip_ignored = openclip_g_from_original(openclip_g, text_layers_2)
    return SplitSdxlCheckpoint(unet=sdxl_unet_from_original(unet, unet_config),
                               vae=vae_from_original(vae, vae_config), text_encoder=text_encoder,
                               text_encoder_2=text_encoder_2, ignored=ignored + openclip_ignored,
                               has_ema=has_ema)


def sdxl_unet_to_original(state_dict: Mapping[str, torch.Tensor],
                          config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return _rename(state_dict, sdxl_unet_key_table(config).to_original, "")


def sdxl_unet_from_original(state_dict: Mapping[str, torch.Tensor],
                            config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return _rename(state_dict, sdxl_unet_key_table(config).to_diffusers, UNET_PREFIX)


def _rename(state_dict: Mapping[str, torch.Tensor], rename: Callable[[str], tuple[str, bool]],
            prefix: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        try:
            new_key, reshape = rename(key)
        except ModelLoadError as error:  # name the key as the file spells it
            raise ModelLoadError(str(error).replace(repr(key), repr(prefix + key), 1)) from None
        if reshape:  # SDXL's UNet has no 1x1-convolution attention; the table never asks for it
            raise AssertionError(f"UNet key {prefix + key!r}: the SDXL key table asked for a reshape")
        if new_key in out:
            raise ModelLoadError(f"UNet keys collide at {new_key!r}; the file is damaged")
        out[new_key] = tensor
    return out


def _ema_tensor(state_dict: Mapping[str, torch.Tensor], unet_key: str) -> torch.Tensor:
    # The original trainer (LitEma) names each EMA copy after its parameter with the dots removed.
    ema_key = EMA_PREFIX + ("diffusion_model." + unet_key).replace(".", "")
    if ema_key not in state_dict:
        raise ModelLoadError(f"the EMA weights are incomplete: {ema_key!r} (EMA copy of {UNET_PREFIX}{unet_key}) is "
                             "missing; load the file without use_ema")
    return state_dict[ema_key]


def _prefixed(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: tensor for key, tensor in state_dict.items()}
