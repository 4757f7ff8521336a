"""Every preset is a valid set of TrainConfig overrides; the guide's preset is the guide's recipe, the portrait
preset dreamcore's."""

from __future__ import annotations

import pytest

from dreamcore.config import TrainConfig, coerce_field_value, config_fields
from dreamcore.presets import GUIDE_PRESET, PORTRAIT_PRESET, PRESETS, apply_preset, preset_names, preset_overrides

FIELDS = {f.name: f for f in config_fields()}
PERSONAL = {"pretrained_model_name_or_path", "instance_data_dir", "instance_prompt", "class_prompt",
            "class_data_dir", "output_dir", "model_name", "concepts_list", "resume_from_checkpoint"}


@pytest.mark.parametrize("name", preset_names())
def test_preset_fields_exist_have_the_right_types_and_validate(name: str) -> None:
    overrides = preset_overrides(name)
    assert set(overrides) <= set(FIELDS), set(overrides) - set(FIELDS)
    assert not set(overrides) & PERSONAL, "a preset must not name photos, prompts, models or folders"
    for key, value in overrides.items():
        assert coerce_field_value(FIELDS[key], value) == value
    config = apply_preset(name)
    for key, value in overrides.items():
        assert getattr(config, key) == value
    # Everything except the personal fields validates (the problems left are the missing model/photos).
    problems = config.problems()
    assert all(p.startswith(("pretrained_model_name_or_path", "instance")) for p in problems), problems


def test_guide_preset_is_the_guides_recipe() -> None:
    config = apply_preset(GUIDE_PRESET)
    assert (config.with_prior_preservation, config.prior_loss_weight, config.num_class_images) == (True, 1.0, 12)
    assert (config.seed, config.resolution, config.train_batch_size) == (1337, 512, 1)
    assert config.train_text_encoder and config.use_8bit_adam and config.mixed_precision == "fp16"
    assert (config.learning_rate, config.lr_scheduler, config.lr_warmup_steps) == (1e-6, "constant", 0)
    assert config.max_train_steps is None  # 100 steps per photo
    assert not config.token_embedding_trains  # the whole text encoder trains, as the guide says


def test_portrait_preset_is_the_guides_recipe_with_dreamcores_text_encoder_and_rate() -> None:
    guide, portrait = preset_overrides(GUIDE_PRESET), preset_overrides(PORTRAIT_PRESET)
    differing = {key for key in guide.keys() | portrait.keys() if guide.get(key) != portrait.get(key)}
    assert differing == {"train_text_encoder", "learning_rate"}
    config = apply_preset(PORTRAIT_PRESET, TrainConfig(instance_prompt="photo of sks person",
                                                        class_prompt="photo of a person"))
    assert not config.train_text_encoder and config.token_embedding_trains
    assert config.learning_rate == guide["learning_rate"] / 2


def test_gpu_presets_name_the_memory_tiers_in_order() -> None:
    from dreamcore.memory_tiers import MEMORY_TIERS, memory_tier

    tiers = [PRESETS[name]["memory_preset"] for name in preset_names() if name.startswith("GPU ")]
    assert set(tiers) == {tier.name for tier in MEMORY_TIERS}
    needs = [memory_tier(tier).needs_gib for tier in tiers]
    assert needs == sorted(needs)


def test_apply_preset_keeps_other_fields_and_unknown_names_are_refused() -> None:
    base = TrainConfig(instance_prompt="photo of sks dog", save_infer_steps=7)
    config = apply_preset("GPU 12 GB", base)
    assert config.instance_prompt == "photo of sks dog" and config.save_infer_steps == 7
    assert config.memory_preset == "12GB" and base.memory_preset == "auto"
    with pytest.raises(KeyError, match="Portrait"):
        preset_overrides("GPU 2 GB")
