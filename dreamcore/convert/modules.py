"""Build diffusers/transformers modules from configs and fill them with converted weights.

Modules are created without random initialisation (their parameters are placeholders until the weights
are assigned), which makes loading a full-size model fast and keeps memory at one copy of the weights.
Every key and shape is checked before assignment, so a wrong file fails with the key named.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch

from dreamcore.convert.errors import ModelLoadError
from dreamcore.convert.text_keys import POSITION_IDS

# Fields of the transformers CLIP text config that describe the model (what a config file must carry).
TEXT_CONFIG_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "max_position_embeddings", "hidden_act", "layer_norm_eps", "projection_dim",
                      "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "initializer_factor",
                      "attention_dropout", "dropout")


def diffusers_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers config without its bookkeeping (``_class_name``, ``_diffusers_version``, ...)."""
    return {key: copy.deepcopy(value) for key, value in config.items() if not key.startswith("_")}


def text_config_dict(config: Any) -> dict[str, Any]:
    """The descriptive fields of a CLIPTextConfig (or its dict), portable across transformers versions."""
    values = config if isinstance(config, Mapping) else config.to_dict()
    return {key: copy.deepcopy(values[key]) for key in TEXT_CONFIG_FIELDS if key in values}


def empty_unet(config: Mapping[str, Any]):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel.from_config(diffusers_config(config))


def empty_vae(config: Mapping[str, Any]):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    with init_empty_weights():
        return AutoencoderKL.from_config(diffusers_config(config))


def empty_text_encoder(config: Mapping[str, Any]):
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        return CLIPTextModel(CLIPTextConfig(**text_config_dict(config)))


def assign_weights(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str, source: str,
                   family_name: str) -> torch.nn.Module:
    """Check ``state_dict`` against ``module``'s keys and shapes, then make it the module's weights (fp32)."""
    expected = module.state_dict()
    if POSITION_IDS in expected and POSITION_IDS not in state_dict:
        # transformers < 4.31 stores the position ids (always 0..n-1) as a weight.
        state_dict = {**state_dict, POSITION_IDS: torch.arange(expected[POSITION_IDS].shape[-1]).unsqueeze(0)}
    if any(key.startswith(TEXT_MODEL_PREFIX) for key in state_dict):
        state_dict = text_encoder_module_keys(state_dict, module)
    for key, tensor in state_dict.items():  # shapes first: a wrong shape says more than a missing key
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            raise ModelLoadError(
                f"{source}: {what} key {key!r} has shape {tuple(tensor.shape)} but a {family_name} {what} has "
                f"{tuple(expected[key].shape)}; this is an unknown architecture (a different model type, or "
                "a custom size without the config it was saved with)")
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        detail = (f"missing {what} key {missing[0]!r}" if missing else f"unexpected {what} key {unexpected[0]!r}")
        raise ModelLoadError(f"{source}: {detail} ({len(missing)} missing, {len(unexpected)} unexpected); this "
                             f"is not a complete {family_name} {what}: the file is damaged or an unknown "
                             "architecture")
    # A copy each: the module must own its weights (a file's tensors may share storage or be memory-mapped).
    weights = {key: tensor.to(torch.float32 if tensor.is_floating_point() else tensor.dtype, copy=True)
               .contiguous() for key, tensor in state_dict.items()}
    module.load_state_dict(weights, strict=True, assign=True)
    return module.eval()


TEXT_MODEL_PREFIX = "text_model."


def text_encoder_state_dict(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The text encoder's weights under ``text_model.*`` names, whatever the transformers version.

    transformers 4.x nests the CLIP text transformer as ``text_model``; 5.x flattens it. The key tables
    (and SD1 single files) use the nested names.
    """
    state_dict = text_encoder.state_dict()
    if all(key.startswith(TEXT_MODEL_PREFIX) for key in state_dict):
        return dict(state_dict)
    return {TEXT_MODEL_PREFIX + key: tensor for key, tensor in state_dict.items()}


def text_encoder_module_keys(state_dict: Mapping[str, torch.Tensor],
                             text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``text_model.*`` weights renamed to what this transformers version's module expects."""
    if any(key.startswith(TEXT_MODEL_PREFIX) for key in text_encoder.state_dict()):
        return dict(state_dict)
    return {key[len(TEXT_MODEL_PREFIX):] if key.startswith(TEXT_MODEL_PREFIX) else key: tensor
            for key, tensor in state_dict.items()}
