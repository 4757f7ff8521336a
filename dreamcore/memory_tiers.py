"""The memory tiers: one table of what each tier sets, what it does and the GPU memory it needs.

``memory_preset`` names a tier ("auto" picks one from the card's free memory when training starts on CUDA).
The config's choices and help, the tab's GPU presets, the benchmark's defaults and the out-of-memory advice are
all derived from ``MEMORY_TIERS``; nothing else names a tier. This module imports nothing of dreamcore's, so
the config can read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# bf16 mixed precision with TF32 matmuls and the fast step executor (no host syncs, fused kernels).
_FAST: dict[str, Any] = {"fast_step": True, "mixed_precision": "bf16", "allow_tf32": True}
# bf16 weights, AdamW applied inside backward by one fused kernel a weight (no gradients held, bf16 moments),
# the step in bf16 without autocast (no fp32 copies of activations around the norms: run J, 20.3 -> 22.4 it/s)
# and the whole step recorded as one CUDA graph and replayed (training/graph_step.py); activations kept
# channels-last through diffusers' .contiguous() calls (run T: 16GB 23.69 -> 24.54 it/s, the same memory).
_BF16_IN_BACKWARD: dict[str, Any] = {
    **_FAST, "pure_bf16": True, "optimizer_in_backward": True, "use_8bit_adam": False,
    "cuda_graph": True, "bf16_autocast": False, "keep_channels_last": True}
# The fastest settings on any card with room for them: Kahan-compensated bf16 weights (updates add up as in
# fp32; 8 bytes a weight). Until run H (2026-11-25) the 24GB tier kept fp32 weights with fused AdamW (16 it/s)
# and the 16GB tier 8-bit AdamW; the fused bf16 optimizer beats both in less memory.
_FASTEST: dict[str, Any] = {**_BF16_IN_BACKWARD, "gradient_checkpointing": False, "bf16_rounding": "kahan"}
# Where gradients must be held (gradient accumulation sums them over micro-batches), AdamW cannot run inside
# backward: the tiers of runs D-F, measured at 20.0 and 13.1 GiB. (Several processes keep the in-backward
# step: each gradient is averaged across them inside backward, gradient_average.py.)
_HOLDING: dict[str, Any] = {**_FAST, "gradient_checkpointing": False, "pure_bf16": False,
                            "optimizer_in_backward": False, "cuda_graph": False, "bf16_rounding": "stochastic",
                            "bf16_autocast": True}


@dataclass(frozen=True)
class MemoryTier:
    name: str  # the memory_preset value, e.g. "16GB"
    summary: str  # what it does, for help texts
    settings: dict[str, Any]  # the TrainConfig fields it sets
    # Free GPU memory (GiB) it needs: its peak device total (NVML, context included) measured on one H100 with
    # SD1.5 shapes (BENCHMARKS.md, runs K and M, 2026-11-25: 16GB 10.57 GiB, 12GB 8.75, 8GB 7.31) + ~10%.
    needs_gib: float
    # With gradient accumulation: the settings and need instead, or None where full gradients do not fit.
    holding_gradients: dict[str, Any] | None = None
    needs_gib_holding_gradients: float | None = None
    same_as: str = ""  # another tier's settings under a second name; "auto" picks it only to hold gradients

    def needs(self, holding_gradients: bool = False) -> float | None:
        """The free GPU memory (GiB) it needs, with gradients held or not (None: it cannot hold them)."""
        return self.needs_gib_holding_gradients if holding_gradients else self.needs_gib

    @property
    def preset_label(self) -> str:
        """The tab's preset for this tier, e.g. "GPU 16 GB"."""
        return f"GPU {self.name.removesuffix('GB')} GB" + (" and more" if self.same_as else "")


# The 16GB tier's need with clipping: 12.0 GiB on the device for the guide's command with its saves (BENCHMARKS.md,
# run GV2, 2026-12-03; 11.75 GiB before it clipped). The gradients held for clipping (2 bytes a trained weight)
# build up in backward while the activations are freed, so the peak rose by 0.25 GiB, not by their 1.9 GiB.
_CLIPPING_NEED_GIB = 12.0
# The 12GB and 8GB tiers keep no gradient (each update runs inside backward), so they cannot clip: in the quality
# lab the fp32 path without clipping learned faces ~0.05 less alike (BENCHMARKS.md, "Quality", run Q4).
_NOT_CLIPPED = "; each update runs inside backward, so no gradient is held and none is clipped (faces ~0.05 less " \
    "alike in the quality lab)"
