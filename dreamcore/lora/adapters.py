"""PEFT LoRA adapters on the UNet and the text encoder: adding them for training, and their weights alone.

The layers themselves are PEFT's (``add_adapter`` of diffusers' and transformers' models, which call
``peft.inject_adapter_in_model``); dreamcore only decides which modules get one and with which settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from dreamcore.families.registry import get_family

# The attention projections (what diffusers' train_dreambooth_lora.py trains) and the transformer blocks' other
# linear layers, as kohya's default SD1/SD2 LoRA: in the quality lab LoRA on the attention alone bound a face
# poorly at any learning rate (BENCHMARKS.md, "Quality").
ATTENTION_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ATTENTION_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
DEFAULT_UNET_TARGETS = (*ATTENTION_UNET_TARGETS, "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
DEFAULT_TEXT_TARGETS = (*ATTENTION_TEXT_TARGETS, "fc1", "fc2")
# SD2's text encoder is OpenCLIP: the WebUI holds q, k and v as one fused matrix of a MultiheadAttention,
# and applies a LoRA there only when all four projections of a layer have one.
SD2_FUSED_TEXT_TARGETS = frozenset(ATTENTION_TEXT_TARGETS)
ADAPTER_NAME = "default"


class LoraSetupError(ValueError):
    """LoRA settings that cannot be applied to this model; the message names the field and what to do."""


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ()  # empty: the defaults above
    seed: int = 0  # of the random lora_A initialisation: the same seed gives the same run

    @classmethod
    def from_config(cls, config: Any) -> "LoraSettings":
        """From a TrainConfig's lora_* fields (alpha empty = the rank, i.e. scale 1)."""
        alpha = config.lora_alpha if config.lora_alpha is not None else float(config.lora_rank)
        return cls(config.lora_rank, float(alpha), config.lora_dropout, parse_target_modules(config.lora_target_modules),
                   config.seed)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def parse_target_modules(text: str) -> tuple[str, ...]:
    """``"to_q, to_k,to_v"`` -> ("to_q", "to_k", "to_v"); empty text -> () (use the defaults)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def split_targets(targets: tuple[str, ...], unet: torch.nn.Module,
                  text_encoder: torch.nn.Module | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Which of the named modules are the UNet's and which the text encoder's.

    An empty list means the defaults. A name that matches no Linear/Conv2d module of a model being trained
    is an error (a typo would otherwise train nothing there and go unnoticed).
    """
    if not targets:
        return DEFAULT_UNET_TARGETS, DEFAULT_TEXT_TARGETS if text_encoder is not None else ()
    unet_names = _adaptable_module_names(unet)
    text_names = _adaptable_module_names(text_encoder) if text_encoder is not None else set()
    unet_targets = tuple(t for t in targets if _matches_any(t, unet_names))
    text_targets = tuple(t for t in targets if _matches_any(t, text_names))
    unknown = [t for t in targets if t not in unet_targets and t not in text_targets]
    if unknown:
        where = "the UNet or the text encoder" if text_encoder is not None else "the UNet (the text encoder is frozen)"
        raise LoraSetupError(
            f"lora_target_modules: {', '.join(unknown)} name no Linear or Conv2d layer of {where}. Use module "
            f"names such as {', '.join(DEFAULT_UNET_TARGETS)} (UNet) or {', '.join(DEFAULT_TEXT_TARGETS)} (text "
            "encoder); empty = all of these.")
    if not unet_targets:
        raise LoraSetupError(f"lora_target_modules: none of {', '.join(targets)} is in the UNet; name at least one "
                             f"UNet layer such as {', '.join(DEFAULT_UNET_TARGETS)}.")
    return unet_targets, text_targets


