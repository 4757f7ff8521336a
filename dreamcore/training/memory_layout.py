"""How the trained modules are held in memory before the optimizer sees them: pure bf16 weights and
channels-last, as the config's speed and memory settings ask (every step executor uses it)."""

from __future__ import annotations

import torch

from dreamcore.components import ModelComponents
from dreamcore.config import TrainConfig


def apply_memory_layout(models: ModelComponents, config: TrainConfig, device: torch.device) -> None:
    """Cast and lay out the trained modules as the config asks, before the optimizer sees them."""
    if config.pure_bf16:
        models.unet.to(device, dtype=torch.bfloat16)
        if config.text_encoder_trains:
            for text_encoder in models.text_encoders().values():
                text_encoder.to(device, dtype=torch.bfloat16)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # give the fp32 copies back, so the device total shows the real need
    if config.fast_step and config.channels_last and device.type == "cuda":
        models.unet.to(memory_format=torch.channels_last)
