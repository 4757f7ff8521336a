"""Bad inputs give a clear error naming the file and what to do, and leave nothing behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from dreamcore.convert import ModelLoadError, detect_family, load_single_file, read_state_dict, save_single_file
from dreamcore.convert.checkpoint_files import write_safetensors
from dreamcore.convert.command import convert

from convert_helpers import module_state


class _RunsShell:
    """What a malicious checkpoint carries: unpickling it calls os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_without_running(zip_format, tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "payload": _RunsShell(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ModelLoadError) as caught:
        read_state_dict(path)
    assert "evil.ckpt" in str(caught.value) and "system" in str(caught.value)
    assert "malicious" in str(caught.value) and ".safetensors" in str(caught.value)
    assert not marker.exists()


def _copy(source: Path, destination: Path) -> Path:
    shutil.copyfile(source, destination)
    return destination


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_file(suffix, tiny_files, tmp_path) -> None:
    data = tiny_files[("sd1", suffix)].read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"cut\.(safetensors|ckpt).*(truncated|damaged)"):
        load_single_file(path)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a model file"),
    (b"just some notes, renamed", "not a model file"),
])
def test_not_a_model_file(content, message, tmp_path) -> None:
    path = tmp_path / "photo.ckpt"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load_single_file(path)


@pytest.mark.parametrize("keys, message", [
    ({"conditioner.embedders.0.transformer.text_model.x": 1, "model.diffusion_model.input_blocks.0.0.weight": 4},
     "SDXL"),
    ({"model.diffusion_model.input_blocks.0.0.weight": 9, "cond_stage_model.transformer.text_model."
      "embeddings.token_embedding.weight": 1}, "inpainting"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": 1}, "LoRA"),
    ({"decoder.conv_in.weight": 1, "encoder.conv_in.weight": 1}, "VAE on its own"),
    ({"down_blocks.0.resnets.0.conv1.weight": 1}, "diffusers layout"),
    ({"model.diffusion_model.input_blocks.0.0.weight": 4}, "unknown architecture"),
    ({"some.other.network": 1}, "unknown architecture"),
])
def test_detect_family_names_what_the_file_is(keys, message) -> None:
    state_dict = {key: torch.zeros(2, channels, 3, 3) for key, channels in keys.items()}
    with pytest.raises(ModelLoadError, match=message):
        detect_family(state_dict)


def test_detect_family_of_real_layouts(tiny_files) -> None:
    assert detect_family(read_state_dict(tiny_files[("sd1", ".safetensors")])[0]) == "sd1"
    assert detect_family(read_state_dict(tiny_files[("sd2-v", ".ckpt")])[0]) == "sd2"


def test_custom_size_without_its_config_is_an_unknown_architecture(tiny_files, tmp_path) -> None:
    """A tiny model's weights with its recorded configs stripped cannot be mistaken for SD1.5."""
    tensors, _ = read_state_dict(tiny_files[("sd1", ".safetensors")])
    path = write_safetensors(tmp_path / "anonymous.safetensors", tensors, {})
    with pytest.raises(ModelLoadError, match=r"anonymous\.safetensors.*shape.*unknown architecture"):
        load_single_file(path)


def test_an_unexpected_key_is_named(tiny_files, tmp_path) -> None:
    tensors, metadata = read_state_dict(tiny_files[("sd1", ".safetensors")])
    tensors["model.diffusion_model.input_blocks.1.1.extra_gate.weight"] = torch.zeros(3)
    path = write_safetensors(tmp_path / "extra.safetensors", tensors, metadata)
    with pytest.raises(ModelLoadError, match="extra_gate"):
        load_single_file(path)
    del tensors["model.diffusion_model.input_blocks.1.1.extra_gate.weight"]
    del tensors["first_stage_model.decoder.conv_out.bias"]
    path = write_safetensors(tmp_path / "missing.safetensors", tensors, metadata)
    with pytest.raises(ModelLoadError, match=r"missing VAE key 'decoder\.conv_out\.bias'"):
        load_single_file(path)


def test_bad_input_leaves_no_output(tmp_path) -> None:
    source = tmp_path / "broken.safetensors"
    source.write_bytes(b"\x10\0\0\0\0\0\0\0{\"a\": 1}")
    out = tmp_path / "out"
    out.mkdir()
    for destination in (out / "model.safetensors", out / "model.ckpt", out / "folder"):
        with pytest.raises(ModelLoadError):
            convert(str(source), str(destination))
    assert list(out.iterdir()) == []


def test_a_failed_write_leaves_no_file(tiny_models, tmp_path, monkeypatch) -> None:
    import safetensors.torch

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="disk holding .* is full"):
        save_single_file(tiny_models["sd1"], tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ema_weights_are_chosen_on_request(tiny_files, tiny_models, tmp_path) -> None:
    tensors, metadata = read_state_dict(tiny_files[("sd1", ".safetensors")])
    unet_keys = [key for key in tensors if key.startswith("model.diffusion_model.")]
    for key in unet_keys:  # the original trainer's EMA naming: parameter path without dots
        tensors["model_ema." + key[len("model."):].replace(".", "")] = tensors[key] + 1
    tensors["model_ema.decay"] = torch.tensor(0.9999)
    tensors["model_ema.num_updates"] = torch.tensor(100, dtype=torch.int32)
    path = write_safetensors(tmp_path / "with-ema.safetensors", tensors, metadata)
    plain, ema = load_single_file(path), load_single_file(path, use_ema=True)
    reference = tiny_models["sd1"].unet.state_dict()
    assert all(torch.equal(plain.unet.state_dict()[k], v) for k, v in reference.items())
    assert all(torch.equal(ema.unet.state_dict()[k], v + 1) for k, v in reference.items())
    assert torch.equal(ema.vae.decoder.conv_out.weight, plain.vae.decoder.conv_out.weight)  # EMA is UNet-only
    with pytest.raises(ModelLoadError, match="no EMA weights"):
        load_single_file(tiny_files[("sd1", ".safetensors")], use_ema=True)


def test_noise_schedule_in_the_file_is_checked(tiny_files, tmp_path) -> None:
    from diffusers import DDPMScheduler

    tensors, metadata = read_state_dict(tiny_files[("sd1", ".safetensors")])
    standard = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    tensors["alphas_cumprod"] = standard.half()
    tensors["betas"] = torch.zeros(1000)
    load_single_file(write_safetensors(tmp_path / "standard.safetensors", tensors, metadata))
    tensors["alphas_cumprod"] = standard.clone()
    tensors["alphas_cumprod"][-1] = 0.0  # a zero-terminal-SNR schedule: not what training would use
    with pytest.raises(ModelLoadError, match="noise schedule"):
        load_single_file(write_safetensors(tmp_path / "ztsnr.safetensors", tensors, metadata))


def test_yaml_beside_the_file_wins_and_contradictions_are_errors(tiny_files, tmp_path) -> None:
    sd2 = _copy(tiny_files[("sd2", ".safetensors")], tmp_path / "model.safetensors")
    assert load_single_file(sd2).family == "sd2"
    _copy(tiny_files[("sd2-v", ".safetensors")].with_suffix(".yaml"), tmp_path / "model.yaml")
    loaded = load_single_file(sd2)
    assert loaded.family == "sd2-v" and loaded.scheduler.config.prediction_type == "v_prediction"
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    cond_stage_config:\n      target: "
                                         "ldm.modules.encoders.modules.FrozenCLIPEmbedder\n")
    with pytest.raises(ModelLoadError, match="model.yaml says sd1 but the weights are sd2"):
        load_single_file(sd2)
    with pytest.raises(ModelLoadError, match=r"the family given \(--family, model_family\) says sd1"):
        load_single_file(tiny_files[("sd2", ".ckpt")], family="sd1")


