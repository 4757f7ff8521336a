"""Key tables of SDXL single files (as the WebUIs keep them) <-> diffusers' SDXL components, and telling an SDXL
file's kind from its keys.

An SDXL base file holds four parts:

- ``model.diffusion_model.*``: the UNet, numbered as SD's (``unet_keys``), plus ``label_emb.0.{0,2}``, the MLP of
  the added conditioning (pooled text embedding and size/crop ids), which diffusers calls ``add_embedding``;
- ``conditioner.embedders.0.transformer.*``: CLIP ViT-L, a transformers ``CLIPTextModel`` kept whole (names
  as in SD1 files);
- ``conditioner.embedders.1.model.*``: OpenCLIP ViT-bigG in open_clip's layout (renamed as in SD2 files, q, k
  and v fused in one ``in_proj``) with its ``text_projection`` matrix, which diffusers keeps as the transposed
  weight of a Linear layer in ``CLIPTextModelWithProjection``;
- ``first_stage_model.*``: the VAE, SD's layout (``vae_keys``).

An SDXL refiner holds OpenCLIP alone, as ``conditioner.embedders.0.model.*``; dreamcore does not train on it.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from dreamcore.convert.errors import ModelLoadError
from dreamcore.convert.key_table import KeyTable, ModuleEntry
from dreamcore.convert.text_keys import POSITION_IDS, openclip_key_table
from dreamcore.convert.unet_keys import UNET_PREFIX, unet_key_table
from dreamcore.families.sdxl import SDXL

SDXL_FAMILY = SDXL.name  # the family name of SDXL base models in ModelComponents, file metadata and LoRAs
SDXL_PREFIX = "conditioner.embedders."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
OPENCLIP_G_PREFIX = "conditioner.embedders.1.model."
REFINER_OPENCLIP_PREFIX = "conditioner.embedders.0.model."
UNET_INPUT_CONV = UNET_PREFIX + "input_blocks.0.0.weight"
SDXL_KINDS = ("base", "refiner")

PROJECTION = "text_projection.weight"  # diffusers' name; open_clip's is "text_projection", transposed
OPENCLIP_PROJECTION = "text_projection"
# open_clip's learned temperature of its image-text contrastive loss: generation never reads it.
OPENCLIP_G_UNUSED = ("logit_scale",)

# diffusers' TimestepEmbedding for the added conditioning <-> the original's Sequential(Linear, SiLU, Linear).
ADDED_EMBEDDING_ENTRIES = (ModuleEntry("add_embedding.linear_1", "label_emb.0.0"),
                           ModuleEntry("add_embedding.linear_2", "label_emb.0.2"))
_QKV = ("q_proj", "k_proj", "v_proj")


def sdxl_unet_key_table(config: Mapping[str, Any]) -> KeyTable:
    """The SDXL UNet's key table: SD's, generated from the config, plus the added-conditioning MLP."""
    if config.get("addition_embed_type") != "text_time":
        raise ModelLoadError(f"UNet config has addition_embed_type {config.get('addition_embed_type')!r}; an SDXL "
                             "UNet has 'text_time' (pooled text embedding and size/crop ids)")
    entries = [*unet_key_table(config).entries, *ADDED_EMBEDDING_ENTRIES]
    return KeyTable(entries, "UNet", model="an SDXL base model")


def is_sdxl_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True for a single file of the SDXL family (base, fine-tune or refiner): its text encoders sit under
    ``conditioner.embedders.``, as the WebUIs tell it."""
    return any(key.startswith(SDXL_PREFIX) for key in state_dict)


