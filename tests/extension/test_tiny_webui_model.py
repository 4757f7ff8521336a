"""`tiny-model --webui`: a file the WebUIs load. Its keys and shapes are checked against the model the WebUI's
ldm code builds from the `.yaml` beside it (tests/extension/webui_standin/ldm_shapes.py, written from the ldm
model definitions, not from dreamcore's key tables), and the stand-in host loads it through the extension."""

from __future__ import annotations

import importlib
import json
import math
import os
import struct
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from form_loader import glue  # noqa: F401
from host_loader import STANDIN_DIR, remove_standin_host, use_standin_host, write_loadable_checkpoint

if str(STANDIN_DIR) not in sys.path:  # ldm_shapes lives beside the stand-in's modules
    sys.path.insert(0, str(STANDIN_DIR))
from ldm_shapes import CLIP_L, GROUPNORM_GROUPS, TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, sd1_checkpoint_shapes  # noqa: E402

from dreamcore.cli import main  # noqa: E402
from dreamcore.convert.original_config import read_original_config  # noqa: E402
from dreamcore.tiny import save_tiny_model, tiny_component_configs, webui_original_config_yaml  # noqa: E402

host_module = importlib.import_module("dreamcore_webui.host")


@pytest.fixture(scope="module")
def webui_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("webui-model")
    assert main(["tiny-model", "--webui", str(folder)]) == 0
    return folder / "tiny-sd1-webui.safetensors"


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with path.open("rb") as file:
        size = struct.unpack("<Q", file.read(8))[0]
        header = json.loads(file.read(size))
    header.pop("__metadata__", None)
    return {key: tuple(entry["shape"]) for key, entry in header.items()}


def test_every_tensor_is_what_the_webui_builds_from_the_yaml(webui_model: Path) -> None:
    config = yaml.safe_load(webui_model.with_suffix(".yaml").read_text(encoding="utf-8"))
    expected = sd1_checkpoint_shapes(config)
    shapes = header_shapes(webui_model)
    assert sorted(set(expected.shapes) - set(shapes) - expected.buffers) == []  # nothing the model needs is missing
    assert sorted(set(shapes) - set(expected.shapes)) == []  # nothing the WebUI would not load
    assert {key: shape for key, shape in shapes.items() if expected.shapes[key] != shape} == {}
    # ldm builds every GroupNorm with 32 groups: torch refuses a channel count that 32 does not divide
    assert expected.groupnorms and all(c % GROUPNORM_GROUPS == 0 for c in expected.groupnorms.values())
    unet = config["model"]["params"]["unet_config"]["params"]
    assert unet["context_dim"] == CLIP_L["hidden"]  # cross-attention reads CLIP-L's 768-wide states


def test_the_text_encoder_is_the_whole_clip_l_and_unet_and_vae_are_small(webui_model: Path) -> None:
    shapes = header_shapes(webui_model)
    text = {key for key in shapes if key.startswith(TEXT_PREFIX)}
    layers = {int(key.split(".")[5]) for key in text if ".encoder.layers." in key}
    assert layers == set(range(CLIP_L["layers"]))
    assert shapes[f"{TEXT_PREFIX}embeddings.token_embedding.weight"] == (CLIP_L["vocab"], CLIP_L["hidden"])
    assert shapes[f"{TEXT_PREFIX}embeddings.position_embedding.weight"] == (CLIP_L["positions"], CLIP_L["hidden"])

    def parameters(prefix: str) -> int:
        return sum(math.prod(shape) for key, shape in shapes.items() if key.startswith(prefix))

    # A few MB besides the text encoder the WebUI insists on (SD1.5's UNet alone has 860 M parameters).
    assert parameters(UNET_PREFIX) + parameters(VAE_PREFIX) < 4_000_000
    assert read_original_config(webui_model.with_suffix(".yaml")).family == "sd1"


@pytest.fixture(params=["a1111", "forge", "sdnext"])
def flavor(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("DREAMCORE_STANDIN_DATA_DIR", str(tmp_path / "webui"))
    monkeypatch.setenv("DREAMCORE_STANDIN_FLAVOR", request.param)
    use_standin_host(tmp_path / "webui", request.param)
    yield request.param
    remove_standin_host()


def _into_checkpoint_folder(model: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".safetensors", ".yaml"):
        os.link(model.with_suffix(suffix), folder / model.with_suffix(suffix).name)  # 250 MB: not copied
    return folder / model.name


def test_the_standin_webui_loads_it_through_use_in_txt2img(flavor: str, webui_model: Path) -> None:
    from modules import paths, sd_models, shared

    checkpoints = Path(paths.models_path) / "Stable-diffusion"
    write_loadable_checkpoint(checkpoints / "base.safetensors")
    shared.refresh_checkpoints()
    sd_models.start_with_model("base.safetensors")
    placed = _into_checkpoint_folder(webui_model, checkpoints / "tiny")
    host = host_module.WebUIHost()
    assert host.select_checkpoint(placed) == "tiny/tiny-sd1-webui.safetensors"
    assert host.loaded_checkpoint() == "tiny/tiny-sd1-webui.safetensors"


def test_the_standin_refuses_the_small_tiny_model_as_the_webui_does(tmp_path: Path, webui_model: Path) -> None:
    # The tests' usual tiny model with a .yaml describing it: GroupNorms of 8 groups and 16 channels, which
    # the WebUI's model code (32 groups everywhere) cannot build.
    use_standin_host(tmp_path / "webui", "a1111")
    try:
        from modules import sd_models

        small = save_tiny_model(tmp_path / "small" / "tiny-sd1.safetensors", fmt="safetensors")
        small.with_suffix(".yaml").write_text(webui_original_config_yaml(tiny_component_configs("sd1")))
        with pytest.raises(ValueError, match="num_channels must be divisible by num_groups"):
            sd_models.read_checkpoint(str(small))
        # and the WebUI model's .yaml beside the small file: every tensor of another size is named
        small.with_suffix(".yaml").write_bytes(webui_model.with_suffix(".yaml").read_bytes())
        with pytest.raises(RuntimeError, match=r"size mismatch for cond_stage_model\.transformer\.text_model\."
                                               r"embeddings\.token_embedding\.weight: copying a param with shape "
                                               r"\[49408, 32\]"):
            sd_models.read_checkpoint(str(small))
        sd_models.read_checkpoint(str(webui_model))  # the WebUI model itself loads
    finally:
        remove_standin_host()
