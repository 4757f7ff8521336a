"""The extension in each host's gradio: loaded as the host loads scripts/, a tiny job trained through the
tab's own handlers, the model published into the checkpoint list and selected for txt2img.

The A1111 run (gradio 3.41.2, transformers 4.30.2) is in test_webui_install.py, after install.py has run in
a venv holding A1111's pins. Here: the newest gradio (this venv), Forge's gradio 4.40.0 and SD.Next's 3.43.2,
each after install.py has added what that host lacks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from host_venvs import ensure_host_venv
from scenario_checks import REPO_ROOT, assert_loaded_like_the_host, assert_trained_and_selected, run_scenario

pytestmark = pytest.mark.slow  # three WebUIs' venvs, a training child each: run by .ci/run


def test_newest_gradio_trains_through_the_tab_and_selects_the_model(tmp_path: Path, tiny_base_model: Path) -> None:
    result = run_scenario(sys.executable, tmp_path / "run", train=True, base_model=tiny_base_model)
    assert_loaded_like_the_host(result)
    assert_trained_and_selected(result)
    base = "base/tiny-sd1.safetensors"
    # The WebUI's model left the GPU for training; the new model was loaded; the old one came back in between or
    # not at all (the controller checks for a finished job once a second: Use in txt2img may come first).
    calls = result["model_calls"]
    assert calls[0] == "unload" and "load:dreamcore/tiny-anna.safetensors" in calls
    assert f"load:{base}" not in calls[calls.index("load:dreamcore/tiny-anna.safetensors"):]


def _install_then_train(tmp_path: Path, host: str, tiny_base_model: Path, install_cwd: str) -> dict:
    python = ensure_host_venv(host)
    extension = tmp_path / "extension-install"
    extension.mkdir()
    for name in ("install.py", "pyproject.toml"):
        (extension / name).write_bytes((REPO_ROOT / name).read_bytes())
    (extension / "extension").symlink_to(REPO_ROOT / "extension")
    # As the host does at start: dreamcore's install step first (it adds what the host lacks).
    cwd = extension if install_cwd == "extension" else tmp_path
    installed = subprocess.run([str(python), str(extension / "install.py")], cwd=cwd, capture_output=True,
                               text=True)
    assert installed.returncode == 0, installed.stderr
    report = (extension / ".dreamcore-install.json").read_text()
    assert '"messages": []' in report, report
    return run_scenario(python, tmp_path / "run", flavor=host, train=True, base_model=tiny_base_model)


def test_forge_gradio_4_40_trains_and_selects_through_checkpoint_change(tmp_path: Path,
                                                                       tiny_base_model: Path) -> None:
    result = _install_then_train(tmp_path, "forge", tiny_base_model, install_cwd="webui root")
    assert result["gradio"] == "4.40.0"
    assert_loaded_like_the_host(result)
    assert_trained_and_selected(result)
    # checkpoint_change only selects; the model is loaded at once, so a failure would show in the tab.
    calls = result["model_calls"]
    assert calls.index("forge-change:dreamcore/tiny-anna.safetensors") < calls.index(
        "forge-load:dreamcore/tiny-anna.safetensors")


def test_sdnext_gradio_3_43_trains_and_selects_through_its_options(tmp_path: Path, tiny_base_model: Path) -> None:
    # SD.Next runs install.py with the extension folder as cwd and keeps ckpt_dir among its options.
    result = _install_then_train(tmp_path, "sdnext", tiny_base_model, install_cwd="extension")
    assert result["gradio"] == "3.43.2"
    assert_loaded_like_the_host(result)
    assert_trained_and_selected(result)
    assert result["model_calls"][-1] == "load:dreamcore/tiny-anna.safetensors"
