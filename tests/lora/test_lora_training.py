"""Done-when of issue 8 on a tiny model: a LoRA run's exported files give the trained model's images.

One LoRA DreamBooth run (prior preservation, text encoder trained, lr 1e-3 so a tiny LoRA moves) is shared
by the tests below. Its samples were made by the live trained pipeline; loading the exported kohya file into
the untouched base with diffusers' own ``load_lora_weights``, the diffusers LoRA folder, or the merged single
file must give the same images at the same seeds. Tolerance: at most 2 of 255 levels on any pixel (the
samples are 8-bit PNGs; merging adds float rounding of ~5e-5 in the weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from dreamcore import TrainConfig
from dreamcore.events import StopRequest
from dreamcore.lora.adapters import DEFAULT_TEXT_TARGETS, DEFAULT_UNET_TARGETS
from dreamcore.training import train

PIXEL_TOLERANCE = 2  # of 255


def lora_config(model: Path, photos: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(pretrained_model_name_or_path=str(model), instance_data_dir=str(photos),
                  instance_prompt="photo of ukj person", class_prompt="photo of a person",
                  with_prior_preservation=True, num_class_images=2, class_infer_steps=2, sample_batch_size=2,
                  output_dir=str(out), resolution=64, max_train_steps=6, learning_rate=1e-3, lr_warmup_steps=0,
                  checkpointing_steps=0, n_save_sample=2, save_infer_steps=3, seed=11, train_text_encoder=True,
                  use_lora=True, lora_rank=4, lora_alpha=8.0, save_half=False, center_crop=True)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, lora_photos: Path, tmp_path_factory: pytest.TempPathFactory):
    config = lora_config(tiny_model_dir, lora_photos, tmp_path_factory.mktemp("lora") / "run")
    return config, train(config)


def regenerate(pipeline, config: TrainConfig, folder: Path) -> list[Path]:
    from dreamcore.training.sampling import save_samples

    return save_samples(pipeline, folder, config.instance_prompt, "", config.n_save_sample, config.seed,
                        config.save_guidance_scale, config.save_infer_steps, config.resolution)


def assert_same_images(expected: list[Path], actual: list[Path]) -> None:
    assert len(expected) == len(actual) > 0
    for a, b in zip(expected, actual):
        diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
        assert diff.max() <= PIXEL_TOLERANCE, (a.name, int(diff.max()))


def trained_samples(result) -> list[Path]:
    return sorted(Path(result.outputs["samples"]).glob("*.png"))


def test_lora_run_writes_lora_files_not_a_model(lora_run) -> None:
    config, result = lora_run
    assert result.status == "completed"
    assert set(result.outputs) >= {"lora", "lora_peft", "samples"}
    assert "single_file" not in result.outputs and "diffusers" not in result.outputs
    assert Path(result.outputs["lora"]).name == "run.safetensors"
    assert len(list((Path(config.output_dir) / "class_images").rglob("*.png"))) == 2  # prior preservation ran


def test_base_plus_exported_kohya_file_gives_the_trained_images(lora_run, tiny_model_dir: Path, tmp_path: Path) -> None:
    from dreamcore.models import build_pipeline, load_base_model

    config, result = lora_run
    base = build_pipeline(load_base_model(str(tiny_model_dir)))
    untouched = regenerate(base, config, tmp_path / "base")
    base.load_lora_weights(load_file(result.outputs["lora"]))  # diffusers' own kohya reader
    assert_same_images(trained_samples(result), regenerate(base, config, tmp_path / "with-lora"))
    # ... and the LoRA did change the model, so the comparison above can fail.
    differences = [np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int)).max()
                   for a, b in zip(trained_samples(result), untouched)]
    assert max(differences) > 10 * PIXEL_TOLERANCE


def test_fp16_kohya_file_gives_the_trained_images(lora_run, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The WebUI's default: weights stored as fp16 (save_half); the images stay within the same tolerance."""
    from dreamcore.lora.files import convert_lora
    from dreamcore.models import build_pipeline, load_base_model

    config, result = lora_run
    half = convert_lora(result.outputs["lora_peft"], tmp_path / "half.safetensors", half=True)
    assert {t.dtype for k, t in load_file(str(half)).items() if k.endswith("weight")} == {torch.float16}
    base = build_pipeline(load_base_model(str(tiny_model_dir)))
    base.load_lora_weights(load_file(str(half)))
    assert_same_images(trained_samples(result), regenerate(base, config, tmp_path / "half"))


def test_diffusers_lora_folder_gives_the_trained_images(lora_run, tiny_model_dir: Path, tmp_path: Path) -> None:
    from dreamcore.models import build_pipeline, load_base_model

    config, result = lora_run
    base = build_pipeline(load_base_model(str(tiny_model_dir)))
    base.load_lora_weights(result.outputs["lora_peft"], local_files_only=True)
    assert_same_images(trained_samples(result), regenerate(base, config, tmp_path / "peft"))