MEMORY_TIERS: tuple[MemoryTier, ...] = (
    MemoryTier("24GB", "the 16GB tier's settings (nothing faster needs more memory)", dict(_FASTEST),
               _CLIPPING_NEED_GIB, {**_HOLDING, "use_8bit_adam": False}, 22.0, same_as="16GB"),
    MemoryTier("16GB", "bf16 weights with a Kahan remainder (updates add up as in fp32), one fused AdamW kernel "
               "a weight on the gradient clipped as in the exact path, the step recorded as a CUDA graph",
               dict(_FASTEST), _CLIPPING_NEED_GIB,
               {**_HOLDING, "use_8bit_adam": True}, 14.5),
    MemoryTier("12GB", "as 16GB with stochastic rounding instead of the remainder (2 bytes a weight less)"
               + _NOT_CLIPPED,
               {**_BF16_IN_BACKWARD, "gradient_checkpointing": False, "bf16_rounding": "stochastic",
                "max_grad_norm": 0.0}, 9.6),
    MemoryTier("8GB", "as 12GB plus gradient checkpointing and class images one at a time" + _NOT_CLIPPED,
               {**_BF16_IN_BACKWARD, "gradient_checkpointing": True, "bf16_rounding": "stochastic",
                "sample_batch_size": 1, "max_grad_norm": 0.0}, 8.1),
)
TIER_NAMES: tuple[str, ...] = tuple(tier.name for tier in MEMORY_TIERS)
# Settings a tier may change without overruling anyone: sample_batch_size only sizes the class-image batches.
TIER_FIELDS: frozenset[str] = frozenset(key for tier in MEMORY_TIERS for key in tier.settings) - {"sample_batch_size"}
# Settings that state a memory budget rather than a numeric method: the guide's `--mixed_precision fp16
# --use_8bit_adam` (and `--gradient_checkpointing`) say "make it fit", which any tier that fits the card does
# while training at least as exactly (bf16 weights with a remainder or stochastic rounding, not fp16 and 8-bit
# moments). "auto" picks a tier over them; only other choices (`--mixed_precision no`, a clipping norm, ...)
# keep the plain path.
MEMORY_BUDGET_VALUES: dict[str, tuple[Any, ...]] = {
    "mixed_precision": ("fp16", "bf16"), "use_8bit_adam": (True,), "gradient_checkpointing": (True,)}


def memory_tier(name: str) -> MemoryTier:
    """The tier named ``name``; KeyError names the tiers."""
    for tier in MEMORY_TIERS:
        if tier.name == name:
            return tier
    raise KeyError(f"memory_preset {name!r} is unknown; choose auto, none or one of {', '.join(TIER_NAMES)}")


def auto_tiers(holding_gradients: bool = False) -> list[MemoryTier]:
    """The tiers "auto" chooses from, largest need first."""
    if holding_gradients:  # there 24GB differs from 16GB (fp32 weights, fused AdamW)
        tiers = [tier for tier in MEMORY_TIERS if tier.holding_gradients is not None]
    else:
        tiers = [tier for tier in MEMORY_TIERS if not tier.same_as]
    return sorted(tiers, key=lambda tier: tier.needs(holding_gradients), reverse=True)


def pick_memory_tier(free_bytes: int, holding_gradients: bool = False) -> str:
    """The largest tier whose need fits in ``free_bytes`` of GPU memory (else the smallest)."""
    free_gib = free_bytes / 2**30
    tiers = auto_tiers(holding_gradients)
    for tier in tiers:
        if free_gib >= tier.needs(holding_gradients):
            return tier.name
    return tiers[-1].name


def smaller_tiers(name: str) -> list[MemoryTier]:
    """The tiers that need less memory than ``name`` (all of them for a name that is not a tier)."""
    tiers = auto_tiers()
    known = {tier.name: tier for tier in MEMORY_TIERS}
    if name not in known:
        return tiers
    return [tier for tier in tiers if tier.needs_gib < known[name].needs_gib]
