"""Published architectures versus custom ones (the tiny test models), told from component configs."""

from __future__ import annotations

from typing import Any, Mapping

from dreamcore.assets import load_component_config
from dreamcore.convert.errors import ModelLoadError
from dreamcore.families.registry import FAMILIES, get_family

COMPONENTS = ("unet", "vae", "text_encoder", "scheduler")
# Config fields that decide the shape of the weights or the numbers they produce.
STRUCTURAL_FIELDS = {
    "unet": ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
             "layers_per_block", "cross_attention_dim", "attention_head_dim", "use_linear_projection",
             "norm_num_groups"),
    "vae": ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels",
            "norm_num_groups", "scaling_factor"),
    "text_encoder": ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings", "hidden_act"),
    "scheduler": ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule"),
}


def published_configs(family: str) -> dict[str, dict[str, Any]]:
    """The shipped diffusers configs of a published family of one text encoder (SD1, SD2, SD2-v)."""
    if family not in FAMILIES:
        raise ModelLoadError(f"unknown model family {family!r}; use one of {', '.join(FAMILIES)}")
    return {component: load_component_config(get_family(family).assets_name, component) for component in COMPONENTS}


def differs_from_published(configs: Mapping[str, Mapping[str, Any]], family: str) -> bool:
    """True when any structural field differs from the published model of that family."""
    published = published_configs(family)
    for component, fields in STRUCTURAL_FIELDS.items():
        for field in fields:
            mine, theirs = configs[component].get(field), published[component].get(field)
            if _normalise(mine) != _normalise(theirs):
                return True
    return False


def base_family(family: str) -> str:
    """The key layout of a family's single files (SD2's epsilon and v models share "sd2")."""
    return get_family(family).key_layout


def prediction_type(family: str) -> str:
    return get_family(family).prediction_type


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
