"""The tab inside the stand-in WebUI, in this process (newest gradio): what it shows and what its handlers do
when something is wrong. The full training run through the tab is in test_webui_hosts.py."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

import host_scenario
from form_loader import glue  # noqa: F401  loads dreamcore_webui as the entry file does
from host_loader import load_extension_scripts, remove_standin_host, use_standin_host, write_loadable_checkpoint
from scenario_checks import assert_loaded_like_the_host, run_scenario

BASE_TITLE = "base/tiny-sd1.safetensors"


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


def _dropdown(blocks, label: str) -> tuple[Any, list[str]]:
    """(value, choices) of the tab's dropdown with that label; gradio 4+ keeps choices as (name, value)."""
    found = [block for block in blocks.blocks.values() if getattr(block, "label", None) == label]
    assert len(found) == 1, label
    choices = [choice[1] if isinstance(choice, (tuple, list)) else choice for choice in found[0].choices]
    return found[0].value, choices


def test_the_webui_start_imports_only_the_glue_and_its_callbacks(tmp_path: Path, tiny_base_model: Path) -> None:
    # In a fresh process, as the WebUI starts: what scripts/ imports, the tab and the REST API it then makes.
    result = run_scenario(sys.executable, tmp_path / "run", base_model=tiny_base_model)
    assert_loaded_like_the_host(result)
    assert result["tab_ready"] and result["api_jobs_status"] == 200


def test_callbacks_carry_a_file_name_of_their_own_in_the_start_up_profile(webui: dict) -> None:
    # The host names each callback after the file that registered it; "webui.py" is the host's own file.
    files = {Path(filename).name for _kind, filename in webui["callbacks"].registered_from}
    assert files == {"dreamcore_callbacks.py"}
    assert {kind for kind, _ in webui["callbacks"].registered_from} == {"ui_settings", "ui_tabs", "app_started"}


def test_the_base_model_starts_on_the_only_checkpoint_or_the_loaded_one(webui: dict) -> None:
    from modules import paths, sd_models

    tabs = webui["callbacks"].ui_tabs_callback()
    value, choices = _dropdown(tabs[0][0], "Base model (SD1.x / SD2.x / SDXL checkpoint)")
    assert (value, choices) == (BASE_TITLE, [BASE_TITLE])  # the only checkpoint, though none is loaded yet

    write_loadable_checkpoint(Path(paths.models_path) / "Stable-diffusion" / "other.safetensors")
    webui["shared"].refresh_checkpoints()
    handlers = webui["extension"].handlers
    assert handlers.base_model_choices() == ([BASE_TITLE, "other.safetensors"], None)  # two: the person picks
    sd_models.start_with_model("other.safetensors")
    tabs = webui["callbacks"].ui_tabs_callback()
    assert _dropdown(tabs[0][0], "Base model (SD1.x / SD2.x / SDXL checkpoint)") == (
        "other.safetensors", [BASE_TITLE, "other.safetensors"])  # the WebUI's loaded model


def test_each_page_load_shows_the_model_the_webui_has_loaded_by_then(webui: dict) -> None:
    from modules import paths, sd_models

    write_loadable_checkpoint(Path(paths.models_path) / "Stable-diffusion" / "other.safetensors")
    webui["shared"].refresh_checkpoints()
    blocks = webui["callbacks"].ui_tabs_callback()[0][0]  # built at WebUI start: no model loaded yet
    assert _dropdown(blocks, "Base model (SD1.x / SD2.x / SDXL checkpoint)")[0] is None
    sd_models.start_with_model("other.safetensors")  # the WebUI's model finished loading after the tab was built
    on_page_load = [function.fn for function in blocks.fns.values()
                    if any(event == "load" for _target, event in function.targets)]
    assert len(on_page_load) == 1
    base_model, job = on_page_load[0]()
    assert (base_model["value"], base_model["choices"]) == ("other.safetensors", [BASE_TITLE, "other.safetensors"])
    assert (job["value"], job["choices"]) == (None, [])