def add_lora_adapters(unet: torch.nn.Module, text_encoder: torch.nn.Module | Sequence[torch.nn.Module] | None,
                      settings: LoraSettings, family: str,
                      frozen_dtype: torch.dtype = torch.float32) -> dict[str, torch.nn.Module]:
    """Freeze the models, add LoRA adapters (text encoders only when given) and return the trained modules.

    ``text_encoder``: the text encoder, or the model's text encoders in order (SDXL has two; all are CLIP
    text models with the same layer names, and each gets the same targets). Only the adapters' weights
    require gradients, and they stay fp32; the frozen base weights are cast to ``frozen_dtype`` (fp16/bf16
    under mixed precision: half the memory of the largest part of the model).
    """
    from peft import LoraConfig

    from dreamcore.components import TEXT_ENCODER_NAMES

    text_encoders = [] if text_encoder is None else \
        [text_encoder] if isinstance(text_encoder, torch.nn.Module) else list(text_encoder)
    first_text_encoder = text_encoders[0] if text_encoders else None
    unet_targets, text_targets = split_targets(settings.target_modules, unet, first_text_encoder)
    if first_text_encoder is not None and get_family(family).fuses_text_attention:
        _check_sd2_text_targets(text_targets)
    trained = {"unet": unet}
    modules = [(unet, unet_targets)]
    for name, encoder in zip(TEXT_ENCODER_NAMES, text_encoders):
        trained[name] = encoder
        if text_targets:
            modules.append((encoder, text_targets))
        else:
            raise LoraSetupError("lora_target_modules: none of the names is in the text encoder, which is trained "
                                 f"(train_text_encoder); add {', '.join(DEFAULT_TEXT_TARGETS)} or freeze it.")
    for index, (module, targets) in enumerate(modules):
        module.requires_grad_(False)
        if next(module.parameters()).dtype != frozen_dtype:
            module.to(dtype=frozen_dtype)
        config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            init_lora_weights=True, target_modules=list(targets))
        # PEFT draws lora_A from the global generator; a private, seeded one makes runs repeatable
        # (and a resumed run identical to an uninterrupted one) whatever ran before in this process.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed + index)
            _inject_adapter(module, config)
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()  # fp32 master weights for the optimizer
    return trained


def _inject_adapter(module: torch.nn.Module, config: Any) -> None:
    if hasattr(module, "add_adapter") and hasattr(module, "set_adapters"):
        module.add_adapter(config, adapter_name=ADAPTER_NAME)  # diffusers' models (the UNet)
        return
    # The text encoder: transformers 5's own add_adapter refuses PEFT < 0.22, newer than PyPI offers today
    # (0.21.2), so the adapter goes in through PEFT directly and its config is kept where PEFT's helpers
    # (get/set_peft_model_state_dict) look for it.
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, module, adapter_name=ADAPTER_NAME)
    module.peft_config = {ADAPTER_NAME: config}


def has_lora(module: torch.nn.Module) -> bool:
    return bool(getattr(module, "peft_config", None))


def trainable_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a resumable state keeps of a trained module: its LoRA weights if it has adapters, else everything."""
    if has_lora(module):
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(module, adapter_name=ADAPTER_NAME)
    else:
        state = module.state_dict()
    return {key: value.detach().contiguous() for key, value in state.items()}


def load_trainable_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Inverse of ``trainable_state_dict``; a mismatch (a LoRA state into a full run or back) is an error."""
    if not has_lora(module):
        if any(".lora_A." in key for key in state):
            raise LoraSetupError(f"{source} holds LoRA weights but this run trains the full model; resume with "
                                 "use_lora as the saved run had it.")
        module.load_state_dict(state)
        return
    from peft import set_peft_model_state_dict

    expected = set(trainable_state_dict(module))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise LoraSetupError(
            f"{source} does not hold this run's LoRA weights ({len(missing)} missing, e.g. {missing[:1]}; "
            f"{len(extra)} unexpected, e.g. {extra[:1]}); resume with the same use_lora, lora_rank, "
            "lora_target_modules and train_text_encoder as the saved run.")
    set_peft_model_state_dict(module, state, adapter_name=ADAPTER_NAME)


def _check_sd2_text_targets(text_targets: tuple[str, ...]) -> None:
    chosen = SD2_FUSED_TEXT_TARGETS & set(text_targets)
    if chosen and chosen != SD2_FUSED_TEXT_TARGETS:
        raise LoraSetupError(
            f"lora_target_modules: on SD2 the text encoder's {', '.join(sorted(SD2_FUSED_TEXT_TARGETS))} go "
            f"together (the WebUI applies a LoRA to SD2's fused attention only when all four have one); "
            f"{', '.join(sorted(chosen))} alone would be ignored there. Name all four or none.")


def _adaptable_module_names(module: torch.nn.Module) -> set[str]:
    return {name for name, child in module.named_modules() if isinstance(child, (torch.nn.Linear, torch.nn.Conv2d))}


def _matches_any(target: str, names: set[str]) -> bool:
    # PEFT's rule for a plain name: the module's full name is it, or ends with "." + it.
    return any(name == target or name.endswith("." + target) for name in names)
