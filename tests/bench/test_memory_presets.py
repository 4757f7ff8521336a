"""Memory presets: every one is valid TrainConfig data, the pick follows free memory, 'none' changes nothing."""

from __future__ import annotations

import dataclasses

import pytest

from dreamcore.config import MEMORY_PRESET_CHOICES, TrainConfig
from dreamcore.memory_tiers import MEMORY_TIERS, pick_memory_tier
from dreamcore.presets import MEMORY_PRESETS, apply_memory_preset

NEEDS_GIB = {tier.name: tier.needs_gib for tier in MEMORY_TIERS}

GIB = 2**30


def test_every_memory_preset_is_a_choice_and_names_real_fields() -> None:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(MEMORY_PRESETS) == set(MEMORY_PRESET_CHOICES) - {"auto", "none"} == set(NEEDS_GIB)
    for name, overrides in MEMORY_PRESETS.items():
        assert set(overrides) <= fields, (name, set(overrides) - fields)


@pytest.mark.parametrize("name", list(MEMORY_PRESETS))
def test_every_memory_preset_gives_a_valid_recipe(name: str, tmp_path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(b"x")
    guide = TrainConfig(pretrained_model_name_or_path=str(tmp_path), instance_data_dir=str(photos),
                        instance_prompt="photo of ukj person", class_prompt="photo of a person",
                        with_prior_preservation=True, train_text_encoder=True, mixed_precision="fp16",
                        use_8bit_adam=True, output_dir=str(tmp_path / "out"), memory_preset=name)
    resolved, message = apply_memory_preset(guide, free_bytes=None)
    assert resolved.problems() == []
    assert resolved.memory_preset == name and f"memory preset {name}" in message
    assert resolved.train_text_encoder  # every tier trains the text encoder, as the guide does
    assert resolved.mixed_precision != "fp16"  # bf16: no loss scaling, no fp16 overflow to NaN


@pytest.mark.parametrize("free_gib, expected", [
    (80, "16GB"), (NEEDS_GIB["16GB"] + 0.01, "16GB"), (NEEDS_GIB["16GB"] - 0.1, "12GB"),
    (NEEDS_GIB["12GB"] + 0.01, "12GB"), (NEEDS_GIB["12GB"] - 0.1, "8GB"), (7.5, "8GB"), (3, "8GB")])
def test_pick_follows_free_memory(free_gib: float, expected: str) -> None:
    assert pick_memory_tier(int(free_gib * GIB)) == expected  # 24GB names the 16GB settings: never picked


def test_an_alias_tier_has_the_settings_and_need_of_the_tier_it_names() -> None:
    for alias, tier in ((t.name, t.same_as) for t in MEMORY_TIERS if t.same_as):
        assert MEMORY_PRESETS[alias] == MEMORY_PRESETS[tier] and NEEDS_GIB[alias] == NEEDS_GIB[tier]


@pytest.mark.parametrize("free_gib, expected", [(80, "24GB"), (22.0, "24GB"), (21.9, "16GB"), (3, "16GB")])
def test_pick_with_gradients_held_follows_free_memory(free_gib: float, expected: str) -> None:
    assert pick_memory_tier(int(free_gib * GIB), holding_gradients=True) == expected


def _speed_problems(config: TrainConfig) -> list[str]:
    fields = ("optimizer_in_backward", "cuda_graph", "pure_bf16", "bf16_rounding", "max_grad_norm", "use_8bit")
    return [p for p in config.problems() if p.startswith(fields)]


def test_gradient_accumulation_holds_gradients_in_the_large_tiers() -> None:
    """(Several processes keep the in-backward tiers: tests/training/test_multiprocess.py.)"""
    alone, _ = apply_memory_preset(TrainConfig(memory_preset="24GB"), free_bytes=80 * GIB)
    assert alone.optimizer_in_backward and alone.pure_bf16 and alone.cuda_graph and alone.bf16_rounding == "kahan"
    assert _speed_problems(alone) == []
    config = TrainConfig(gradient_accumulation_steps=4)
    held, message = apply_memory_preset(config, free_bytes=80 * GIB)
    assert held.memory_preset == "24GB" and "gradient accumulation" in message, message
    assert not held.optimizer_in_backward and not held.pure_bf16 and not held.cuda_graph
    assert held.max_grad_norm == 1.0 and _speed_problems(held) == []
    small, _ = apply_memory_preset(config.replace(memory_preset="16GB"), free_bytes=None)
    assert small.use_8bit_adam and not small.optimizer_in_backward


@pytest.mark.parametrize("chosen, named", [
    ({"mixed_precision": "no"}, "mixed_precision"),
    ({"max_grad_norm": 1.0}, "max_grad_norm"),  # a default typed out is a choice too
    ({"mixed_precision": "fp16", "fast_step": False}, "fast_step"),  # fp16 alone is a budget, not a method
])
def test_auto_keeps_settings_the_user_chose(chosen: dict, named: str) -> None:
    config = TrainConfig(**chosen)
    kept, message = apply_memory_preset(config, free_bytes=80 * GIB)
    assert kept is config
    assert f"kept your own settings ({named} given)" in message


def test_the_guides_memory_flags_ask_for_a_budget_that_a_tier_keeps() -> None:
    config = TrainConfig(mixed_precision="fp16", use_8bit_adam=True, gradient_checkpointing=True)  # the guide's
    tiered, message = apply_memory_preset(config, free_bytes=80 * GIB)
    assert tiered.memory_preset == "16GB" and tiered.optimizer_in_backward and tiered.mixed_precision == "bf16"
    assert "gradient_checkpointing=True, mixed_precision=fp16, use_8bit_adam=True ask for a memory budget" in message
    assert "memory_preset none to run them literally" in message
    assert apply_memory_preset(config.replace(memory_preset="none"), free_bytes=80 * GIB)[0].mixed_precision == "fp16"
    # the same values set by no one (a preset's, or the defaults) are no budget statement to report
    _, message = apply_memory_preset(config.replace(chosen_settings=()), free_bytes=80 * GIB)
    assert "memory budget" not in message and "memory_preset none to keep your own settings" in message


def test_auto_picks_only_on_a_gpu_and_says_which() -> None:
    config = TrainConfig(sample_batch_size=2)
    unchanged, message = apply_memory_preset(config, free_bytes=None)  # no CUDA: nothing changes
    assert unchanged is config and message == ""
    picked, message = apply_memory_preset(config, free_bytes=9 * GIB)
    assert picked.memory_preset == "8GB" and picked.pure_bf16 and picked.optimizer_in_backward
    assert picked.gradient_checkpointing and not picked.use_8bit_adam and picked.max_grad_norm == 0
    assert "8GB" in message and "9.0 GiB free" in message and "memory_preset none" in message
    lora = TrainConfig(use_lora=True)
    assert apply_memory_preset(lora, free_bytes=10 * GIB) == (lora, "")  # LoRA presets keep their settings


def test_none_keeps_the_settings_and_a_small_card_is_warned() -> None:
    config = TrainConfig(memory_preset="none", mixed_precision="fp16")
    assert apply_memory_preset(config, free_bytes=80 * GIB) == (config, "")
    _, message = apply_memory_preset(TrainConfig(), free_bytes=4 * GIB)
    assert "Warning: only 4.0 GiB is free" in message and "needs about 8 GiB" in message


def test_contradicting_speed_settings_are_named() -> None:
    problems = " ".join(TrainConfig(pure_bf16=True, memory_preset="none").problems())
    assert "pure_bf16: needs optimizer_in_backward" in problems
    problems = " ".join(TrainConfig(bf16_rounding="kahan", memory_preset="none").problems())
    assert "bf16_rounding: 'kahan' compensates bf16 weights; turn pure_bf16 on" in problems
    problems = " ".join(TrainConfig(optimizer_in_backward=True, max_grad_norm=1.0, gradient_accumulation_steps=2,
                                    mixed_precision="fp16", use_8bit_adam=True).problems())
    for field in ("gradient_accumulation_steps 1", "bf16", "use_8bit_adam off"):
        assert field in problems
    assert "max_grad_norm" not in problems  # clipping holds the gradients until backward ends


def test_the_large_tiers_clip_as_the_exact_path_and_the_small_ones_say_they_cannot() -> None:
    from dreamcore.memory_tiers import memory_tier

    for name in ("24GB", "16GB"):
        tiered, _ = apply_memory_preset(TrainConfig(memory_preset=name), free_bytes=80 * GIB)
        assert tiered.optimizer_in_backward and tiered.max_grad_norm == TrainConfig().max_grad_norm > 0
    for name in ("12GB", "8GB"):
        small, _ = apply_memory_preset(TrainConfig(memory_preset=name), free_bytes=80 * GIB)
        assert small.max_grad_norm == 0 and "none is clipped" in memory_tier(name).summary


def test_a_named_tier_keeps_what_the_person_set() -> None:
    chosen = TrainConfig(memory_preset="16GB", bf16_autocast=True, mixed_precision="fp16")
    assert chosen.chose("bf16_autocast") and chosen.chose("mixed_precision")
    tiered, message = apply_memory_preset(chosen, free_bytes=80 * GIB)
    # the choice of how the step computes stays; fp16 only states a memory budget, which the tier keeps in bf16
    assert tiered.bf16_autocast and tiered.pure_bf16 and tiered.mixed_precision == "bf16"
    assert "Kept your own bf16_autocast=True" in message and "bf16_autocast=False" not in message
    unchosen, message = apply_memory_preset(TrainConfig(memory_preset="16GB"), free_bytes=80 * GIB)
    assert not unchosen.bf16_autocast and "Kept your own" not in message