def test_the_job_list_starts_on_the_running_job_else_the_newest(webui: dict,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    controller = webui["extension"].controller
    controller.jobs_dir.mkdir(parents=True)
    jobs = [SimpleNamespace(name="first", status="completed", created_at=1.0),
            SimpleNamespace(name="training", status="running", created_at=2.0),
            SimpleNamespace(name="waiting", status="queued", created_at=3.0)]
    monkeypatch.setattr(controller, "manager", lambda: SimpleNamespace(list=lambda: list(jobs)))
    tabs = webui["callbacks"].ui_tabs_callback()
    assert _dropdown(tabs[0][0], "Job") == ("training", ["waiting", "training", "first"])
    jobs[1].status = "completed"
    assert webui["extension"].handlers.jobs_overview() == (["waiting", "training", "first"], "waiting")


def _completed_job(folder: Path, name: str, loadable: bool) -> Any:
    """A finished job as the job manager reports it: its saved config and its exported model."""
    from dreamcore.config import TrainConfig
    from dreamcore.jobs.info import JobInfo

    exported = folder / "output" / f"{name}.safetensors"
    if loadable:
        write_loadable_checkpoint(exported)
    else:
        exported.parent.mkdir(parents=True)
        exported.write_bytes(b"cut short")  # no safetensors header: the WebUI cannot load it
    TrainConfig(pretrained_model_name_or_path="base", instance_data_dir=str(folder), output_dir=str(folder),
                instance_prompt="photo of sks person").save(folder / "train_config.json")
    return JobInfo(name=name, status="completed", folder=str(folder), outputs={"single_file": str(exported)})


def test_use_in_txt2img_fills_txt2img_only_once_the_webui_has_loaded_the_model(
        webui: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modules import sd_models

    sd_models.start_with_model(BASE_TITLE)
    webui["callbacks"].ui_tabs_callback()
    handlers = webui["extension"].handlers
    jobs = {"broken": _completed_job(tmp_path / "broken", "broken", loadable=False),
            "anna": _completed_job(tmp_path / "anna", "anna", loadable=True)}
    monkeypatch.setattr(handlers.controller, "job", jobs.__getitem__)

    message, prompt, title = handlers.use_in_txt2img("broken")
    assert message.startswith("**Not selected:** The WebUI did not load dreamcore/broken.safetensors")
    assert "Error while deserializing header" in message and f"It has {BASE_TITLE} loaded" in message
    assert (prompt, title) == ("", "")  # the page then neither fills the prompt nor switches to txt2img
    assert webui["shared"].opts.data["sd_model_checkpoint"] == BASE_TITLE

    message, prompt, title = handlers.use_in_txt2img("anna")
    assert message.startswith("The WebUI has loaded **dreamcore/anna.safetensors** for txt2img")
    assert (prompt, title) == ("portrait photo of sks person", "dreamcore/anna.safetensors")
    assert webui["extension"].host.loaded_checkpoint() == "dreamcore/anna.safetensors"


def _completed_lora_job(folder: Path, name: str, family: str) -> Any:
    """A finished LoRA job whose kohya file says which family it is for."""
    import torch
    from safetensors.torch import save_file

    from dreamcore.config import TrainConfig
    from dreamcore.jobs.info import JobInfo
    from dreamcore.lora.files import FAMILY_KEY

    exported = folder / "output" / f"{name}.safetensors"
    exported.parent.mkdir(parents=True)
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(exported),
              metadata={FAMILY_KEY: family})
    TrainConfig(pretrained_model_name_or_path="base", instance_data_dir=str(folder), output_dir=str(folder),
                instance_prompt="photo of sks person").save(folder / "train_config.json")
    return JobInfo(name=name, status="completed", folder=str(folder), outputs={"lora": str(exported)})


def test_use_in_txt2img_says_when_a_lora_needs_another_family_than_the_loaded_checkpoint(
        webui: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modules import sd_models

    from dreamcore.families import DEFAULT_FAMILY, FAMILIES

    other = next(f for f in FAMILIES.values() if not f.same_weights_as(DEFAULT_FAMILY))  # the base is SD1
    sd_models.start_with_model(BASE_TITLE)
    webui["callbacks"].ui_tabs_callback()
    handlers = webui["extension"].handlers
    jobs = {"fits": _completed_lora_job(tmp_path / "fits", "fits", DEFAULT_FAMILY.name),
            "other": _completed_lora_job(tmp_path / "other", "other", other.name)}
    monkeypatch.setattr(handlers.controller, "job", jobs.__getitem__)

    message, prompt, title = handlers.use_in_txt2img("fits")
    assert message.startswith("The LoRA is in the WebUI's Lora folder") and "<lora:fits:1>" in prompt
    message, prompt, title = handlers.use_in_txt2img("other")
    assert message.startswith("**Base model does not fit:** This LoRA is for " + other.label)
    assert f"{BASE_TITLE} loaded, a {DEFAULT_FAMILY.label} checkpoint" in message
    assert "<lora:other:1>" in prompt and title == ""
    assert webui["shared"].opts.data["sd_model_checkpoint"] == BASE_TITLE  # the WebUI's model is left alone


def test_tab_shows_every_advanced_field_and_the_settings(webui: dict) -> None:
    webui["callbacks"].ui_settings_callback()
    tabs = webui["callbacks"].ui_tabs_callback()
    assert [(title, elem_id) for _, title, elem_id in tabs] == [("DreamBooth", "dreamcore_tab")]
    handlers = webui["extension"].handlers
    labels = _labels(tabs[0][0])
    assert {f.name for f in handlers.advanced} <= labels
    assert {"Base model (SD1.x / SD2.x / SDXL checkpoint)", "Preset", "Samples per saved step", "Log"} <= labels
    assert {"SDXL LoRA", "SDXL full"} <= set(_dropdown(tabs[0][0], "Preset")[1])  # the presets of every family
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
    from PIL import Image, ImageDraw

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
    # The class names the subject: a dog's photo without a face is kept, cropped around the dog.
    dogs = tmp_path / "dogs"
    dogs.mkdir()
    dog = Image.new("RGB", (300, 400), (200, 200, 190))
    ImageDraw.Draw(dog).ellipse((150, 220, 290, 380), fill=(120, 70, 30))
    dog.save(dogs / "dog.png")
    report, preview, photos_dir = handlers.prepare(str(dogs), None, "sks", "rex", 64, "portrait", "dog")
    assert "1 of 1 photos kept" in report, report  # no face: kept, not refused
    assert any(caption.startswith("dog.png") for _, caption in preview)
    # A folder that does not exist: said plainly, and the photo folder stays as typed.
    report, preview, photos_dir = handlers.prepare(str(tmp_path / "nope"), None, "sks", "anna", 64, "portrait")
    assert "nope" in report and preview == [] and photos_dir == str(tmp_path / "nope")


@pytest.mark.slow  # two training children (~1 min); the Done-when runs are in test_webui_hosts/install
def test_cancel_stops_a_running_job_and_resume_finishes_it(webui: dict) -> None:
    webui["callbacks"].ui_tabs_callback()
    handlers = webui["extension"].handlers
    advanced = dict(zip([f.name for f in handlers.advanced], handlers.preset_values(handlers.default_preset)))
    # enough steps that the tab's once-a-second view sees training run (10 tiny steps could end between two looks)
    advanced.update(host_scenario.TINY_RUN, with_prior_preservation=False, max_train_steps="100",
                    save_interval=0, checkpointing_steps=25)
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
    assert stopped_at < 100
    for outputs in handlers.resume("stop-me"):
        pass
    info = handlers.controller.job("stop-me")
    assert info.status == "completed" and info.step == 100, outputs[0]
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


def test_a_saved_checkpoint_is_chosen_by_eye_and_used_in_txt2img(webui: dict, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Compare checkpoints lists a job's saved models; the one picked is published and loaded as its own model."""
    from dreamcore.config import TrainConfig
    from modules import sd_models

    sd_models.start_with_model(BASE_TITLE)
    webui["callbacks"].ui_tabs_callback()
    handlers = webui["extension"].handlers
    job = _completed_job(tmp_path / "anna", "anna", loadable=True)
    output = tmp_path / "anna" / "output"
    write_loadable_checkpoint(output / "checkpoints" / "anna-step-000002.safetensors")
    TrainConfig(pretrained_model_name_or_path="base", instance_data_dir=str(tmp_path), output_dir=str(output),
                instance_prompt="photo of sks person", model_name="anna").save(output / "train_config.json")
    monkeypatch.setattr(handlers.controller, "job", {"anna": job}.__getitem__)
    monkeypatch.setattr(handlers.controller, "compare_checkpoints", lambda name: ("grid.png", f"grid of {name}"))

    assert handlers.compare_checkpoints("anna") == ("grid.png", "grid of anna", ["step 2", "final"])
    assert handlers.compare_checkpoints("")[0] is None
    message, prompt, title = handlers.use_in_txt2img("anna", "step 2")
    assert title == "dreamcore/anna-step-2.safetensors" and prompt == "portrait photo of sks person"
    assert webui["extension"].host.loaded_checkpoint() == "dreamcore/anna-step-2.safetensors"
    message, prompt, title = handlers.use_in_txt2img("anna", "step 7")
    assert "has no saved model 'step 7'" in message and "step 2, final" in message and (prompt, title) == ("", "")
    _, _, title = handlers.use_in_txt2img("anna", "final")
    assert title == "dreamcore/anna.safetensors"
