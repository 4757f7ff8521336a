"""Baking a LoRA into a base model: one full single file, with diffusers' own loading and fusing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dreamcore.lora.files import LoraWeights, read_lora
from dreamcore.lora.kohya import PEFT_A, PEFT_B, LoraFormatError, peft_to_kohya

if TYPE_CHECKING:
    from dreamcore.components import ModelComponents


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
    from dreamcore.families.registry import get_family
    from dreamcore.models import build_pipeline

    weights = read_lora(lora, default_family=components.family)
    model_label = get_family(components.family).label
    if base_family(weights.family) != base_family(components.family):
        lora_label = get_family(weights.family).label
        raise LoraFormatError(f"{lora} is a LoRA for {lora_label} models but the model is {model_label}; use it "
                              f"with an {lora_label} model, or use a LoRA trained on {model_label} with this one")
    unfit = unfit_layers(components, weights)
    if unfit:
        # A LoRA without metadata whose shapes name no family is taken to be the model's; its layers tell.
        raise LoraFormatError(f"{lora}: {len(unfit)} of its layers are not in this {model_label} model or have "
                              f"other sizes there (e.g. {unfit[0]}); it is a LoRA for another model: use it with "
                              "the model it was trained on")
    pipeline = build_pipeline(components)
    # The kohya layout is the one every LoRA can be written in; diffusers reads its alphas itself.
    pipeline.load_lora_weights(peft_to_kohya(weights.parts, weights.alphas, weights.family), adapter_name="merged")
    pipeline.fuse_lora(lora_scale=weight, adapter_names=["merged"])
    pipeline.unload_lora_weights()


def unfit_layers(components: "ModelComponents", weights: LoraWeights) -> list[str]:
    """The LoRA's layers ("<part>.<module>") that the model lacks or holds at another size, which diffusers
    would report as a key or shape error deep inside its loader."""
    unfit = []
    for part, state in weights.parts.items():
        model = getattr(components, part, None)
        # transformers 5's CLIPTextModel has no "text_model." level; LoRA files keep it
        layers = {} if model is None else {name.removeprefix("text_model."): layer
                                           for name, layer in model.named_modules()}
        for key, down in state.items():
            if not key.endswith(PEFT_A):
                continue
            module = key[:-len(PEFT_A)]
            weight = getattr(layers.get(module.removeprefix("text_model.")), "weight", None)
            up = state.get(module + PEFT_B)
            if weight is None or up is None or down.shape[1] != weight.shape[1] or up.shape[0] != weight.shape[0]:
                unfit.append(f"{part}.{module}")
    return sorted(unfit)