def detect_sdxl_kind(state_dict: Mapping[str, Any]) -> str:
    """"base" (SDXL base and its fine-tunes: CLIP ViT-L and OpenCLIP ViT-bigG) or "refiner" (OpenCLIP alone);
    anything else under ``conditioner.embedders.`` is an error."""
    keys = list(state_dict)
    has_clip_l = any(key.startswith(CLIP_L_PREFIX) for key in keys)
    has_openclip_g = any(key.startswith(OPENCLIP_G_PREFIX) for key in keys)
    if any(key.startswith(REFINER_OPENCLIP_PREFIX) for key in keys) and not has_clip_l:
        return "refiner"
    if has_clip_l and has_openclip_g:
        return "base"
    missing = "CLIP ViT-L (conditioner.embedders.0.transformer.*)" if not has_clip_l else (
        "OpenCLIP ViT-bigG (conditioner.embedders.1.model.*)")
    raise ModelLoadError(f"this SDXL file lacks its {missing} text encoder; it is incomplete or not an SDXL base "
                         "model - copy or download it again")


def check_sdxl_base(state_dict: Mapping[str, torch.Tensor]) -> None:
    """Refuse, with the reason, an SDXL file dreamcore cannot train on: a refiner, a v-prediction model, an
    inpainting or other special UNet, or a file without its UNet."""
    if detect_sdxl_kind(state_dict) == "refiner":
        raise ModelLoadError("this is an SDXL refiner (its only text encoder is OpenCLIP ViT-bigG, "
                             "conditioner.embedders.0.model.*, without CLIP ViT-L); the refiner only polishes "
                             "the base model's images. Use SDXL base 1.0 or a fine-tune of it as the base model")
    if "v_pred" in state_dict:  # the marker the WebUIs read on SDXL v-prediction fine-tunes
        raise ModelLoadError("this is an SDXL v-prediction model (it has a 'v_pred' key); dreamcore trains SDXL base "
                             "models that predict the noise (epsilon), as SDXL base 1.0 does")
    if UNET_INPUT_CONV not in state_dict:
        raise ModelLoadError(f"this SDXL file has no UNet ({UNET_INPUT_CONV} is missing); it holds the text "
                             "encoders only - use a complete SDXL checkpoint")
    conv = state_dict[UNET_INPUT_CONV]
    if conv.dim() != 4:
        raise ModelLoadError(f"{UNET_INPUT_CONV} has shape {tuple(conv.shape)}, not a convolution's four "
                             "dimensions; the file is damaged")
    if conv.shape[1] == 9:
        raise ModelLoadError("this is an SDXL inpainting model (its UNet takes 9 input channels); use a regular "
                             "SDXL base model")
    if conv.shape[1] != 4:
        raise ModelLoadError(f"this SDXL UNet takes {conv.shape[1]} input channels (a special model); use a "
                             "regular SDXL base model")


def clip_l_to_original(state_dict: Mapping[str, torch.Tensor], max_positions: int = 77) -> dict[str, torch.Tensor]:
    """CLIP ViT-L's ``text_model.*`` weights as the file keeps them (no prefix): the same names, and the position
    ids written out as older transformers (the WebUIs' 4.30) keep them, as weights."""
    unknown = [key for key in state_dict if not key.startswith("text_model.")]
    if unknown:
        raise ModelLoadError(f"text encoder key {unknown[0]!r} has no place in SDXL's CLIP ViT-L; the first text "
                             "encoder must be a CLIPTextModel")
    out = {key: tensor for key, tensor in state_dict.items() if key != POSITION_IDS}
    out[POSITION_IDS] = torch.arange(max_positions, dtype=torch.int64).unsqueeze(0)
    return out


