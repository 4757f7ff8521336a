"""load_base_model for every kind of input, save_diffusers_folder, build_pipeline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from dreamcore.convert import save_single_file, save_vae_file
from dreamcore.models import (SAMPLERS, ModelLoadError, build_pipeline, load_base_model, save_diffusers_folder)
from dreamcore.tiny import build_tiny_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def sd1():
    return build_tiny_model("sd1", seed=3)


@pytest.fixture(scope="module")
def sd1_folder(sd1, tmp_path_factory) -> Path:
    return save_diffusers_folder(sd1, tmp_path_factory.mktemp("models") / "tiny-sd1")


def _weights(components) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v for k, v in components.unet.state_dict().items()}
    out.update({f"vae.{k}": v for k, v in components.vae.state_dict().items()})
    out.update({f"text.{k}": v for k, v in components.text_encoder.state_dict().items()})
    return out


def _assert_same_model(first, second) -> None:
    a, b = _weights(first), _weights(second)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_diffusers_folder_loads_with_diffusers_alone_offline(sd1_folder) -> None:
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(str(sd1_folder), local_files_only=True)
    assert pipeline.safety_checker is None and list(pipeline.unet.config.block_out_channels) == [16, 32, 32, 32]
    assert not any(p.name.startswith(".tmp-") for p in sd1_folder.parent.iterdir())
    # transformers 4.x (the WebUIs' pins) reads the slow tokenizer files; they sit beside tokenizer.json.
    tokenizer_files = {p.name for p in (sd1_folder / "tokenizer").iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= tokenizer_files


def test_each_kind_of_base_model_loads_the_same_weights(sd1, sd1_folder, tmp_path) -> None:
    from_folder = load_base_model(str(sd1_folder))
    from_safetensors = load_base_model(str(save_single_file(sd1, tmp_path / "m.safetensors")))
    from_ckpt = load_base_model(str(save_single_file(sd1, tmp_path / "m.ckpt")))
    for loaded in (from_folder, from_safetensors, from_ckpt):
        _assert_same_model(sd1, loaded)
        assert loaded.family == "sd1" and loaded.architecture is not None
        assert type(loaded.scheduler).__name__ == "DDPMScheduler"
        assert loaded.scheduler.config.prediction_type == "epsilon"
        assert loaded.unet.dtype == torch.float32


def test_fp16_single_file_loads_as_fp32(sd1, tmp_path) -> None:
    loaded = load_base_model(str(save_single_file(sd1, tmp_path / "half.safetensors", half=True)))
    assert loaded.unet.dtype == loaded.text_encoder.dtype == torch.float32
    assert torch.equal(loaded.unet.conv_in.weight, sd1.unet.conv_in.weight.half().float())


def test_sd2_v_folder_keeps_v_prediction(tmp_path) -> None:
    folder = save_diffusers_folder(build_tiny_model("sd2-v"), tmp_path / "v")
    loaded = load_base_model(str(folder))
    assert loaded.family == "sd2-v" and loaded.scheduler.config.prediction_type == "v_prediction"
    assert load_base_model(str(folder), family="sd2").scheduler.config.prediction_type == "epsilon"
    with pytest.raises(ModelLoadError, match="OpenCLIP"):
        load_base_model(str(folder), family="sd1")


def test_folder_with_only_fp16_variant_weights(sd1, sd1_folder, tmp_path) -> None:
    """What the guide's --revision fp16 leaves in a folder: weights named *.fp16.safetensors only."""
    folder = shutil.copytree(sd1_folder, tmp_path / "fp16")
    for weights in folder.glob("*/*.safetensors"):
        weights.rename(weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")))
    _assert_same_model(sd1, load_base_model(str(folder)))


def test_folder_without_tokenizer_uses_the_shipped_one(sd1_folder, tmp_path) -> None:
    folder = shutil.copytree(sd1_folder, tmp_path / "no-tokenizer")
    shutil.rmtree(folder / "tokenizer")
    loaded = load_base_model(str(folder))
    assert loaded.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize("kept", [[], ["tokenizer_config.json"], ["vocab.json", "tokenizer_config.json"]])
def test_sdxl_folder_whose_second_tokenizer_folder_is_emptied_is_named(kept, tmp_path) -> None:
    folder = save_diffusers_folder(build_tiny_model("sdxl"), tmp_path / "tiny-sdxl")
    for path in (folder / "tokenizer_2").iterdir():
        if path.name not in kept:
            path.unlink()
    with pytest.raises(ModelLoadError,
                       match=r"tiny-sdxl/tokenizer_2: no tokenizer in this folder .*delete this folder"):
        load_base_model(str(folder))
    shutil.rmtree(folder / "tokenizer_2")  # without the folder: the shipped one, padding as SDXL's second does
    loaded = load_base_model(str(folder))
    assert loaded.tokenizer_2.pad_token == "!" and loaded.tokenizer_2("a cat").input_ids == [49406, 320, 2368, 49407]


def test_replacement_vae_from_file_and_folder(sd1_folder, tmp_path) -> None:
    other = build_tiny_model("sd1", seed=11)
    vae_file = save_vae_file(other.vae, tmp_path / "other.vae.safetensors")
    other.vae.save_pretrained(str(tmp_path / "vae-folder"))
    for vae in (str(vae_file), str(tmp_path / "vae-folder")):
        loaded = load_base_model(str(sd1_folder), vae=vae)
        assert all(torch.equal(v, other.vae.state_dict()[k]) for k, v in loaded.vae.state_dict().items())


def _fake_hub_cache(root: Path, repo_id: str, content: Path, revision: str = "main", commit: str = COMMIT) -> None:
    """huggingface_hub's cache layout: models--owner--name/{refs/<branch>, snapshots/<commit>/...}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    shutil.copytree(content, repo / "snapshots" / commit)


def test_hub_id_resolves_from_the_local_cache_only(sd1, sd1_folder, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "someone/tiny-sd1", sd1_folder)
    _fake_hub_cache(cache, "someone/tiny-sd1", sd1_folder, revision="fp16", commit="f" * 40)
    other = build_tiny_model("sd1", seed=5)
    other.vae.save_pretrained(str(tmp_path / "vae"))
    _fake_hub_cache(cache, "someone/tiny-vae", tmp_path / "vae")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    _assert_same_model(sd1, load_base_model("someone/tiny-sd1"))
    with_vae = load_base_model("someone/tiny-sd1", vae="someone/tiny-vae", revision="fp16")
    assert torch.equal(with_vae.vae.decoder.conv_out.weight, other.vae.decoder.conv_out.weight)
    with pytest.raises(ModelLoadError) as caught:
        load_base_model("someone/not-downloaded")
    message = str(caught.value)
    assert "someone/not-downloaded" in message and "not in the local Hugging Face cache" in message
    assert str(cache) in message and "hf download someone/not-downloaded" in message
    with pytest.raises(ModelLoadError, match="revision 'bf16'"):
        load_base_model("someone/tiny-sd1", revision="bf16")
    from dreamcore.cli import main

    assert main(["convert", "someone/tiny-vae", str(tmp_path / "vae.safetensors")]) == 0  # a cached VAE repo
    assert (tmp_path / "vae.safetensors").is_file()


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "not found"),
    (lambda p: (p.mkdir(), p)[1], "not a diffusers model folder"),
    (lambda p: ((p / "unet").mkdir(parents=True), (p / "model_index.json").write_text("{}"), p)[2],
     "lacks its unet"),
])
def test_missing_or_incomplete_models_are_named(make, message, tmp_path) -> None:
    target = make(tmp_path / "model")
    with pytest.raises(ModelLoadError, match=message):
        load_base_model(str(target))


def test_damaged_component_is_named(sd1_folder, tmp_path) -> None:
    folder = shutil.copytree(sd1_folder, tmp_path / "damaged")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=r"damaged/unet: could not load the UNet"):
        load_base_model(str(folder))


def test_build_pipeline_samplers_inherit_the_prediction_type() -> None:
    model = build_tiny_model("sd2-v")
    for name in SAMPLERS:
        pipeline = build_pipeline(model, scheduler=name)
        assert pipeline.scheduler.config.prediction_type == "v_prediction"
        assert pipeline.unet is model.unet  # shared, not copied
    with pytest.raises(ValueError, match="unknown sampler"):
        build_pipeline(model, scheduler="heun++")


def test_saving_over_an_existing_folder_replaces_it_whole(sd1, tmp_path) -> None:
    target = tmp_path / "out"
    save_diffusers_folder(build_tiny_model("sd1", seed=9), target)
    (target / "stale.txt").write_text("from an older run")
    save_diffusers_folder(sd1, target)
    assert not (target / "stale.txt").exists()
    _assert_same_model(sd1, load_base_model(str(target)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