def test_sd2_final_layer_and_projection_are_the_only_keys_dropped(tiny_files, tiny_models, tmp_path) -> None:
    """Published SD2 files carry OpenCLIP's last layer and projection, which SD2 never uses."""
    tensors, metadata = read_state_dict(tiny_files[("sd2", ".safetensors")])
    prefix = "cond_stage_model.model."
    for key in [k for k in tensors if k.startswith(prefix + "transformer.resblocks.1.")]:
        tensors[key.replace("resblocks.1.", "resblocks.2.")] = torch.randn_like(tensors[key])
    width = tiny_models["sd2"].text_encoder.config.hidden_size
    tensors[prefix + "text_projection"] = torch.randn(width, width)
    tensors[prefix + "logit_scale"] = torch.tensor(4.6)
    loaded = load_single_file(write_safetensors(tmp_path / "full-openclip.safetensors", tensors, metadata))
    assert module_state(loaded).keys() == module_state(tiny_models["sd2"]).keys()
    assert all(torch.equal(a, b) for a, b in zip(module_state(loaded).values(),
                                                 module_state(tiny_models["sd2"]).values()))


class _ConstantUNet(torch.nn.Module):
    """Answers every call with ``sample + offset``: enough to exercise the v-prediction test."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Config", (), {"cross_attention_dim": 8, "in_channels": 4})()

    def forward(self, sample, timestep, encoder_hidden_states):
        assert timestep.tolist() == [999] and encoder_hidden_states.shape == (1, 2, 8)
        return type("Output", (), {"sample": sample + self.offset})()


def test_v_prediction_test_forward_pass() -> None:
    from dreamcore.convert.family import looks_v_prediction

    assert looks_v_prediction(_ConstantUNet(-1.5)) is True
    assert looks_v_prediction(_ConstantUNet(0.2)) is False


def test_legacy_sd1_text_encoder_names_load(tiny_files, tiny_models, tmp_path) -> None:
    """Old SD1 files lack the text_model level (cond_stage_model.transformer.encoder...); the WebUIs accept them."""
    tensors, metadata = read_state_dict(tiny_files[("sd1", ".safetensors")])
    legacy = {key.replace("transformer.text_model.", "transformer."): t for key, t in tensors.items()}
    assert "cond_stage_model.transformer.encoder.layers.0.mlp.fc1.weight" in legacy
    loaded = load_single_file(write_safetensors(tmp_path / "legacy.safetensors", legacy, metadata))
    assert module_state(loaded).keys() == module_state(tiny_models["sd1"]).keys()
    assert all(torch.equal(a, b) for a, b in zip(module_state(loaded).values(),
                                                 module_state(tiny_models["sd1"]).values()))
