"""Key tables of the text encoders: transformers ``CLIPTextModel`` <-> the original layouts.

SD1 keeps the transformers CLIP model whole under ``cond_stage_model.transformer.``: the names are the
same. SD2 uses OpenCLIP under ``cond_stage_model.model.``: other names, and the attention's query, key
and value projections stored as one ``in_proj`` matrix (q, k, v stacked along the first dimension).
"""

from __future__ import annotations

import torch

from dreamcore.convert.errors import ModelLoadError

SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
POSITION_IDS = "text_model.embeddings.position_ids"

# Keys of an SD2 file's OpenCLIP model that SD2 never uses: it takes the penultimate layer's output
# without the projection head. diffusers' SD2 text encoder omits them too (its config has 23 layers
# where OpenCLIP ViT-H has 24); they are listed so that nothing else is dropped unseen.
OPENCLIP_UNUSED = ("text_projection", "logit_scale")

_OPENCLIP_LAYER_NAMES = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_QKV = ("q_proj", "k_proj", "v_proj")


def openclip_key_table(num_layers: int) -> dict[str, str]:
    """transformers key -> OpenCLIP key for every tensor that is renamed one to one."""
    table = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    for layer in range(num_layers):
        for hf_name, openclip_name in _OPENCLIP_LAYER_NAMES.items():
            for param in ("weight", "bias"):
                table[f"text_model.encoder.layers.{layer}.{hf_name}.{param}"] = (
                    f"transformer.resblocks.{layer}.{openclip_name}.{param}")
    return table


def clip_to_openclip(state_dict: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """A transformers CLIP text state dict in OpenCLIP layout (no prefix); unknown keys are errors."""
    table = openclip_key_table(num_layers)
    out: dict[str, torch.Tensor] = {}
    used = set()
    for hf_key, openclip_key in table.items():
        out[openclip_key] = _take(state_dict, hf_key, used)
    for layer in range(num_layers):
        base = f"text_model.encoder.layers.{layer}.self_attn"
        for param in ("weight", "bias"):
            parts = [_take(state_dict, f"{base}.{name}.{param}", used) for name in _QKV]
            out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat(parts, dim=0)
    leftover = sorted(set(state_dict) - used - {POSITION_IDS})  # position ids are arange(77) by definition
    if leftover:
        raise ModelLoadError(f"text encoder key {leftover[0]!r} has no place in SD2's OpenCLIP layout "
                             f"({len(leftover)} such keys); this text encoder is not an SD2 one")
    return out


def openclip_to_clip(state_dict: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """An OpenCLIP text state dict (no prefix) in transformers layout.

    Resblocks past ``num_layers`` are the layers SD2 skips (it reads the penultimate layer); they and
    ``OPENCLIP_UNUSED`` are left out on purpose. Any other unknown key is an error naming it.
    """
    inverse = {openclip: hf for hf, openclip in openclip_key_table(num_layers).items()}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key in inverse:
            out[inverse[key]] = tensor
        elif key.startswith("transformer.resblocks.") and key.split(".")[3] == "attn" and "in_proj" in key:
            layer = int(key.split(".")[2])
            if layer >= num_layers:
                continue  # a skipped final layer, see the docstring
            param = "weight" if key.endswith("in_proj_weight") else "bias"
            if tensor.shape[0] % 3:
                raise ModelLoadError(f"text encoder key {SD2_TEXT_PREFIX}{key} has shape {tuple(tensor.shape)}, "
                                     "which is not three stacked projections; the file is damaged")
            for name, part in zip(_QKV, tensor.chunk(3, dim=0)):
                out[f"text_model.encoder.layers.{layer}.self_attn.{name}.{param}"] = part
        elif key.startswith("transformer.resblocks.") and int(key.split(".")[2]) >= num_layers:
            continue  # a skipped final layer
        elif key in OPENCLIP_UNUSED:
            continue
        else:
            raise ModelLoadError(f"unexpected text encoder key {SD2_TEXT_PREFIX}{key}: it is not part of "
                                 "SD2's OpenCLIP text encoder")
    return out


def count_openclip_layers(state_dict: dict[str, torch.Tensor]) -> int:
    """Number of resblocks in an OpenCLIP text state dict (no prefix)."""
    layers = {int(key.split(".")[2]) for key in state_dict if key.startswith("transformer.resblocks.")}
    return max(layers) + 1 if layers else 0


def _take(state_dict: dict[str, torch.Tensor], key: str, used: set[str]) -> torch.Tensor:
    if key not in state_dict:
        raise ModelLoadError(f"text encoder key {key!r} is missing; the text encoder is not a complete "
                             "CLIP text model")
    used.add(key)
    return state_dict[key]
