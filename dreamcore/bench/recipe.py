"""What a benchmark run trains: a model of one family's published shapes (SD1.5 by default, SDXL, ...) with random
weights, synthetic photos at the family's resolution, and the guide's recipe or a named preset.

Same shapes and FLOPs as the real model, so speed and memory are real; image quality is not measured.
Everything is built in code from the shipped configs: nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamcore.config import TrainConfig
from dreamcore.families.base import ModelFamily
from dreamcore.families.registry import DEFAULT_FAMILY
from dreamcore.presets import GUIDE_PRESET, MEMORY_PRESETS, PRESETS, preset_overrides

GUIDE = "guide"  # the guide's recipe exactly (fp16, 8-bit AdamW), through the plain step: the baseline
# The guide's command as a person types it, end to end: a single-file base with a separate VAE file, its flags
# (fp16, 8-bit Adam: memory_preset auto picks a tier over them), 12 class images, a checkpoint, samples and a
# resumable state every 500 steps, then the export.
GUIDE_VERBATIM = "guide-verbatim"
GUIDE_COMMAND_FLAGS = ("pretrained_model_name_or_path", "pretrained_vae_name_or_path", "output_dir",
                       "with_prior_preservation", "prior_loss_weight", "seed", "resolution", "train_batch_size",
                       "train_text_encoder", "mixed_precision", "use_8bit_adam", "gradient_accumulation_steps",
                       "learning_rate", "lr_scheduler", "lr_warmup_steps", "num_class_images", "sample_batch_size",
                       "max_train_steps", "save_interval", "save_sample_prompt", "instance_data_dir",
                       "instance_prompt", "class_prompt")
GUIDE_PHOTOS = 20  # 20 photos x 100 steps = the guide's 2,000 steps
GUIDE_STEPS = 2000
TINY_SIZE = "tiny"
TINY_RESOLUTION = 64  # the tiny test models' size (dreamcore.tiny, not imported here: it pulls torch)


def model_sizes(family: ModelFamily) -> dict[str, int]:
    """The bench's model sizes of ``family`` and the resolution each trains at: the family's published shapes
    (named as the family: "sd1", "sdxl") at its default resolution, or the tiny test model ("tiny")."""
    return {family.name: family.default_resolution, TINY_SIZE: TINY_RESOLUTION}


# Components of a random model of published shapes besides the text encoders (which the family names)
_OTHER_COMPONENTS = ("unet", "vae", "scheduler")


@dataclass(frozen=True)
class BenchInputs:
    """Where one bench model and its photos live under the bench's work folder, and the resolution they train at."""

    family: ModelFamily
    size: str
    model: Path
    photos: Path
    resolution: int


def check_model_size(family: ModelFamily, size: str) -> None:
    """Raises ValueError, saying what goes instead, when ``size`` is not one of ``family``'s model sizes."""
    if size not in model_sizes(family):
        raise ValueError(f"--model-size {size} does not go with --family {family.name}; use "
                         f"{' or '.join(model_sizes(family))} ({size} is not one of {family.label}'s sizes)")


def bench_inputs(work: Path, family: ModelFamily, size: str) -> BenchInputs:
    """The model and photo folders of ``family`` at ``size`` under ``work``: model-<size> (model-sd1, model-sdxl,
    model-tiny; a tiny model of another family than the default: model-tiny-<family>) and photos-<resolution>.
    Raises ValueError when ``size`` is not one of the family's sizes."""
    check_model_size(family, size)
    sizes = model_sizes(family)
    folder = f"model-{size}" if size == family.name or family is DEFAULT_FAMILY else f"model-{size}-{family.name}"
    return BenchInputs(family, size, work / folder, work / f"photos-{sizes[size]}", sizes[size])


@dataclass(frozen=True)
class BenchPreset:
    """A preset to benchmark: ``guide``, a memory preset or a named preset (lora-5GB), with optional field
    overrides ("24GB:fast_step=false")."""

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        return self.name + "".join(f" {k}={v}" for k, v in self.overrides)

    def spec(self) -> str:
        return self.name + (":" + ",".join(f"{k}={_format_value(v)}" for k, v in self.overrides)
                            if self.overrides else "")


