"""Baking a LoRA into a base model's weights: for generating with it, or as one full single file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dreamcore.lora.files import LoraWeights, read_lora
from dreamcore.lora.kohya import PEFT_A, PEFT_B, LoraFormatError

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
    """Fuse a LoRA into a loaded model's weights in place. Raises LoraFormatError for a LoRA of another model."""
    from dreamcore.convert.architecture import base_family
    from dreamcore.families.registry import get_family
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
    _fuse(components, weights, weight)


def _fuse(components: "ModelComponents", weights: LoraWeights, scale: float) -> None:
    """Each adapted layer's weight += scale * alpha / rank * up @ down, in the layer's dtype. By hand, not with
    diffusers' load_lora_weights + fuse_lora: its reading of a kohya file tells the text encoder's layout by an
    out_proj adapter and fails ("Could not automatically infer state dict type") on LoRAs without one."""
    import torch

    for part, state in weights.parts.items():
        layers = _layers(getattr(components, part))
        for key, down in state.items():
            if not key.endswith(PEFT_A):
                continue
            module = key[:-len(PEFT_A)]
            layer = layers[module.removeprefix("text_model.")]
            rank = down.shape[0]
            factor = scale * weights.alphas.get(f"{part}.{module}", float(rank)) / rank
            # a convolution's down is (rank, in, kh, kw) and its up (out, rank, 1, 1): the product has its shape
            delta = state[module + PEFT_B].flatten(1).double() @ down.flatten(1).double()
            with torch.no_grad():
                layer.weight += (factor * delta).reshape(layer.weight.shape).to(layer.weight.dtype)


def unfit_layers(components: "ModelComponents", weights: LoraWeights) -> list[str]:
    """The LoRA's layers ("<part>.<module>") that the model lacks or holds at another size, which diffusers
    would report as a key or shape error deep inside its loader."""
    unfit = []
    for part, state in weights.parts.items():
        model = getattr(components, part, None)
        layers = {} if model is None else _layers(model)
        for key, down in state.items():
            if not key.endswith(PEFT_A):
                continue
            module = key[:-len(PEFT_A)]
            weight = getattr(layers.get(module.removeprefix("text_model.")), "weight", None)
            up = state.get(module + PEFT_B)
            if weight is None or up is None or down.shape[1] != weight.shape[1] or up.shape[0] != weight.shape[0]:
                unfit.append(f"{part}.{module}")
    return sorted(unfit)


def _layers(model) -> dict:
    """A model's layers by name, without the "text_model." level: transformers 5's CLIPTextModel has none, and
    LoRA files keep it (their names are looked up with it removed)."""
    return {name.removeprefix("text_model."): layer for name, layer in model.named_modules()}
