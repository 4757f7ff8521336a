"""Baking a LoRA into a base model: one full single file, with diffusers' own loading and fusing."""

from __future__ import annotations

from pathlib import Path

from dreamcore.lora.files import read_lora
from dreamcore.lora.kohya import peft_to_kohya


def merge_lora(base: str, lora: str, out: str | Path, weight: float = 1.0, half: bool = True,
               family: str = "auto") -> Path:
    """``base`` (diffusers folder, single file or cached hub id) with ``lora`` (kohya file or diffusers
    folder) fused in at ``weight``, written as a WebUI single file ``out``; returns its path."""
    from dreamcore.convert import save_single_file
    from dreamcore.models import load_base_model

    components = load_base_model(base, family=family)
    apply_lora(components, lora, weight)
    return save_single_file(components, out, half=half,
                            metadata={"dreamcore.merged_lora": Path(lora).name, "dreamcore.lora_weight": str(weight)})


def apply_lora(components, lora: str | Path, weight: float = 1.0) -> None:
    """Fuse a LoRA into a loaded model's weights in place (diffusers' load_lora_weights + fuse_lora)."""
    from dreamcore.convert.architecture import base_family
    from dreamcore.models import build_pipeline

    weights = read_lora(lora, default_family=components.family)
    if base_family(weights.family) != base_family(components.family):
        raise ValueError(f"{lora} is a LoRA for {weights.family} but the base model is {components.family}; "
                         "merge it into a model of its own family")
    pipeline = build_pipeline(components)
    # The kohya layout is the one every LoRA can be written in; diffusers reads its alphas itself.
    pipeline.load_lora_weights(peft_to_kohya(weights.parts, weights.alphas, weights.family), adapter_name="merged")
    pipeline.fuse_lora(lora_scale=weight, adapter_names=["merged"])
    pipeline.unload_lora_weights()