def parse_preset(spec: str) -> BenchPreset:
    """``NAME`` or ``NAME:field=value,field=value``; raises ValueError naming what is wrong."""
    name, _, rest = spec.partition(":")
    if name not in (GUIDE, GUIDE_VERBATIM) and name not in MEMORY_PRESETS and name not in PRESETS:
        raise ValueError(f"--preset {spec!r}: unknown preset {name!r}; choose {GUIDE}, {GUIDE_VERBATIM}, a memory "
                         f"preset ({', '.join(MEMORY_PRESETS)}) or one of {', '.join(PRESETS)}")
    overrides = []
    known = set(TrainConfig().to_dict())
    for item in filter(None, rest.split(",")):
        key, equals, text = item.partition("=")
        if not equals or key not in known:
            raise ValueError(f"--preset {spec!r}: {item!r} is not field=value with a TrainConfig field")
        overrides.append((key, _parse_value(text)))
    return BenchPreset(name, tuple(overrides))


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _format_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def recipe_config(preset: BenchPreset, model: Path, photos: Path, output_dir: Path, steps: int,
                  resolution: int) -> TrainConfig:
    """The guide's recipe (its preset: the text encoder trained) for ``steps`` steps, with the preset's memory
    settings.

    No checkpoint or state is saved during the run (save_interval and checkpointing_steps 0): the timed
    export at the end (samples, diffusers folder, single file) stands for the guide's last save. With several
    processes the tiers run as with one (each gradient averaged inside backward), as train() runs them.
    """
    if preset.name == GUIDE_VERBATIM:
        return _guide_command_config(preset, model, photos, output_dir, steps, resolution)
    named = preset.name if preset.name in PRESETS else GUIDE_PRESET  # e.g. lora-5GB: its own recipe
    # a memory preset, or a named preset that names a tier ("SDXL full", "GPU 8 GB"): that tier's settings
    tier = MEMORY_PRESETS.get(preset.name) or MEMORY_PRESETS.get(preset_overrides(named).get("memory_preset"), {})
    values: dict[str, Any] = {**preset_overrides(named),
                              "pretrained_model_name_or_path": str(model), "instance_data_dir": str(photos),
                              "instance_prompt": "photo of ukj person", "class_prompt": "photo of a person",
                              "output_dir": str(output_dir), "resolution": resolution, "max_train_steps": steps,
                              "save_interval": 0, "checkpointing_steps": 0, "center_crop": True,
                              # applied here, not by train(), so that the overrides below win over the tier
                              "memory_preset": "none", **tier}
    values.update(dict(preset.overrides))
    return TrainConfig.from_dict(values, source=f"bench preset {preset.spec()!r}")


def _guide_command_config(preset: BenchPreset, model: Path, photos: Path, output_dir: Path, steps: int,
                          resolution: int) -> TrainConfig:
    """The guide's command (README) on the single-file form of the random model, its flags as typed."""
    files = single_file_inputs(model)
    values: dict[str, Any] = {**preset_overrides(GUIDE_PRESET),
                              "pretrained_model_name_or_path": str(files["model"]),
                              "pretrained_vae_name_or_path": str(files["vae"]), "output_dir": str(output_dir),
                              "gradient_accumulation_steps": 1, "sample_batch_size": 4, "max_train_steps": steps,
                              "resolution": resolution, "save_sample_prompt": "photo of ukj person",
                              "instance_data_dir": str(photos), "instance_prompt": "photo of ukj person",
                              "class_prompt": "photo of a person", **dict(preset.overrides)}
    values["chosen_settings"] = [*GUIDE_COMMAND_FLAGS, *dict(preset.overrides)]
    return TrainConfig.from_dict(values, source=f"bench preset {preset.spec()!r}")


def single_file_inputs(model: Path) -> dict[str, Path]:
    """The guide's inputs beside a diffusers folder: the model as one .safetensors file and its VAE as another
    (written once)."""
    files = {"model": model.with_name(model.name + ".safetensors"),
             "vae": model.with_name(model.name + "-vae.safetensors")}
    if not all(path.is_file() for path in files.values()):
        from dreamcore.convert import save_single_file
        from dreamcore.convert.single_file import save_vae_file
        from dreamcore.models import load_base_model

        components = load_base_model(str(model))
        save_vae_file(components.vae, files["vae"], half=True)
        save_single_file(components, files["model"], half=True)
    return files


def random_model_configs(family: ModelFamily, size: str) -> dict[str, dict[str, Any]]:
    """The component configs of the bench's model: the family's shipped configs of its published model (every text
    encoder it has) or the tiny test model's. Raises ValueError for a size the family has not."""
    check_model_size(family, size)
    if size == TINY_SIZE:
        from dreamcore.tiny import tiny_component_configs

        return tiny_component_configs(family.name)
    return {name: family.shipped_config(name) for name in (*_OTHER_COMPONENTS, *family.text_encoder_names)}


def build_random_model(folder: Path, size: str, seed: int = 0, family: ModelFamily = DEFAULT_FAMILY) -> Path:
    """Write a model of ``family``'s published shapes (``size`` the family's name) or the tiny test model
    ("tiny") with random weights, as a diffusers folder."""
    import torch

    from dreamcore.models import save_diffusers_folder
    from dreamcore.tiny import build_components

    configs = random_model_configs(family, size)
    # Initialised on the GPU where there is one: SDXL's 3.5 billion weights take minutes of CPU time to draw.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        components = build_components(configs, family.name, seed=seed)
    save_diffusers_folder(components, folder)
    return folder


def make_photos(folder: Path, count: int, size: int) -> Path:
    """``count`` square photos (content is irrelevant to speed; square so latents can be cached)."""
    from dreamcore.commands.demo import make_demo_photos

    folder.mkdir(parents=True, exist_ok=True)
    make_demo_photos(folder, count=count, size=size)
    return folder
