"""`python -m dreamcore tiny-model --webui`: dreamcore trains from the file, and stock diffusers loads it with its
`.yaml` and generates. (Its fit to the WebUI's model code: tests/extension/test_tiny_webui_model.py.)"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamcore import TrainConfig
from dreamcore.assets import CONFIGS_DIR, TOKENIZER_DIR, load_tokenizer
from dreamcore.cli import main
from dreamcore.tiny import TINY_RESOLUTION
from dreamcore.training import train


@pytest.fixture(scope="module")
def webui_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("webui-model")
    assert main(["tiny-model", "--webui", str(folder / "tiny.safetensors")]) == 0
    return folder / "tiny.safetensors"


def header(path: Path) -> dict:
    with path.open("rb") as file:
        size = struct.unpack("<Q", file.read(8))[0]
        return json.loads(file.read(size))


def test_a_diffusers_folder_is_not_written_over_a_folder_of_other_files(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The help's own order: a single file into a folder, then a diffusers model into the same folder."""
    assert main(["tiny-model", "--format", "safetensors", str(tmp_path / "models")]) == 0
    assert main(["tiny-model", str(tmp_path / "models")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "tiny-sd1.safetensors" in err and "new or empty folder" in err
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-sd1.safetensors"]


@pytest.mark.parametrize("flags", [["--format", "diffusers"], ["--family", "sd2"]])
def test_webui_model_is_an_sd1_single_file_only(flags: list[str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tiny-model", "--webui", *flags, str(tmp_path / "out")]) == 2
    assert "tiny-model --webui writes an SD1 single file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_dreamcore_trains_from_it_and_the_outputs_keep_its_shapes_and_yaml(webui_model: Path,
                                                                          tmp_path: Path) -> None:
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(2):
        Image.new("RGB", (TINY_RESOLUTION, TINY_RESOLUTION), (60 * index, 120, 200)).save(photos / f"{index}.png")
    config = TrainConfig(pretrained_model_name_or_path=str(webui_model), instance_data_dir=str(photos),
                         instance_prompt="photo of sks dog", output_dir=str(tmp_path / "out"),
                         resolution=TINY_RESOLUTION, max_train_steps=2, save_interval=0, checkpointing_steps=0,
                         n_save_sample=1, save_infer_steps=1, learning_rate=1e-3, lr_warmup_steps=0, prepare_photos=False,
                         mixed_precision="no", use_8bit_adam=False, model_name="tiny-dog")
    result = train(config)
    trained = Path(result.outputs["single_file"])
    base_header, trained_header = header(webui_model), header(trained)
    base_header.pop("__metadata__"), trained_header.pop("__metadata__")
    assert {k: v["shape"] for k, v in trained_header.items()} == {k: v["shape"] for k, v in base_header.items()}
    assert trained.with_suffix(".yaml").read_bytes() == webui_model.with_suffix(".yaml").read_bytes()
    from safetensors import safe_open

    key = "model.diffusion_model.input_blocks.0.0.weight"
    with safe_open(str(webui_model), "pt") as before, safe_open(str(trained), "pt") as after:
        assert not torch.equal(before.get_tensor(key), after.get_tensor(key))  # it did train


@pytest.mark.slow
def test_stock_diffusers_loads_it_with_its_yaml_and_generates(webui_model: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    # Offline, diffusers reads CLIP-L's text config from a folder named as the hub id (as the WebUI does);
    # dreamcore ships that config and the tokenizer files.
    clip = tmp_path / "openai" / "clip-vit-large-patch14"
    shutil.copytree(TOKENIZER_DIR, clip)
    shutil.copyfile(CONFIGS_DIR / "sd1" / "text_encoder" / "config.json", clip / "config.json")
    monkeypatch.chdir(tmp_path)
    pipe = StableDiffusionPipeline.from_single_file(
        str(webui_model), original_config=str(webui_model.with_suffix(".yaml")), local_files_only=True,
        safety_checker=None, feature_extractor=None, image_encoder=None, tokenizer=load_tokenizer("sd1"))
    with safe_open(str(webui_model), "pt") as file:
        stored = file.get_tensor("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight")
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight.half(), stored)  # weights from the file
    assert list(pipe.unet.config.block_out_channels) == [32, 32]  # the UNet the .yaml describes
    image = pipe("photo of sks dog", height=TINY_RESOLUTION, width=TINY_RESOLUTION, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (TINY_RESOLUTION, TINY_RESOLUTION, 3) and np.isfinite(image).all()
