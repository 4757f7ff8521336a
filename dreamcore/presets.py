"""Named starting points for a run: TrainConfig field overrides, kept as data.

The WebUI tab and the standalone app offer these by name; a test checks every preset against TrainConfig,
so a renamed field cannot leave a preset silently wrong. A preset never names the photos, prompts, model or
output folder: those belong to the person, not to the recipe.
"""

from __future__ import annotations

from typing import Any

from dreamcore.config import DEFAULT_LEARNING_RATE, GUIDE_LEARNING_RATE, TrainConfig

PORTRAIT_PRESET = "Portrait"
GUIDE_PRESET = "The guide's recipe"

# The guide's recipe (../shared/docs/field.md): prior preservation with 12 class images, seed 1337, 512 px,
# batch 1, text encoder trained, fp16, 8-bit Adam, lr 1e-6 constant without warm-up, 100 steps per photo
# (max_train_steps left empty), a checkpoint and samples every 500 steps.
_GUIDE: dict[str, Any] = {
    "with_prior_preservation": True,
    "prior_loss_weight": 1.0,
    "num_class_images": 12,
    "seed": 1337,
    "resolution": 512,
    "train_batch_size": 1,
    "train_text_encoder": True,
    "mixed_precision": "fp16",
    "use_8bit_adam": True,
    "learning_rate": GUIDE_LEARNING_RATE,
    "lr_scheduler": "constant",
    "lr_warmup_steps": 0,
    "max_train_steps": None,
    "save_interval": 500,
}
# dreamcore's recipe, the tab's default: the guide's, with what the quality lab showed binds the face while
# keeping the base model's knowledge (BENCHMARKS.md, "Quality"): the text encoder frozen but for the rare
# token's embedding (train_token_embedding, empty = on here), and the UNet at half the guide's rate.
_PORTRAIT: dict[str, Any] = {**_GUIDE, "train_text_encoder": False, "learning_rate": DEFAULT_LEARNING_RATE}

