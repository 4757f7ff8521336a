"""The host adapter in each WebUI flavor: where models go, how one is selected, the GPU hand-over."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Iterator

import pytest

from form_loader import glue  # noqa: F401
from host_loader import remove_standin_host, use_standin_host

publish = importlib.import_module("dreamcore_webui.publish")


@pytest.fixture(params=["a1111", "forge", "sdnext"])
def flavor(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("DREAMCORE_STANDIN_DATA_DIR", str(tmp_path / "webui"))
    monkeypatch.setenv("DREAMCORE_STANDIN_FLAVOR", request.param)
    use_standin_host(tmp_path / "webui", request.param)
    yield request.param
    remove_standin_host()


def test_publish_into_the_hosts_checkpoint_folder_and_select_it(flavor: str, tmp_path: Path) -> None:
    from modules import sd_models, shared

    host = importlib.import_module("dreamcore_webui.host").WebUIHost()
    assert host.flavor == flavor
    custom = tmp_path / "my-checkpoints"
    if flavor == "sdnext":
        shared.opts.data["ckpt_dir"] = str(custom)  # SD.Next keeps the folder among its options
    else:
        shared.cmd_opts.ckpt_dir = str(custom)  # A1111/Forge: --ckpt-dir
    assert host.checkpoint_dir() == custom
    exported = tmp_path / "job" / "anna.safetensors"
    exported.parent.mkdir()
    exported.write_bytes(b"model")
    published = publish.publish_checkpoint(exported, host.checkpoint_dir(), "anna", "photo of sks person")
    assert published.path == custom / "dreamcore" / "anna.safetensors"

    title = host.select_checkpoint(published.path)
    assert title in host.checkpoint_choices()
    assert host.checkpoint_path(title) == str(published.path)
    assert shared.opts.data["sd_model_checkpoint"] == title
    expected_call = f"forge-change:{title}" if flavor == "forge" else f"load:{title}"
    assert sd_models.calls[-1] == expected_call


def test_a_file_outside_the_list_is_explained(flavor: str, tmp_path: Path) -> None:
    host = importlib.import_module("dreamcore_webui.host")
    stray = tmp_path / "elsewhere.safetensors"
    stray.write_bytes(b"x")
    with pytest.raises(host.CheckpointNotFound, match="refresh"):
        host.WebUIHost().select_checkpoint(stray)


def test_the_webuis_model_leaves_the_gpu_for_training_and_comes_back(flavor: str) -> None:
    from modules import sd_models, shared

    shared.opts.data["sd_model_checkpoint"] = "base.safetensors"
    host = importlib.import_module("dreamcore_webui.host").WebUIHost()
    freed = host.free_gpu()
    restored = host.restore_gpu()
    if flavor == "forge":
        # Forge has no sd_models unload; without its backend package the model stays, and the tab says so.
        assert "stays loaded" in freed and sd_models.calls == []
    else:
        assert "out of GPU memory" in freed and "again" in restored
        assert sd_models.calls == ["unload", "load:base.safetensors"]
    assert host.restore_gpu() == ""  # only once per unload


def test_a_lora_goes_to_the_hosts_lora_folder_with_its_prompt_snippet(flavor: str, tmp_path: Path) -> None:
    from modules import paths, shared

    host = importlib.import_module("dreamcore_webui.host").WebUIHost()
    assert host.lora_dir() == Path(paths.models_path) / "Lora"
    custom = tmp_path / "my-loras"
    if flavor == "sdnext":
        shared.opts.data["lora_dir"] = str(custom)
    else:
        shared.cmd_opts.lora_dir = str(custom)  # --lora-dir
    assert host.lora_dir() == custom
    exported = tmp_path / "job" / "anna.safetensors"
    exported.parent.mkdir()
    exported.write_bytes(b"lora weights")
    published = publish.publish_lora(exported, host.lora_dir(), "anna", "photo of sks person")
    assert published.path == custom / "dreamcore" / "anna.safetensors"
    assert published.path.read_bytes() == b"lora weights"
    assert published.prompt_snippet == "<lora:anna:1> photo of sks person"
