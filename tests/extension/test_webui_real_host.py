"""dev/webui_real_host.py: its requests and verdicts, and its API steps (install report, base model loaded,
login, a job trained through REST, the result selected and drawn with) against the stand-in WebUI served over
HTTP with dreamcore's job routes mounted by the extension, as in the WebUI."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from host_loader import STANDIN_DIR, load_extension_scripts, remove_standin_host, use_standin_host
from host_scenario import make_extension_folder
from scenario_checks import REPO_ROOT

spec = importlib.util.spec_from_file_location("webui_real_host", REPO_ROOT / "dev" / "webui_real_host.py")
real_host = importlib.util.module_from_spec(spec)
sys.modules["webui_real_host"] = real_host  # dataclasses look their module up by name
spec.loader.exec_module(real_host)


def test_requests_carry_json_and_the_webui_login() -> None:
    request = real_host.build_request("http://127.0.0.1:7899", "POST", "/dreamcore/v1/jobs", {"name": "a"},
                                      ("dreamcore", "pw"))
    assert request.full_url == "http://127.0.0.1:7899/dreamcore/v1/jobs" and request.get_method() == "POST"
    assert request.get_header("Content-type") == "application/json"  # dreamcore's routes refuse others (415)
    assert json.loads(request.data) == {"name": "a"}
    assert request.get_header("Authorization") == "Basic " + base64.b64encode(b"dreamcore:pw").decode()
    bare = real_host.build_request("http://h", "GET", "/x", None, None)
    assert bare.data is None and bare.get_header("Authorization") is None and bare.get_header("Content-type") is None


def test_the_webui_starts_offline_on_cpu_with_its_install_step() -> None:
    command = real_host.launch_command(Path("/w/venv/bin/python"), Path("/d"), 7899, ("dreamcore", "pw"))
    assert command[:2] == ["/w/venv/bin/python", "launch.py"]
    for flag in ("--skip-torch-cuda-test", "--api", "--no-download-sd-model", "--api-server-stop"):
        assert flag in command
    assert command[command.index("--use-cpu") + 1] == "all"
    assert command[command.index("--api-auth") + 1] == "dreamcore:pw"
    assert command[command.index("--data-dir") + 1] == "/d"
    assert not any(flag.startswith(("--skip-prepare", "--skip-install")) for flag in command)
    env = real_host.launch_environment({"PATH": "/bin", "PYTHONPATH": "/x"}, Path("/wheels"))
    assert env["HF_HUB_OFFLINE"] == "1" and "PYTHONPATH" not in env
    assert (env["PIP_NO_INDEX"], env["PIP_FIND_LINKS"]) == ("1", "/wheels")


def test_loaded_verdict_compares_titles_without_the_hash() -> None:
    Answer = real_host.Answer
    ok = real_host.loaded_verdict("select", Answer(200, {"sd_model_checkpoint": "dreamcore/a.safetensors [0123456789]"}),
                                  "dreamcore/a.safetensors")
    assert ok.ok and "0123456789" in ok.reason
    kept_old = real_host.loaded_verdict("select", Answer(200, {"sd_model_checkpoint": "base.safetensors"}),
                                        "dreamcore/a.safetensors")
    assert not kept_old.ok and "'base.safetensors'" in kept_old.reason and "dreamcore/a.safetensors" in kept_old.reason
    wrapped = real_host.loaded_verdict("select", Answer(401, {"error": "HTTPException", "detail": "Unauthorized"}),
                                       "x")
    assert not wrapped.ok and "401" in wrapped.reason and "Unauthorized" in wrapped.reason


def test_job_verdict_gives_the_error_the_advice_and_the_log() -> None:
    failed = real_host.job_verdict({"name": "j", "status": "failed", "error": "CUDA out of memory",
                                    "advice": "turn on gradient checkpointing", "log_tail": ["line 1", "line 2"]})
    assert not failed.ok
    assert "j ended failed: CUDA out of memory (turn on gradient checkpointing)" in failed.reason
    assert "log: line 2" in failed.reason
    done = real_host.job_verdict({"name": "j", "status": "completed", "step": 4,
                                  "outputs": {"single_file": "/o/j.safetensors"}})
    assert done.ok and "/o/j.safetensors" in done.reason
    assert not real_host.job_verdict({"name": "j", "status": "completed", "outputs": {}}).ok


def _png(size: int) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(("size", "model", "ok", "reason"), [
    (64, "anna", True, "a 64x64 picture from anna"),
    (64, "base", False, "drew with model 'base', not 'anna'"),
    (32, "anna", False, "drew 32x32, asked for 64x64"),
])
def test_txt2img_verdict_checks_the_picture_and_the_model_it_names(size: int, model: str, ok: bool,
                                                                   reason: str) -> None:
    answer = real_host.Answer(200, {"images": [_png(size)], "info": json.dumps({"sd_model_name": model})})
    verdict, png = real_host.txt2img_verdict(answer, "dreamcore/anna.safetensors [abcdef0123]", 64)
    assert (verdict.ok, verdict.reason) == (ok, reason) and png
    refused = real_host.txt2img_verdict(real_host.Answer(500, {"detail": "No model loaded"}), "x", 64)[0]
    assert not refused.ok and "No model loaded" in refused.reason


# --- the API steps against the stand-in WebUI over HTTP ----------------------------------------------------
@pytest.fixture()
def standin_webui(tmp_path: Path) -> tuple:
    """The stand-in WebUI (A1111, --api-auth) serving /sdapi and the extension's job routes on a free port, with
    the tiny WebUI model in its checkpoint folder, loaded at start, and the extension's install step run."""
    import uvicorn
    from fastapi import FastAPI

    from dreamcore.tiny import save_tiny_model

    layout = real_host.Layout(webui=tmp_path / "checkout", data=tmp_path / "webui", work=tmp_path)
    extension_root = make_extension_folder(layout.data)
    installed = subprocess.run([sys.executable, str(extension_root / "install.py")], cwd=layout.data,
                               capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    save_tiny_model(layout.checkpoints / "tiny-sd1-webui.safetensors", fmt="safetensors", webui=True)
    real_host.make_photos(layout.photos)
    login = ("dreamcore", "secret")
    use_standin_host(layout.data, "a1111")
    sys.path.insert(0, str(STANDIN_DIR))
    from modules import script_callbacks, sd_models, shared
    from sdapi import add_sdapi_routes

    shared.cmd_opts.api_auth = f"{login[0]}:{login[1]}"
    shared.refresh_checkpoints()
    sd_models.start_with_model("tiny-sd1-webui.safetensors")
    load_extension_scripts(extension_root)
    script_callbacks.ui_settings_callback()
    script_callbacks.ui_tabs_callback()
    app = FastAPI()
    add_sdapi_routes(app, login)
    script_callbacks.app_started_callback(None, app)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield real_host.WebUIClient(f"http://127.0.0.1:{port}", login, timeout=60), layout
    server.should_exit = True
    thread.join(timeout=10)
    remove_standin_host()


@pytest.mark.slow
def test_the_api_steps_pass_against_the_standin_webui(standin_webui: tuple) -> None:
    client, layout = standin_webui
    verdicts = []
    real_host.run_api_steps(client, layout, "real-host-test", 600, verdicts.append)
    assert [(v.step, v.ok) for v in verdicts] == [
        ("install step", True), ("base model loaded", True), ("API login", True), ("train", True),
        ("select", True), ("txt2img", True)], "\n".join(v.line() for v in verdicts)
    assert (layout.checkpoints / "dreamcore" / "real-host-test.yaml").is_file()  # the trained model's config
    assert (layout.work / "txt2img.png").is_file()


def test_a_model_the_webui_cannot_load_fails_the_select_step(standin_webui: tuple) -> None:
    client, layout = standin_webui
    # A file whose .yaml describes another model: the stand-in's load fails and keeps the model it had.
    from dreamcore.tiny import save_tiny_model, tiny_component_configs, webui_original_config_yaml

    folder = layout.work / "job-output"
    broken = save_tiny_model(folder / "broken.safetensors", fmt="safetensors")
    broken.with_suffix(".yaml").write_text(webui_original_config_yaml(tiny_component_configs("sd1")))
    verdict, title = real_host.select_trained(client, layout, {"outputs": {"single_file": str(broken)}})
    assert title == "dreamcore/broken.safetensors"
    assert not verdict.ok and "'tiny-sd1-webui.safetensors'" in verdict.reason, verdict.reason
    assert os.path.isfile(layout.checkpoints / "dreamcore" / "broken.yaml")