def test_merged_single_file_gives_the_trained_images(lora_run, tiny_model_dir: Path, tmp_path: Path) -> None:
    from dreamcore.cli import main
    from dreamcore.models import build_pipeline, load_base_model

    config, result = lora_run
    merged = tmp_path / "merged.safetensors"
    assert main(["merge-lora", str(tiny_model_dir), result.outputs["lora"], str(merged), "--full-precision"]) == 0
    pipeline = build_pipeline(load_base_model(str(merged)))
    assert_same_images(trained_samples(result), regenerate(pipeline, config, tmp_path / "merged"))


def test_exported_file_holds_only_lora_weights(lora_run, tiny_model_dir: Path) -> None:
    from dreamcore.models import load_base_model

    config, result = lora_run
    path = Path(result.outputs["lora"])
    tensors = load_file(str(path))
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in tensors)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in tensors)
    # Exactly the adapted layers' A and B: rank x (inputs + outputs) numbers per layer, nothing else.
    base = load_base_model(str(tiny_model_dir))
    expected = 0
    for module, names in ((base.unet, DEFAULT_UNET_TARGETS), (base.text_encoder, DEFAULT_TEXT_TARGETS)):
        for name, layer in module.named_modules():
            if not any(name.endswith("." + target) for target in names):
                continue
            if isinstance(layer, torch.nn.Linear):
                expected += config.lora_rank * (layer.in_features + layer.out_features)
            elif isinstance(layer, torch.nn.Conv2d):  # proj_in / proj_out as 1x1 convolutions
                kernel = layer.kernel_size[0] * layer.kernel_size[1]
                expected += config.lora_rank * (layer.in_channels * kernel + layer.out_channels)
    weights = sum(t.numel() for k, t in tensors.items() if not k.endswith(".alpha"))
    assert weights == expected
    assert all(t.item() == 8.0 for k, t in tensors.items() if k.endswith(".alpha"))
    # Size: the tensors plus a header, and a small fraction of the model it changes.
    assert path.stat().st_size < 4 * weights + 200 * len(tensors)
    base_size = sum(p.numel() for m in (base.unet, base.text_encoder, base.vae) for p in m.parameters()) * 4
    assert path.stat().st_size < base_size / 10


def test_metadata_and_webui_card(lora_run) -> None:
    config, result = lora_run
    path = Path(result.outputs["lora"])
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "8"
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_v2"] == "False"
    assert "photo of ukj person" in json.loads(metadata["ss_tag_frequency"])["dreamcore"]
    assert metadata["modelspec.trigger_phrase"] == "photo of ukj person"
    assert metadata["dreamcore.base_model"] == Path(config.pretrained_model_name_or_path).name
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["activation text"] == "photo of ukj person" and card["preferred weight"] == 1
    assert card["sd version"] == "SD1"


def lora_tensors(path: str) -> dict[str, torch.Tensor]:
    return load_file(path)


def test_resume_of_a_lora_run_reaches_the_same_adapter_weights(tiny_model_dir: Path, lora_photos: Path,
                                                              tmp_path: Path) -> None:
    common = dict(with_prior_preservation=False, max_train_steps=6, n_save_sample=1, save_infer_steps=2,
                  gradient_accumulation_steps=2, lr_scheduler="cosine", lr_warmup_steps=1)
    straight = train(lora_config(tiny_model_dir, lora_photos, tmp_path / "straight", **common))
    stop = StopRequest()
    interrupted = lora_config(tiny_model_dir, lora_photos, tmp_path / "resumed", **common)
    first = train(interrupted, callbacks=[lambda e: stop.set() if e.kind == "progress" and e.step == 2 else None],
                  stop=stop)
    assert first.status == "stopped" and Path(first.outputs["lora"]).is_file()
    state = load_file(str(Path(first.outputs["state"]) / "unet.safetensors"))
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)  # adapters only in the state
    resumed = train(interrupted.replace(resume_from_checkpoint="latest"))
    assert resumed.status == "completed" and resumed.step == 6
    a, b = lora_tensors(straight.outputs["lora"]), lora_tensors(resumed.outputs["lora"])
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert any(a[k].abs().max() > 1e-3 for k in a if k.endswith("lora_up.weight"))  # it did train


def test_resuming_a_full_run_state_with_use_lora_is_refused(tiny_model_dir: Path, lora_photos: Path,
                                                           tmp_path: Path) -> None:
    from dreamcore.lora.adapters import LoraSetupError

    stop = StopRequest()
    full = lora_config(tiny_model_dir, lora_photos, tmp_path / "run", use_lora=False, with_prior_preservation=False,
                       n_save_sample=1, save_infer_steps=2, train_text_encoder=False)
    train(full, callbacks=[lambda e: stop.set() if e.kind == "progress" and e.step == 1 else None], stop=stop)
    with pytest.raises(LoraSetupError, match="same use_lora"):
        train(full.replace(use_lora=True, resume_from_checkpoint="latest"))
