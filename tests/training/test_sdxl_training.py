"""SDXL through the same run as SD: a tiny SDXL trains on the CPU as DreamBooth-LoRA (UNet and both text encoders)
and as full DreamBooth, with prior preservation, class images, samples, checkpoints and resume; its kohya LoRA
renders in diffusers as the trained pipeline did; its single file loads back as SDXL; a refiner is refused before
training; the family's resolution applies when none is chosen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from dreamcore import TrainConfig
from dreamcore.convert.checkpoint_files import write_safetensors
from dreamcore.convert.errors import ModelLoadError
from dreamcore.convert.sdxl_single_file import components_to_sdxl_single_file
from dreamcore.events import Emitter, Stage
from dreamcore.models import base_model_family, load_base_model
from dreamcore.tiny import build_tiny_sdxl, save_tiny_model
from dreamcore.training import train
from dreamcore.training.run import with_family_resolution

from tiny_runs import tiny_config


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "sdxl", family="sdxl", fmt="diffusers", seed=2)


def with_prior(**overrides) -> dict:
    return dict(with_prior_preservation=True, class_prompt="photo of a person", num_class_images=2,
                class_infer_steps=2, **overrides)


def rendered(pipeline, config: TrainConfig) -> np.ndarray:
    """The sample a run draws at a save (seed, steps, guidance and size as the run's), as an array in [0, 1]."""
    from diffusers import DDIMScheduler

    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)  # a run's samples use DDIM
    image = pipeline(prompt=config.instance_prompt, num_inference_steps=config.save_infer_steps,
                     guidance_scale=config.save_guidance_scale, height=config.resolution, width=config.resolution,
                     generator=[torch.Generator().manual_seed(config.seed)], output_type="np").images[0]
    return image


def test_lora_of_unet_and_both_text_encoders_renders_in_diffusers_as_the_trained_pipeline(
        sdxl_dir, photo_dir, tmp_path) -> None:
    from diffusers import StableDiffusionXLPipeline

    config = tiny_config(sdxl_dir, photo_dir, tmp_path / "lora", use_lora=True, train_text_encoder=True,
                         learning_rate=1e-2, **with_prior())
    result = train(config)
    assert result.status == "completed"
    lora = Path(result.outputs["lora"])
    with safe_open(str(lora), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert {key.split("_")[1] for key in keys} == {"unet", "te1", "te2"}
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert len(list((tmp_path / "lora" / "class_images").rglob("*.png"))) == 2

    sample = np.asarray(Image.open(next(Path(result.outputs["samples"]).glob("*.png"))), dtype=np.float32) / 255
    pipeline = StableDiffusionXLPipeline.from_pretrained(str(sdxl_dir), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    base = rendered(pipeline, config)
    pipeline.load_lora_weights(str(lora))
    adapted = rendered(pipeline, config)
    # the PNG sample is 8-bit: within two levels of it; the base model's image is far from both
    assert np.abs(adapted - sample).max() < 2.5 / 255
    assert np.abs(base - sample).mean() > 10 * np.abs(adapted - sample).mean()


def test_full_dreambooth_writes_sdxl_single_files_and_resumes(sdxl_dir, photo_dir, tmp_path) -> None:
    out = tmp_path / "full"
    first = train(tiny_config(sdxl_dir, photo_dir, out, max_train_steps=4, checkpointing_steps=2, save_interval=2,
                              **with_prior()))
    assert first.status == "completed" and first.step == 4
    checkpoint = out / "checkpoints" / "full-step-000002.safetensors"  # named after the output folder
    assert load_base_model(str(checkpoint)).family == "sdxl"

    events = []
    result = train(tiny_config(sdxl_dir, photo_dir, out, max_train_steps=6, checkpointing_steps=2,
                               resume_from_checkpoint="latest", **with_prior()), callbacks=[events.append])
    assert result.step == 6
    assert any(getattr(e, "message", "").startswith("resumed from") and "step-4" in e.message for e in events)
    exported = load_base_model(result.outputs["single_file"])
    folder = load_base_model(result.outputs["diffusers"])
    base = load_base_model(str(sdxl_dir))
    assert exported.family == folder.family == "sdxl"
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        mine, theirs = getattr(exported, name).state_dict(), getattr(folder, name).state_dict()
        # the single file is fp16 (save_half, the WebUI's default), the folder fp32
        assert all(torch.equal(mine[key], theirs[key].half().float()) for key in theirs), name
    trained = exported.unet.state_dict()
    assert any(not torch.equal(trained[key], value) for key, value in base.unet.state_dict().items())


def refiner_file(folder: Path) -> Path:
    """A refiner's single file: OpenCLIP alone, as embedder 0, no CLIP ViT-L."""
    state = components_to_sdxl_single_file(build_tiny_sdxl(seed=1))
    refiner = {k: v for k, v in state.items() if not k.startswith("conditioner.")}
    refiner.update({k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v
                    for k, v in state.items() if k.startswith("conditioner.embedders.1.")})
    return write_safetensors(folder / "sd_xl_refiner_1.0.safetensors", refiner, {})


@pytest.mark.parametrize("resolution", [None, 64])
def test_a_refiner_is_refused_before_training(resolution, photo_dir, tmp_path) -> None:
    settings = {} if resolution is None else {"resolution": resolution}
    config = tiny_config(refiner_file(tmp_path), photo_dir, tmp_path / "out", **settings)
    if resolution is None:
        config = TrainConfig(**{k: v for k, v in config.to_dict().items()
                                if k not in ("resolution", "chosen_settings")})
    events = []
    with pytest.raises(ModelLoadError, match=r"sd_xl_refiner_1.0.safetensors: this is an SDXL refiner.*SDXL base"):
        train(config, callbacks=[events.append])
    assert not any(isinstance(e, Stage) and e.name == "train" for e in events)
    assert not (tmp_path / "out").exists()  # refused before a photo was cropped into the output folder


def test_a_refiner_folder_is_named_as_such(sdxl_dir, tmp_path) -> None:
    import json
    import shutil

    folder = tmp_path / "refiner"
    shutil.copytree(sdxl_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder"], index["tokenizer"] = [None, None], [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(folder / "text_encoder")
    with pytest.raises(ModelLoadError, match="is an SDXL refiner.*SDXL base 1.0"):
        base_model_family(str(folder))
    with pytest.raises(ModelLoadError, match="is an SDXL refiner"):
        load_base_model(str(folder))


def test_the_family_resolution_applies_unless_chosen(sdxl_dir, tiny_model_dir, photo_dir, tmp_path) -> None:
    unchosen = TrainConfig(pretrained_model_name_or_path=str(sdxl_dir), instance_data_dir=str(photo_dir),
                           instance_prompt="photo of sks person", output_dir=str(tmp_path))
    lines = []
    emit = Emitter([lambda event: lines.append(getattr(event, "message", ""))])
    assert with_family_resolution(unchosen, emit).resolution == 1024
    assert any("1024 px, what SDXL is trained at" in line for line in lines)
    assert with_family_resolution(unchosen.choose(resolution=512), emit).resolution == 512
    # SD1 (and SD2, SD2-v) keep 512
    assert with_family_resolution(unchosen.replace(pretrained_model_name_or_path=str(tiny_model_dir)),
                                  emit).resolution == 512
    single = save_tiny_model(tmp_path / "file", family="sdxl", fmt="safetensors")
    assert base_model_family(str(single)).name == "sdxl"
