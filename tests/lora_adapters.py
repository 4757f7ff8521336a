"""PEFT LoRA adapters on a tiny model's UNet and text encoders, as a trained run leaves them (lora_B not zero)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dreamcore.components import ModelComponents


def with_adapters(model: ModelComponents, unet_targets: Sequence[str], text_targets: Sequence[str],
                  unet_alpha: float = 2.0, seed: int = 0) -> ModelComponents:
    """``model`` with rank-2 adapters on ``unet_targets`` (alpha ``unet_alpha``) and on every text encoder's
    ``text_targets`` (alpha 2), their lora_B drawn from N(0, 0.3)."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(seed)
    model.unet.add_adapter(LoraConfig(r=2, lora_alpha=unet_alpha, target_modules=list(unet_targets)),
                           adapter_name="default")
    for encoder in model.text_encoders().values():
        config = LoraConfig(r=2, lora_alpha=2, target_modules=list(text_targets))
        inject_adapter_in_model(config, encoder, adapter_name="default")
        encoder.peft_config = {"default": config}
    with torch.no_grad():
        for module in (model.unet, *model.text_encoders().values()):
            for name, parameter in module.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.3)
    return model
