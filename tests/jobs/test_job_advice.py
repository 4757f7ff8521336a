"""What a failed job tells the person: advice that fits the settings the run had."""

from __future__ import annotations

from dreamcore.config import TrainConfig
from dreamcore.jobs.advice import gpu_memory_advice
from dreamcore.presets import MEMORY_PRESETS


def test_out_of_memory_advice_offers_only_changes_that_fit_the_tier() -> None:
    tier_16gb = TrainConfig(memory_preset="none", train_text_encoder=True, **MEMORY_PRESETS["16GB"])
    advice = gpu_memory_advice(tier_16gb)
    assert "use_8bit_adam" not in advice  # contradicts the in-backward AdamW (the config would refuse it)
    assert "bf16_rounding to stochastic" in advice and "gradient_checkpointing" in advice
    tier_8gb = TrainConfig(memory_preset="none", train_text_encoder=True, **MEMORY_PRESETS["8GB"])
    advice = gpu_memory_advice(tier_8gb)
    assert "use_8bit_adam" not in advice and "bf16_rounding" not in advice and "gradient_checkpointing" not in advice
    assert "train_text_encoder" in advice
    assert "use_8bit_adam" in gpu_memory_advice(TrainConfig())  # the plain AdamW path: 8-bit states help
