"""The host adapter in each WebUI flavor: where models go, how one is loaded and how a failed load is
reported, the GPU hand-over."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Iterator

import pytest

from form_loader import glue  # noqa: F401
from host_loader import remove_standin_host, use_standin_host, write_loadable_checkpoint

publish = importlib.import_module("dreamcore_webui.publish")
host_module = importlib.import_module("dreamcore_webui.host")

BASE = "base.safetensors"
NEW = "dreamcore/anna.safetensors"


@pytest.fixture(params=["a1111", "forge", "sdnext"])
def flavor(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("DREAMCORE_STANDIN_DATA_DIR", str(tmp_path / "webui"))
    monkeypatch.setenv("DREAMCORE_STANDIN_FLAVOR", request.param)
    use_standin_host(tmp_path / "webui", request.param)
    yield request.param
    remove_standin_host()


def _webui_with_base_loaded(tmp_path: Path) -> object:
    """The WebUI as it runs: base.safetensors in its checkpoint folder, selected and loaded at start."""
    from modules import paths, sd_models, shared

    write_loadable_checkpoint(Path(paths.models_path) / "Stable-diffusion" / BASE)
    shared.refresh_checkpoints()
    sd_models.start_with_model(BASE)
    return host_module.WebUIHost()


def _publish(host: object, tmp_path: Path, loadable: bool = True) -> Path:
    exported = tmp_path / "job" / "anna.safetensors"
    if loadable:
        write_loadable_checkpoint(exported)
    else:
        exported.parent.mkdir(parents=True, exist_ok=True)
        exported.write_bytes(b"model")  # cut short: no safetensors header
    return publish.publish_checkpoint(exported, host.checkpoint_dir(), "anna", "photo of sks person").path


def test_publish_into_the_hosts_checkpoint_folder_and_the_host_loads_it(flavor: str, tmp_path: Path) -> None:
    from modules import sd_models, shared

    custom = tmp_path / "my-checkpoints"
    if flavor == "sdnext":
        shared.opts.data["ckpt_dir"] = str(custom)  # SD.Next keeps the folder among its options
    else:
        shared.cmd_opts.ckpt_dir = str(custom)  # A1111/Forge: --ckpt-dir
    write_loadable_checkpoint(custom / BASE)
    shared.refresh_checkpoints()
    sd_models.start_with_model(BASE)
    host = host_module.WebUIHost()
    assert host.flavor == flavor
    assert host.checkpoint_dir() == custom
    path = _publish(host, tmp_path)
    assert path == custom / "dreamcore" / "anna.safetensors"

    assert host.select_checkpoint(path) == NEW
    assert host.loaded_checkpoint() == NEW
    assert host.checkpoint_path(NEW) == str(path)
    assert shared.opts.data["sd_model_checkpoint"] == NEW
    expected = [f"forge-change:{NEW}", f"forge-load:{NEW}"] if flavor == "forge" else [f"load:{NEW}"]
    assert sd_models.calls == expected
    assert host.select_checkpoint(path) == NEW and sd_models.calls == expected  # pressed twice: loaded already


def test_a_model_the_host_fails_to_load_is_reported_and_the_old_one_stays(flavor: str, tmp_path: Path) -> None:
    """A1111: opts.set returns False and keeps its model; SD.Next: it says nothing went wrong but has dropped
    its model; Forge: the load raises. Each time the tab must hear it, and the WebUI stays on base."""
    from modules import sd_models, shared

    host = _webui_with_base_loaded(tmp_path)
    path = _publish(host, tmp_path, loadable=False)
    with pytest.raises(host_module.CheckpointNotLoaded) as raised:
        host.select_checkpoint(path)
    message = str(raised.value)
    assert f"did not load {NEW}" in message
    assert "Error while deserializing header" in message  # the host's own error
    assert f"It has {BASE} loaded; txt2img was left as it was" in message
    assert "console" in message and "train or export the model again" in message  # what to do
    assert host.loaded_checkpoint() == BASE
    assert shared.opts.data["sd_model_checkpoint"] == BASE  # not left to fail again at the next generation
    failed_then_back = {
        "a1111": [f"load-failed:{NEW}"],  # A1111 kept the weights it had
        "sdnext": [f"load-failed:{NEW}", f"load:{BASE}"],  # SD.Next had dropped them: loaded again
        "forge": [f"forge-change:{NEW}", f"forge-load-failed:{NEW}", f"forge-change:{BASE}", f"forge-load:{BASE}"],
    }
    assert sd_models.calls == failed_then_back[flavor]


@pytest.mark.parametrize("flavor", ["a1111"], indirect=True)
def test_a_host_that_keeps_its_model_without_a_word_is_not_taken_for_a_switch(
        flavor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modules import sd_models

    host = _webui_with_base_loaded(tmp_path)
    path = _publish(host, tmp_path)
    monkeypatch.setattr(sd_models, "reload_model_weights", lambda *args, **kwargs: None)  # the option took
    with pytest.raises(host_module.CheckpointNotLoaded, match="reported no error, but its loaded model is not"):
        host.select_checkpoint(path)
    assert host.loaded_checkpoint() == BASE


@pytest.mark.parametrize("flavor", ["a1111"], indirect=True)
def test_a_refused_setting_is_reported(flavor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modules import shared

    host = _webui_with_base_loaded(tmp_path)
    path = _publish(host, tmp_path)
    monkeypatch.setattr(shared.opts, "set", lambda key, value: False)  # as with frozen settings
    with pytest.raises(host_module.CheckpointNotLoaded, match="refused the new value"):
        host.select_checkpoint(path)


@pytest.mark.parametrize("flavor", ["a1111", "forge"], indirect=True)
def test_out_of_memory_while_loading_says_to_free_memory(flavor: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from modules import sd_models

    host = _webui_with_base_loaded(tmp_path)
    path = _publish(host, tmp_path)
    real_read = sd_models.read_checkpoint

    def out_of_memory_for_the_new_model(filename: str) -> dict:
        if filename == str(path):
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real_read(filename)

    monkeypatch.setattr(sd_models, "read_checkpoint", out_of_memory_for_the_new_model)
    with pytest.raises(host_module.CheckpointNotLoaded) as raised:
        host.select_checkpoint(path)
    assert "CUDA out of memory" in str(raised.value) and "Free memory" in str(raised.value)
    assert host.loaded_checkpoint() == BASE


def test_a_file_outside_the_list_is_explained(flavor: str, tmp_path: Path) -> None:
    stray = tmp_path / "elsewhere.safetensors"
    stray.write_bytes(b"x")
    with pytest.raises(host_module.CheckpointNotFound, match="refresh"):
        host_module.WebUIHost().select_checkpoint(stray)


def test_the_webuis_model_leaves_the_gpu_for_training_and_comes_back(flavor: str, tmp_path: Path) -> None:
    from modules import sd_models

    host = _webui_with_base_loaded(tmp_path)
    freed = host.free_gpu()
    restored = host.restore_gpu()
    if flavor == "forge":
        # Forge has no sd_models unload; without its backend package the model stays, and the tab says so.
        assert "stays loaded" in freed and sd_models.calls == []
    else:
        assert "out of GPU memory" in freed and "again" in restored
        assert sd_models.calls == ["unload", f"load:{BASE}"]
    assert host.restore_gpu() == ""  # only once per unload
    assert host.loaded_checkpoint() == BASE


def test_a_lora_goes_to_the_hosts_lora_folder_with_its_prompt_snippet(flavor: str, tmp_path: Path) -> None:
    from modules import paths, shared

    host = host_module.WebUIHost()
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
