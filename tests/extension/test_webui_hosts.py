"""The extension in each host's gradio: loaded as the host loads scripts/, a tiny job trained through the
tab's own handlers, the model published into the checkpoint list and selected for txt2img.

The A1111 run (gradio 3.41.2, transformers 4.30.2) is in test_install.py, after install.py has run in a
venv holding A1111's pins. Here: the newest gradio (this venv) and Forge's gradio 4.40.0.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from host_venvs import ensure_host_venv
from scenario_checks import REPO_ROOT, assert_loaded_like_the_host, assert_trained_and_selected, run_scenario


def test_newest_gradio_trains_through_the_tab_and_selects_the_model(tmp_path: Path, tiny_base_model: Path) -> None:
    result = run_scenario(sys.executable, tmp_path / "run", train=True, base_model=tiny_base_model)
    assert_loaded_like_the_host(result)
    assert_trained_and_selected(result)
    base = "base/tiny-sd1.safetensors"
    # The WebUI's model left the GPU for training, came back after it, then the new model was loaded.
    assert result["model_calls"][0] == "unload"
    assert result["model_calls"].index(f"load:{base}") < result["model_calls"].index(
        "load:dreamcore/tiny-anna.safetensors")


def test_forge_gradio_4_40_trains_and_selects_through_checkpoint_change(tmp_path: Path,
                                                                       tiny_base_model: Path) -> None:
    python = ensure_host_venv("forge")
    extension = tmp_path / "forge-extension"
    extension.mkdir()
    for name in ("install.py", "pyproject.toml"):
        (extension / name).write_bytes((REPO_ROOT / name).read_bytes())
    (extension / "extension").symlink_to(REPO_ROOT / "extension")
    # As Forge does at start: dreamcore's install step first (it adds what Forge lacks, e.g. accelerate).
    subprocess.run([str(python), str(extension / "install.py")], check=True, cwd=tmp_path, capture_output=True)
    result = run_scenario(python, tmp_path / "run", flavor="forge", train=True, base_model=tiny_base_model)
    assert result["gradio"] == "4.40.0"
    assert_loaded_like_the_host(result)
    assert_trained_and_selected(result)
    assert "forge-change:dreamcore/tiny-anna.safetensors" in result["model_calls"]
