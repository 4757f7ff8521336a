"""Named starting points for a run: TrainConfig field overrides, kept as data.

The WebUI tab and the standalone app offer these by name; a test checks every preset against TrainConfig,
so a renamed field cannot leave a preset silently wrong. A preset never names the photos, prompts, model or
output folder: those belong to the person, not to the recipe.
"""

from __future__ import annotations

from typing import Any

from dreamcore.config import DEFAULT_LEARNING_RATE, GUIDE_LEARNING_RATE, TrainConfig
from dreamcore.families.sdxl import SDXL
from dreamcore.memory_tiers import (MEMORY_BUDGET_VALUES, MEMORY_TIERS, TIER_FIELDS, TIER_NAMES, memory_tier,
                                    pick_memory_tier)

PORTRAIT_PRESET = "Portrait"
GUIDE_PRESET = "The guide's recipe"

# The guide's recipe (the DreamBooth Colab guide people follow): prior preservation with 12 class images, seed
# 1337, 512 px, batch 1, text encoder trained, fp16, 8-bit Adam, lr 1e-6 constant without warm-up, 100 steps
# per photo (max_train_steps left empty), a checkpoint and samples every 500 steps.
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

# By GPU memory: dreamcore's recipe with one of the memory tiers (dreamcore/memory_tiers.py, measured on an
# H100). Without a preset, memory_preset "auto" picks the tier from the card's free memory at start; these
# fix the tier, e.g. for a card shared with the WebUI.
PRESETS: dict[str, dict[str, Any]] = {
    PORTRAIT_PRESET: _PORTRAIT,
    GUIDE_PRESET: _GUIDE,
    **{tier.preset_label: {**_PORTRAIT, "memory_preset": tier.name} for tier in reversed(MEMORY_TIERS)},
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


# --- Memory presets ----------------------------------------------------------------------------------
# The tiers themselves are one table, dreamcore/memory_tiers.py; this view of it is what the bench and tests use.
MEMORY_PRESETS: dict[str, dict[str, Any]] = {tier.name: dict(tier.settings) for tier in MEMORY_TIERS}


def cuda_free_bytes() -> int | None:
    """Free memory of the current CUDA device, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)


def choices_that_keep_the_plain_path(config: TrainConfig) -> list[str]:
    """The tier settings the person chose that "auto" must not overrule: all but memory-budget statements."""
    return [name for name in sorted(TIER_FIELDS) if config.chose(name)
            and getattr(config, name) not in MEMORY_BUDGET_VALUES.get(name, ())]


def budget_choices(config: TrainConfig) -> list[str]:
    """The person's settings that only state a memory budget (the guide's fp16 and 8-bit Adam), as flags."""
    return [f"{name}={getattr(config, name)}" for name in sorted(MEMORY_BUDGET_VALUES) if config.chose(name)
            and getattr(config, name) in MEMORY_BUDGET_VALUES[name]]


def apply_memory_preset(config: TrainConfig, free_bytes: int | None,
                        memory_scale: float = 1.0) -> tuple[TrainConfig, str]:
    """``config`` with its memory preset applied, and a line saying what was picked and changed ("" if none).

    "none" keeps the config as given; "auto" picks from ``free_bytes`` (None = no CUDA GPU, or a LoRA run:
    nothing is changed) unless the person chose a tier setting that is more than a memory budget
    (``choices_that_keep_the_plain_path``); a tier name is applied wherever training runs. The returned config
    names the tier applied, so train_config.json records it. With gradient accumulation the 24GB and 16GB
    tiers hold gradients. ``memory_scale``: the model's need against SD1.5's, for which the tiers were measured
    (``ModelFamily.memory_scale``: SDXL 3), so "auto" picks as if the card had that much less memory.
    """
    requested = config.memory_preset
    holding_gradients = config.gradient_accumulation_steps != 1
    if requested == "none" or (requested == "auto" and (free_bytes is None or config.use_lora)):
        return config, ""  # LoRA runs keep their own settings: the tiers are for full fine-tuning
    if requested == "auto":
        kept = choices_that_keep_the_plain_path(config)
        if kept:  # "auto" picks a tier only where no one chose how the step computes
            return config, (f"memory preset: kept your own settings ({', '.join(kept)} given); set memory_preset "
                            f"to one of {', '.join(TIER_NAMES)} to use a tier instead.")
    name = pick_memory_tier(int(free_bytes / memory_scale), holding_gradients) if requested == "auto" else requested
    tier = memory_tier(name)
    overrides, needs = dict(tier.settings), tier.needs_gib * memory_scale
    why = ""
    if holding_gradients and tier.holding_gradients is not None:
        overrides, needs = dict(tier.holding_gradients), tier.needs_gib_holding_gradients * memory_scale
        why = " - gradients are held for gradient accumulation, so AdamW runs after backward"
    # A tier named by the person sets what they left open; what they set themselves (other than a memory
    # budget) stays theirs, as with "auto", and validation says if it cannot go with the tier.
    kept = [] if requested == "auto" else [key for key in overrides if config.chose(key) and
                                           getattr(config, key) not in MEMORY_BUDGET_VALUES.get(key, ())]
    for key in kept:
        overrides.pop(key)
    changed = {key: value for key, value in overrides.items() if getattr(config, key) != value}
    resolved = config.replace(**overrides, memory_preset=name)
    how = (f"picked from {free_bytes / 2**30:.1f} GiB free GPU memory" if requested == "auto"
           else "as asked")
    changes = ", ".join(f"{key}={value}" for key, value in changed.items()) or "no setting changed"
    message = f"memory preset {name} ({how}{why}): {changes}."
    if kept:
        message += " Kept your own " + ", ".join(f"{key}={getattr(config, key)}" for key in kept) + "."
    budget = budget_choices(config) if requested == "auto" else []
    if budget:
        message += (f" Your {', '.join(budget)} ask for a memory budget, which this tier keeps while training at "
                    "least as exactly; set memory_preset none to run them literally (several times slower).")
    else:
        message += " Set memory_preset none to keep your own settings."
    if free_bytes is not None and free_bytes / 2**30 < needs:
        message += (f" Warning: only {free_bytes / 2**30:.1f} GiB is free and this preset needs about "
                    f"{needs:.0f} GiB{' (an estimate for this model)' if memory_scale != 1 else ''}; close other "
                    "GPU programs if training runs out of memory.")
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


# --- SDXL presets -------------------------------------------------------------------------------------
# SDXL at its 1024 px. LoRA is the default for SDXL: its frozen base in fp16 is ~5 GB and the adapters train
# in a few more, where a full fine-tune of its UNet (three times SD1.5's) needs about three times a tier's
# memory (the tiers were measured with SD1.5). "SDXL full" names the tightest tier, which an estimate puts
# near 24 GB for SDXL (unmeasured).
SDXL_LORA_PRESET = "SDXL LoRA"
SDXL_FULL_PRESET = "SDXL full"
PRESETS[SDXL_LORA_PRESET] = {**_LORA, "resolution": 1024}
PRESETS[SDXL_FULL_PRESET] = {**_PORTRAIT, "resolution": 1024, "memory_preset": MEMORY_TIERS[-1].name,
                             "sample_batch_size": 1}
# The preset the tab starts from for a model of each family; any other family: PORTRAIT_PRESET.
FAMILY_DEFAULT_PRESETS: dict[str, str] = {SDXL.name: SDXL_LORA_PRESET}


def default_preset(family: str) -> str:
    """The preset a run of a model of ``family`` starts from."""
    return FAMILY_DEFAULT_PRESETS.get(family, PORTRAIT_PRESET)
