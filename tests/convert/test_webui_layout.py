"""The single file is what the WebUIs expect (the keys, dtypes and metadata the hosts load)."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
import yaml

from dreamcore.convert import WEBUI_ZIP_MEMBER, read_state_dict, save_single_file, training_metadata
from dreamcore.convert.original_config import read_original_config


def webui_model_type(state_dict: dict[str, torch.Tensor]) -> str:
    """The WebUI's key rules, restated: SDXL by conditioner.embedders, SD2 by the OpenCLIP in_proj key,
    SD1 by the CLIP transformer; every model has its UNet and VAE under the fixed prefixes."""
    if any(key.startswith("conditioner.embedders.") for key in state_dict):
        return "sdxl"
    if "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in state_dict:
        return "sd2"
    if any(key.startswith("cond_stage_model.transformer.text_model.") for key in state_dict):
        return "sd1"
    return "unknown"


@pytest.mark.parametrize("family", ["sd1", "sd2", "sd2-v"])
def test_keys_follow_the_webui_rules(family, tiny_files, tiny_models) -> None:
    tensors, _ = read_state_dict(tiny_files[(family, ".safetensors")])
    prefixes = {"model.diffusion_model.", "first_stage_model.",
                "cond_stage_model.transformer.text_model." if family == "sd1" else "cond_stage_model.model."}
    assert all(key.startswith(tuple(prefixes)) for key in tensors)
    assert {p for p in prefixes if any(k.startswith(p) for k in tensors)} == prefixes
    assert webui_model_type(tensors) == ("sd1" if family == "sd1" else "sd2")
    assert tensors["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 4  # not inpainting
    if family != "sd1":
        width = tiny_models[family].text_encoder.config.hidden_size
        in_proj = tensors["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
        assert tuple(in_proj.shape) == (3 * width, width)  # q, k, v stacked, OpenCLIP style


def test_only_the_v_model_gets_a_yaml_and_it_says_v(tiny_files) -> None:
    assert not tiny_files[("sd1", ".safetensors")].with_suffix(".yaml").exists()
    assert not tiny_files[("sd2", ".safetensors")].with_suffix(".yaml").exists()
    yaml_path = tiny_files[("sd2-v", ".safetensors")].with_suffix(".yaml")
    params = yaml.safe_load(yaml_path.read_text())["model"]["params"]
    assert params["parameterization"] == "v"
    assert params["cond_stage_config"]["params"]["layer"] == "penultimate"
    assert params["unet_config"]["params"]["use_linear_in_transformer"] is True
    assert read_original_config(yaml_path).family == "sd2-v"


def test_published_sd2_v_yaml_matches_the_768_v_config() -> None:
    from dreamcore.convert.architecture import published_configs
    from dreamcore.convert.original_config import original_config

    configs = published_configs("sd2-v")
    unet = original_config("sd2-v", configs["unet"], configs["vae"], configs["scheduler"])["model"]["params"]
    unet_params = unet["unet_config"]["params"]
    assert (unet_params["model_channels"], unet_params["channel_mult"], unet_params["num_head_channels"],
            unet_params["context_dim"], unet_params["attention_resolutions"]) == (320, [1, 2, 4, 4], 64, 1024,
                                                                                   [1, 2, 4])
    assert unet["first_stage_config"]["params"]["ddconfig"]["ch_mult"] == [1, 2, 4, 4]
    assert (unet["linear_start"], unet["linear_end"], unet["scale_factor"]) == (0.00085, 0.012, 0.18215)


@pytest.mark.parametrize("family", ["sd1", "sd2-v"])
def test_ckpt_passes_the_webui_zip_whitelist_and_plain_torch_load(family, tiny_files) -> None:
    path = tiny_files[(family, ".ckpt")]
    names = zipfile.ZipFile(path).namelist()
    assert names and all(WEBUI_ZIP_MEMBER.match(name) for name in names), names
    assert {name.split("/")[0] for name in names} == {"archive"}  # not the temporary file's name
    loaded = torch.load(path, map_location="cpu", weights_only=True)  # torch's own safe loader reads it too
    assert set(loaded["state_dict"]) == set(read_state_dict(tiny_files[(family, ".safetensors")])[0])


def test_a_default_torch_save_fails_the_whitelist(tmp_path) -> None:
    """Why the .ckpt writer re-packs: a current torch's own layout is what the WebUI refuses."""
    torch.save({"state_dict": {"x": torch.zeros(1)}}, tmp_path / "plain.ckpt")
    names = zipfile.ZipFile(tmp_path / "plain.ckpt").namelist()
    assert not all(WEBUI_ZIP_MEMBER.match(name) for name in names)


def test_metadata_and_user_metadata_beside_the_file(tiny_models, tmp_path) -> None:
    metadata = training_metadata("runwayml/stable-diffusion-v1-5", "ukj", steps=1500, resolution=512)
    path = save_single_file(tiny_models["sd1"], tmp_path / "me.safetensors", half=True, metadata=metadata,
                            user_metadata={"description": "DreamBooth of me", "activation text": "photo of ukj person"})
    _, stored = read_state_dict(path)
    assert stored["dreamcore.trigger_words"] == "ukj"
    assert stored["dreamcore.training_steps"] == "1500"
    assert stored["dreamcore.resolution"] == "512"
    assert stored["dreamcore.base_model"] == "runwayml/stable-diffusion-v1-5"
    assert stored["dreamcore.family"] == "sd1"
    import dreamcore

    assert stored["dreamcore.version"] == dreamcore.__version__
    # A tiny model is not a published architecture: its configs ride along so it can be rebuilt.
    assert json.loads(stored["dreamcore.architecture"])["unet"]["block_out_channels"] == [16, 32, 32, 32]
    card = json.loads(path.with_suffix(".json").read_text())
    assert card == {"description": "DreamBooth of me", "activation text": "photo of ukj person"}


def test_metadata_values_must_be_strings(tiny_models, tmp_path) -> None:
    with pytest.raises(TypeError, match="steps"):
        save_single_file(tiny_models["sd1"], tmp_path / "bad.safetensors", metadata={"steps": 1500})
    assert list(tmp_path.iterdir()) == []