def clip_l_from_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's CLIP ViT-L weights (prefix removed) -> ``text_model.*``. The position ids are not weights
    (0..76 by definition, rebuilt on load; SDXL base 1.0 and dreamcore's files hold them): dropped unmentioned,
    as the SD1 and SD2 readers drop them."""
    unknown = [key for key in state_dict if not key.startswith("text_model.")]
    if unknown:
        raise ModelLoadError(f"unexpected text encoder key {CLIP_L_PREFIX}{unknown[0]}: it is not part of SDXL's "
                             "CLIP ViT-L text encoder")
    return {key: tensor for key, tensor in state_dict.items() if key != POSITION_IDS}


def openclip_g_to_original(state_dict: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` state dict -> open_clip's layout (no prefix); unknown keys are errors."""
    table = openclip_key_table(num_layers)
    used = {POSITION_IDS}  # 0..76 by definition; open_clip has none
    out: dict[str, torch.Tensor] = {}
    for hf_key, openclip_key in table.items():
        out[openclip_key] = _take(state_dict, hf_key, used)
    for layer in range(num_layers):
        base = f"text_model.encoder.layers.{layer}.self_attn"
        for param in ("weight", "bias"):
            parts = [_take(state_dict, f"{base}.{name}.{param}", used) for name in _QKV]
            out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat(parts, dim=0)
    out[OPENCLIP_PROJECTION] = _take(state_dict, PROJECTION, used).t().contiguous()
    leftover = sorted(set(state_dict) - used)
    if leftover:
        raise ModelLoadError(f"text encoder 2 key {leftover[0]!r} has no place in SDXL's OpenCLIP ViT-bigG layout "
                             f"({len(leftover)} such keys; the config says {num_layers} layers)")
    return out


def openclip_g_from_original(state_dict: Mapping[str, torch.Tensor], num_layers: int
                             ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """open_clip's ViT-bigG weights (prefix removed) -> ``CLIPTextModelWithProjection`` names; also the keys left
    out (``OPENCLIP_G_UNUSED``). Every other key must have its place, every layer up to ``num_layers``."""
    inverse = {openclip: hf for hf, openclip in openclip_key_table(num_layers).items()}
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, tensor in state_dict.items():
        if key in inverse:
            out[inverse[key]] = tensor
        elif key == OPENCLIP_PROJECTION:
            if tensor.dim() != 2:
                raise ModelLoadError(f"{OPENCLIP_G_PREFIX}{key} has shape {tuple(tensor.shape)}, not a matrix; the "
                                     "file is damaged")
            out[PROJECTION] = tensor.t().contiguous()
        elif key in OPENCLIP_G_UNUSED:
            ignored.append(OPENCLIP_G_PREFIX + key)
        elif _is_in_proj(key, num_layers):
            layer, param = int(key.split(".")[2]), key.rsplit("_", 1)[1]
            if tensor.shape[0] % 3:
                raise ModelLoadError(f"{OPENCLIP_G_PREFIX}{key} has shape {tuple(tensor.shape)}, which is not three "
                                     "stacked projections; the file is damaged")
            for name, part in zip(_QKV, tensor.chunk(3, dim=0)):
                out[f"text_model.encoder.layers.{layer}.self_attn.{name}.{param}"] = part.contiguous()
        else:
            raise ModelLoadError(f"unexpected text encoder key {OPENCLIP_G_PREFIX}{key}: it is not part of an "
                                 f"SDXL base model's OpenCLIP ViT-bigG ({num_layers} layers)")
    if PROJECTION not in out:
        raise ModelLoadError(f"{OPENCLIP_G_PREFIX}{OPENCLIP_PROJECTION} is missing; SDXL's second text encoder needs "
                             "its projection (the pooled embedding) - the file is incomplete")
    return out, ignored


def count_resblocks(state_dict: Mapping[str, Any], prefix: str = OPENCLIP_G_PREFIX) -> int:
    """The number of open_clip resblocks under ``prefix`` in a file's state dict."""
    start = prefix + "transformer.resblocks."
    layers = {int(key[len(start):].split(".")[0]) for key in state_dict if key.startswith(start)}
    return max(layers) + 1 if layers else 0


def _is_in_proj(key: str, num_layers: int) -> bool:
    parts = key.split(".")
    return (len(parts) == 5 and parts[:2] == ["transformer", "resblocks"] and parts[2].isdigit()
            and int(parts[2]) < num_layers and parts[3] == "attn" and parts[4] in ("in_proj_weight", "in_proj_bias"))


def _take(state_dict: Mapping[str, torch.Tensor], key: str, used: set[str]) -> torch.Tensor:
    if key not in state_dict:
        raise ModelLoadError(f"text encoder 2 key {key!r} is missing; it is not a complete CLIP text model with "
                             "projection (CLIPTextModelWithProjection)")
    used.add(key)
    return state_dict[key]
