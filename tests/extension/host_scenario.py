"""One WebUI start with dreamcore installed, against the stand-in ``modules``; prints a JSON summary.

Runs under any Python that has the host's packages (the dev venv, or a venv with a WebUI's pins), so the
same steps are checked under each gradio the hosts ship:

    python tests/extension/host_scenario.py WORK_DIR [--flavor a1111|forge|sdnext] [--train]

1. lays out a WebUI data folder with a tiny base checkpoint and an extension folder (the repo's
   dreamcore/, extension/, scripts/ linked in; install.py and pyproject.toml copied);
2. loads scripts/ as the host does and times that import;
3. runs the settings and tab callbacks;
4. with --train: trains a tiny model through the tab's own handlers, then presses "Use in txt2img".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from host_loader import load_extension_scripts, use_standin_host  # noqa: E402

JOB_NAME = "tiny-anna"
TINY_RUN = {  # a few steps at the tiny model's 64 px, with prior preservation and samples
    "resolution": 64, "max_train_steps": "4", "with_prior_preservation": True, "num_class_images": 2,
    "class_infer_steps": 2, "sample_batch_size": 1, "mixed_precision": "no", "use_8bit_adam": False,
    "save_interval": 2, "n_save_sample": 1, "save_infer_steps": 2, "checkpointing_steps": 4,
    "learning_rate": 1e-4,
    "prepare_photos": False,  # the drawn photos hold no face for the detector; the tab's Prepare is tested apart
}


def make_extension_folder(webui: Path) -> Path:
    root = webui / "extensions" / "dreamcore"
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dreamcore", "extension", "scripts"):
        if not (root / name).exists():
            (root / name).symlink_to(REPO_ROOT / name, target_is_directory=True)
    for name in ("install.py", "pyproject.toml"):
        shutil.copyfile(REPO_ROOT / name, root / name)
    return root


def make_base_model(webui: Path, source: Path | None) -> Path:
    """The tiny base checkpoint in the WebUI's models folder (copied from ``source`` when given: a host venv
    without diffusers cannot build one)."""
    target = webui / "models" / "Stable-diffusion" / "base" / "tiny-sd1.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    if source is not None:
        shutil.copyfile(source, target)
    elif not target.exists():
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        subprocess.run([sys.executable, "-m", "dreamcore", "tiny-model", str(target), "--format", "safetensors"],
                       check=True, env=env, capture_output=True)
    return target


def make_photos(folder: Path, count: int = 3) -> Path:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = Image.new("RGB", (80, 96), (40 * index, 120, 200 - 40 * index))
        draw = ImageDraw.Draw(image)
        draw.ellipse((20, 20, 60, 70), fill=(230, 190, 160))  # a face-coloured oval, different per photo
        draw.rectangle((0, 80, 80, 96), fill=(20 * index, 20, 90))
        image.save(folder / f"photo{index}.png")
    return folder


def run(work: Path, flavor: str, train: bool, base_model_source: Path | None = None) -> dict:
    webui = work / "webui"
    extension_root = make_extension_folder(webui)
    make_base_model(webui, base_model_source)
    photos = make_photos(work / "photos")
    use_standin_host(webui, flavor)
    import gradio  # noqa: F401  the WebUI has gradio imported before it loads extensions
    from modules import script_callbacks, sd_models, shared

    shared.refresh_checkpoints()
    base_title = next(t for t in sd_models.checkpoints_list if t.endswith("tiny-sd1.safetensors"))
    sd_models.start_with_model(base_title)  # the WebUI starts with a model loaded
    started = time.perf_counter()
    scripts = load_extension_scripts(extension_root)
    import_seconds = time.perf_counter() - started
    result: dict = {
        "gradio": gradio.__version__, "flavor": flavor, "import_seconds": import_seconds,
        "script_modules": [m.__name__ for m in scripts],
        "heavy_modules_after_import": [m for m in ("torch", "diffusers", "transformers") if m in sys.modules],
        "glue_modules_after_import": sorted(m for m in sys.modules if m.startswith("dreamcore_webui")),
        "root_left_on_sys_path": str(extension_root) in sys.path,
        "dreamcore_file": sys.modules["dreamcore"].__file__ if "dreamcore" in sys.modules else None,
    }
    script_callbacks.ui_settings_callback()
    result["options"] = sorted(k for k in shared.opts.data_labels if k.startswith("dreamcore"))
    tabs = script_callbacks.ui_tabs_callback()
    result["tabs"] = [(type(blocks).__name__, title, elem_id) for blocks, title, elem_id in tabs]
    extension = scripts[0].EXTENSION
    result["tab_ready"] = extension is not None and extension.handlers is not None
    if extension is not None and extension.dependencies is not None:
        result["dependency_message"] = extension.dependencies.markdown()
    from fastapi import FastAPI

    app = FastAPI()  # the WebUI's API app; dreamcore mounts its job routes on it at app start
    script_callbacks.app_started_callback(None, app)
    from fastapi.testclient import TestClient

    api = TestClient(app, base_url="http://127.0.0.1:7860")
    result["api_jobs_status"] = api.get("/dreamcore/v1/jobs").status_code
    result["api_foreign_host_status"] = api.get("/dreamcore/v1/jobs", headers={"host": "evil.example"}).status_code
    if not train or not result["tab_ready"]:
        return result

    handlers = extension.handlers
    advanced = dict(zip([f.name for f in handlers.advanced], handlers.preset_values(handlers.default_preset)))
    advanced.update(TINY_RUN)
    assert base_title in handlers.refresh_models()
    values = [base_title, str(photos), None, "sks", "person", JOB_NAME, handlers.default_preset,
              *advanced.values()]
    started = time.perf_counter()
    outputs = None
    progress_seen = []
    for outputs in handlers.start(*values):
        progress_seen.append(outputs[1])
        if time.perf_counter() - started > 600:
            break
    result["train_seconds"] = time.perf_counter() - started
    result["final_message"] = outputs[0]
    result["log_tail"] = outputs[4][-3000:]
    result["loss_plot_has_line"] = "<polyline" in outputs[2]
    result["sample_count"] = len(outputs[3])
    result["progress_updates"] = len(progress_seen)
    result["job_status"] = extension.controller.job(JOB_NAME).status
    result["checkpoint_list"] = sorted(sd_models.checkpoints_list)
    message, prompt, title = handlers.use_in_txt2img(JOB_NAME)
    loaded = sd_models.model_data.sd_model
    result.update(use_message=message, use_prompt=prompt, use_title=title,
                  selected_checkpoint=shared.opts.data.get("sd_model_checkpoint"),
                  loaded_checkpoint=loaded.sd_checkpoint_info.title if loaded is not None else None,
                  model_calls=list(sd_models.calls))
    published = Path(sd_models.checkpoint_folder()) / "dreamcore" / f"{JOB_NAME}.safetensors"
    result["published_exists"] = published.is_file()
    metadata = published.with_suffix(".json")
    result["user_metadata"] = json.loads(metadata.read_text()) if metadata.is_file() else None
    # The WebUI's model comes back once no job is left (the controller's watcher polls every second).
    deadline = time.monotonic() + 15
    while f"load:{base_title}" not in sd_models.calls and \
            time.monotonic() < deadline and flavor != "forge":
        time.sleep(0.2)
    result["model_calls"] = list(sd_models.calls)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("--flavor", default="a1111", choices=("a1111", "forge", "sdnext"))
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--base-model", type=Path, default=None, help="tiny base checkpoint to copy in")
    args = parser.parse_args()
    result = run(args.work, args.flavor, args.train, args.base_model)
    print("SCENARIO-RESULT " + json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # the job manager's watcher threads are daemons; end without waiting on them


if __name__ == "__main__":
    sys.exit(main())