# By GPU memory: dreamcore's recipe with one of the memory tiers below (MEMORY_PRESETS, measured on an
# H100). Without a preset, memory_preset "auto" picks the tier from the card's free memory at start; these
# fix the tier, e.g. for a card shared with the WebUI.
PRESETS: dict[str, dict[str, Any]] = {
    PORTRAIT_PRESET: _PORTRAIT,
    GUIDE_PRESET: _GUIDE,
    "GPU 8 GB": {**_PORTRAIT, "memory_preset": "8GB"},
    "GPU 12 GB": {**_PORTRAIT, "memory_preset": "12GB"},
    "GPU 16 GB": {**_PORTRAIT, "memory_preset": "16GB"},
    "GPU 24 GB and more": {**_PORTRAIT, "memory_preset": "24GB"},
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_overrides(name: str) -> dict[str, Any]:
    """The field overrides of a preset (a copy). Raises KeyError naming the known presets."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def apply_preset(name: str, config: TrainConfig | None = None) -> TrainConfig:
    """``config`` (default: TrainConfig()) with the preset's fields set; other fields are kept."""
    base = (config or TrainConfig()).to_dict()
    base.update(preset_overrides(name))
    return TrainConfig.from_dict(base, source=f"preset {name!r}")


# --- Memory presets (issue 7) ------------------------------------------------------------------------
# What each tier of GPU memory runs for the guide's recipe with the text encoder trained. ``memory_preset``
# in TrainConfig names one ("auto" picks it from the card's free memory when training starts on CUDA).
# Measured peaks on one H100 (BENCHMARKS.md) justify each tier's NEEDS_GIB below.
_FAST = {"fast_step": True, "mixed_precision": "bf16", "allow_tf32": True}
# bf16 weights, AdamW applied inside backward by one fused kernel a weight (no gradients held, bf16 moments),
# the step in bf16 without autocast (no fp32 copies of activations around the norms: run J, 20.3 -> 22.4 it/s)
# and the whole step recorded as one CUDA graph and replayed (training/graph_step.py); activations kept
# channels-last through diffusers' .contiguous() calls (run T: 16GB 23.69 -> 24.54 it/s, the same memory).
_BF16_IN_BACKWARD = {**_FAST, "pure_bf16": True, "optimizer_in_backward": True, "use_8bit_adam": False,
                     "max_grad_norm": 0.0, "cuda_graph": True, "bf16_autocast": False, "keep_channels_last": True}
# The fastest settings on any card with room for them: Kahan-compensated bf16 weights (updates add up as in
# fp32; 8 bytes a weight). Measured: BENCHMARKS.md. Until run H (2026-11-25) the 24GB tier kept fp32 weights with fused
# AdamW (16 it/s) and the 16GB tier 8-bit AdamW; the fused bf16 optimizer beats both in less memory.
_FASTEST = {**_BF16_IN_BACKWARD, "gradient_checkpointing": False, "bf16_rounding": "kahan"}
MEMORY_PRESETS: dict[str, dict[str, Any]] = {
    "24GB": dict(_FASTEST),  # the same settings as 16GB: nothing faster needs more memory
    "16GB": dict(_FASTEST),
    # bf16 weights with stochastic rounding instead of the Kahan remainder (6 bytes a weight).
    "12GB": {**_BF16_IN_BACKWARD, "gradient_checkpointing": False, "bf16_rounding": "stochastic"},
    # ... plus gradient checkpointing of UNet and text encoder, and class images one at a time.
    "8GB": {**_BF16_IN_BACKWARD, "gradient_checkpointing": True, "bf16_rounding": "stochastic",
            "sample_batch_size": 1},
}
# The tier "auto" never picks: it names the 16GB tier's settings (saved configs and the tab's "GPU 24 GB and
# more" preset use the name).
SAME_AS = {"24GB": "16GB"}
# Free GPU memory (GiB) each tier needs: its peak device total (NVML, context included) measured on one H100
# with SD1.5 shapes (BENCHMARKS.md, runs K and M, 2026-11-25) plus ~10% headroom. Measured peaks, training and
# whole run alike: 16GB 10.57 GiB, 12GB 8.75 GiB, 8GB 7.31 GiB (run K).
NEEDS_GIB: dict[str, float] = {"24GB": 11.6, "16GB": 11.6, "12GB": 9.6, "8GB": 8.1}

# Where gradients must be held - gradient accumulation sums them over micro-batches - AdamW cannot run inside
# backward. The 24GB and 16GB tiers then run these settings (the tiers of runs D-F, measured: 20.0 and
# 13.1 GiB); 12GB and 8GB cannot hold full gradients, and the config says so. (Several processes keep the
# in-backward tiers: each gradient is averaged across them inside backward, gradient_average.py.)
HOLDING_GRADIENTS: dict[str, dict[str, Any]] = {
    "24GB": {**_FAST, "use_8bit_adam": False, "gradient_checkpointing": False, "pure_bf16": False,
             "optimizer_in_backward": False, "cuda_graph": False, "bf16_rounding": "stochastic",
             "bf16_autocast": True},
    "16GB": {**_FAST, "use_8bit_adam": True, "gradient_checkpointing": False, "pure_bf16": False,
             "optimizer_in_backward": False, "cuda_graph": False, "bf16_rounding": "stochastic",
             "bf16_autocast": True},
}
NEEDS_GIB_HOLDING_GRADIENTS: dict[str, float] = {"24GB": 22.0, "16GB": 14.5}


def pick_memory_preset(free_bytes: int, holding_gradients: bool = False) -> str:
    """The largest memory preset whose need fits in ``free_bytes`` of GPU memory (else the smallest)."""
    free_gib = free_bytes / 2**30
    if holding_gradients:
        tiers = NEEDS_GIB_HOLDING_GRADIENTS
    else:
        tiers = {name: need for name, need in NEEDS_GIB.items() if name not in SAME_AS}
    for name, need in sorted(tiers.items(), key=lambda item: -item[1]):
        if free_gib >= need:
            return name
    return min(tiers, key=tiers.__getitem__)


def cuda_free_bytes() -> int | None:
    """Free memory of the current CUDA device, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)


def settings_given_by_user(config: TrainConfig) -> list[str]:
    """The memory-tier settings that differ from TrainConfig's defaults, i.e. that someone chose."""
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    # sample_batch_size only sizes the class-image batches: a tier may lower it without overruling a choice.
    tier_fields = sorted({key for overrides in MEMORY_PRESETS.values() for key in overrides} - {"sample_batch_size"})
    return [key for key in tier_fields if getattr(config, key) != defaults[key]]


def apply_memory_preset(config: TrainConfig, free_bytes: int | None) -> tuple[TrainConfig, str]:
    """``config`` with its memory preset applied, and a line saying what was picked and changed ("" if none).

    "none" keeps the config as given; "auto" picks from ``free_bytes`` (None = no CUDA GPU, or a LoRA run:
    nothing is changed); a tier name is applied wherever training runs. The returned config names the tier applied,
    so train_config.json records it. With gradient accumulation the 24GB and 16GB tiers hold gradients
    (``HOLDING_GRADIENTS``).
    """
    requested = config.memory_preset
    holding_gradients = config.gradient_accumulation_steps != 1
    if requested == "none" or (requested == "auto" and (free_bytes is None or config.use_lora)):
        return config, ""  # LoRA runs keep their own settings: the tiers are for full fine-tuning
    if requested == "auto":
        given = settings_given_by_user(config)
        if given:  # "auto" picks a tier only for people who did not choose these settings themselves
            return config, (f"memory preset: kept your own settings ({', '.join(given)} given); set memory_preset "
                            f"to one of {', '.join(MEMORY_PRESETS)} to use a tier instead.")
    name = pick_memory_preset(free_bytes, holding_gradients) if requested == "auto" else requested
    if name not in MEMORY_PRESETS:
        raise KeyError(f"memory_preset {name!r} is unknown; choose auto, none or one of {', '.join(MEMORY_PRESETS)}")
    overrides = dict(MEMORY_PRESETS[name])
    needs = NEEDS_GIB[name]
    why = ""
    if holding_gradients and name in HOLDING_GRADIENTS:
        overrides, needs = dict(HOLDING_GRADIENTS[name]), NEEDS_GIB_HOLDING_GRADIENTS[name]
        why = " - gradients are held for gradient accumulation, so AdamW runs after backward"
    changed = {key: value for key, value in overrides.items() if getattr(config, key) != value}
    resolved = config.replace(**overrides, memory_preset=name)
    how = (f"picked from {free_bytes / 2**30:.1f} GiB free GPU memory" if requested == "auto"
           else "as asked")
    changes = ", ".join(f"{key}={value}" for key, value in changed.items()) or "no setting changed"
    message = (f"memory preset {name} ({how}{why}): {changes}. Set memory_preset none to keep your own "
               "settings.")
    if free_bytes is not None and free_bytes / 2**30 < needs:
        message += (f" Warning: only {free_bytes / 2**30:.1f} GiB is free and this preset needs about "
                    f"{needs:.0f} GiB; close other GPU programs if training runs out of memory.")
    return resolved, message


# --- LoRA presets (issue 8) ---------------------------------------------------------------------------
# The guide's recipe trained as DreamBooth-LoRA (PEFT adapters on the UNet's and the text encoder's attention
# and feed-forward layers, rank 16: in the quality lab LoRA on the attention alone learned a face poorly at any
# rate; BENCHMARKS.md, "Quality"). LoRA wants ~100x the guide's learning rate.
# With use_lora the frozen base weights are held in fp16 (mixed precision): SD1.5's UNet and text encoder
# in fp16 plus the fp32 VAE are ~2.3 GB, the adapters and their 8-bit AdamW states a few tens of MB; gradient
# checkpointing keeps the activations small. (Class images are generated before that, by the fp32 model.)
LORA_PRESET = "lora-5GB"
_LORA: dict[str, Any] = {
    **_GUIDE, "use_lora": True, "lora_rank": 16, "lora_alpha": 16.0, "lora_dropout": 0.0,
    "lora_text_encoder": True, "train_text_encoder": True, "learning_rate": 1e-4, "gradient_checkpointing": True,
    "use_8bit_adam": True, "mixed_precision": "fp16", "sample_batch_size": 1,
}
PRESETS[LORA_PRESET] = _LORA
PRESETS["lora-8GB"] = {**_LORA, "gradient_checkpointing": False, "sample_batch_size": 2}
