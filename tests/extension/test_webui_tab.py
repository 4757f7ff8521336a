"""The tab inside the stand-in WebUI, in this process (newest gradio): what it shows and what its handlers do
when something is wrong. The full training run through the tab is in test_webui_hosts.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

import host_scenario
from form_loader import glue  # noqa: F401  loads dreamcore_webui as the entry file does
from host_loader import load_extension_scripts, remove_standin_host, use_standin_host


@pytest.fixture
def webui(tmp_path: Path, tiny_base_model: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    monkeypatch.setenv("DREAMCORE_STANDIN_DATA_DIR", str(tmp_path / "webui"))
    monkeypatch.setenv("DREAMCORE_STANDIN_FLAVOR", "a1111")
    root = host_scenario.make_extension_folder(tmp_path / "webui")
    host_scenario.make_base_model(tmp_path / "webui", tiny_base_model)
    use_standin_host(tmp_path / "webui", "a1111")
    from modules import script_callbacks, shared

    shared.refresh_checkpoints()
    scripts = load_extension_scripts(root)
    yield {"root": root, "extension": scripts[0].EXTENSION, "callbacks": script_callbacks, "shared": shared,
           "photos": host_scenario.make_photos(tmp_path / "photos")}
    script_callbacks.clear_callbacks()
    remove_standin_host()


def _labels(blocks) -> set[str]:
    return {getattr(block, "label", None) for block in blocks.blocks.values()} - {None}


def test_tab_shows_every_advanced_field_and_the_settings(webui: dict) -> None:
    webui["callbacks"].ui_settings_callback()
    tabs = webui["callbacks"].ui_tabs_callback()
    assert [(title, elem_id) for _, title, elem_id in tabs] == [("DreamBooth", "dreamcore_tab")]
    handlers = webui["extension"].handlers
    labels = _labels(tabs[0][0])
    assert {f.name for f in handlers.advanced} <= labels
    assert {"Base model (SD 1.x / 2.x checkpoint)", "Preset", "Samples per saved step", "Log"} <= labels
    options = webui["shared"].opts.data_labels
    assert options["dreamcore_default_preset"].default == "Portrait"
    assert options["dreamcore_output_dir"].default.endswith("outputs/dreamcore")


def test_a_removed_dependency_shows_a_message_not_an_empty_page(webui: dict,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)  # how Python marks a module that cannot be imported
    tabs = webui["callbacks"].ui_tabs_callback()
    assert [(title, elem_id) for _, title, elem_id in tabs] == [("DreamBooth", "dreamcore_tab")]
    extension = webui["extension"]
    assert extension.handlers is None
    message = extension.dependencies.markdown()
    assert "`diffusers` is not installed" in message and "pip install 'diffusers>=0.31'" in message
    shown = [block.value for block in tabs[0][0].blocks.values() if getattr(block, "elem_id", "") == "dreamcore_problem"]
    assert shown and "diffusers" in str(shown[0])


def test_a_tab_that_fails_to_build_shows_the_error(webui: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    tab_module = sys.modules["dreamcore_webui.tab"]

    def broken_build_tab(*args, **kwargs):
        raise AttributeError("module 'gradio' has no attribute 'Gallery'")

    monkeypatch.setattr(tab_module, "build_tab", broken_build_tab)
    tabs = webui["callbacks"].ui_tabs_callback()
    assert len(tabs) == 1
    shown = [str(block.value) for block in tabs[0][0].blocks.values()
             if getattr(block, "elem_id", "") == "dreamcore_problem"]
    assert shown and "has no attribute 'Gallery'" in shown[0]


def test_start_with_bad_values_explains_and_queues_nothing(webui: dict) -> None:
    webui["callbacks"].ui_tabs_callback()
    handlers = webui["extension"].handlers
    advanced = handlers.preset_values(handlers.default_preset)
    advanced[[f.name for f in handlers.advanced].index("resolution")] = 63
    outputs = list(handlers.start("", str(webui["photos"]), None, "two words", "person", "bad/name", "",
                                  *advanced))
    assert len(outputs) == 1
    message = outputs[0][0]
    assert "Base model" in message and "Token" in message
    outputs = list(handlers.start("base/tiny-sd1.safetensors", str(webui["photos"]), None, "sks", "person",
                                  "anna", handlers.default_preset, *advanced))
    assert "resolution" in outputs[0][0] and "multiple of 8" in outputs[0][0]
    assert handlers.job_choices() == []


def test_preset_choice_sets_the_advanced_controls(webui: dict) -> None:
    webui["callbacks"].ui_tabs_callback()
    handlers = webui["extension"].handlers
    names = [f.name for f in handlers.advanced]
    small = dict(zip(names, handlers.preset_values("GPU 8 GB")))
    lora = dict(zip(names, handlers.preset_values("lora-5GB")))
    default = dict(zip(names, handlers.preset_values(handlers.default_preset)))
    assert (small["memory_preset"], small["train_text_encoder"], small["learning_rate"]) == ("8GB", False, 5e-7)
    assert default["train_token_embedding"] == "auto"  # empty: dreamcore decides (on for the Portrait preset)
    assert (lora["use_lora"], lora["learning_rate"]) == (True, 1e-4)
    assert (default["memory_preset"], default["use_lora"]) == ("auto", False)
    assert small["max_train_steps"] == ""  # empty = 100 steps per photo


def test_uploaded_files_from_any_gradio_version() -> None:
    tab = sys.modules["dreamcore_webui.tab"]

    class TempFile:  # gradio 3.x gives tempfile wrappers with .name
        name = "/tmp/a.png"

    assert tab.uploaded_paths([TempFile(), "/tmp/b.png"]) == ["/tmp/a.png", "/tmp/b.png"]
    assert tab.uploaded_paths(None) == []


def test_prepare_crops_around_the_face_previews_and_switches_training_to_the_crops(webui: dict,
                                                                                   tmp_path: Path) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    photos = tmp_path / "phone-photos"
    photos.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(photos / "astronaut.png")
    Image.new("RGB", (300, 400), (90, 140, 200)).save(photos / "sky.png")
    webui["callbacks"].ui_tabs_callback()
    handlers = webui["extension"].handlers
    report, preview, photos_dir = handlers.prepare(str(photos), None, "sks", "anna", 64, "portrait")
    assert "1 of 2 photos kept" in report and "rejected sky.png" in report
    assert Path(photos_dir).name == "anna" and Path(photos_dir).parent.name == "prepared"
    kept = [path for path, caption in preview if caption.startswith("astronaut.png")]
    assert len(kept) == 1 and Image.open(kept[0]).size == (64, 64)
    assert any("contact sheet" in caption for _, caption in preview)
    # A folder that does not exist: said plainly, and the photo folder stays as typed.
    report, preview, photos_dir = handlers.prepare(str(tmp_path / "nope"), None, "sks", "anna", 64, "portrait")
    assert "nope" in report and preview == [] and photos_dir == str(tmp_path / "nope")


@pytest.mark.slow  # two training children (~1 min); the Done-when runs are in test_webui_hosts/install
def test_cancel_stops_a_running_job_and_resume_finishes_it(webui: dict) -> None:
    webui["callbacks"].ui_tabs_callback()
    handlers = webui["extension"].handlers
    advanced = dict(zip([f.name for f in handlers.advanced], handlers.preset_values(handlers.default_preset)))
    advanced.update(host_scenario.TINY_RUN, with_prior_preservation=False, max_train_steps="10",
                    save_interval=0, checkpointing_steps=5)
    values = ["base/tiny-sd1.safetensors", str(webui["photos"]), None, "sks", "person", "stop-me",
              handlers.default_preset, *advanced.values()]
    cancel_message = ""
    for outputs in handlers.start(*values):
        if "running (train)" in outputs[1] and not cancel_message:
            cancel_message = handlers.cancel("stop-me")
    assert cancel_message.startswith("Cancelling stop-me")
    assert "was cancelled" in outputs[0]
    assert handlers.cancel("stop-me").startswith("**job 'stop-me' has already ended")
    stopped_at = handlers.controller.job("stop-me").step
    assert stopped_at < 10
    for outputs in handlers.resume("stop-me"):
        pass
    info = handlers.controller.job("stop-me")
    assert info.status == "completed" and info.step == 10, outputs[0]
    assert "finished" in outputs[0]


def test_an_incomplete_extension_folder_still_shows_the_tab(webui: dict) -> None:
    (webui["root"] / "pyproject.toml").unlink()
    tabs = webui["callbacks"].ui_tabs_callback()
    shown = [str(block.value) for block in tabs[0][0].blocks.values()
             if getattr(block, "elem_id", "") == "dreamcore_problem"]
    assert shown and "incomplete" in shown[0] and "pyproject.toml" in shown[0]


def test_check_token_explains_split_tokens_and_accepts_rare_ones(webui: dict) -> None:
    webui["callbacks"].ui_tabs_callback()
    handlers = webui["extension"].handlers
    split = handlers.check_token("ukj")
    assert split.startswith("Consider another token") and "`" in split  # with suggestions
    assert handlers.check_token("sks").startswith("OK")
    assert "one word" in handlers.check_token("two words")
