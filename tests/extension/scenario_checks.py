"""Helpers of the extension tests: run host_scenario.py under a Python and check what it reports."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SCENARIO = HERE / "host_scenario.py"


def run_scenario(python: str | Path, work: Path, *, flavor: str = "a1111", train: bool = False,
                 base_model: Path | None = None, timeout: float = 900) -> dict:
    """Run host_scenario.py under ``python`` (a host venv or this one); return its JSON summary."""
    command = [str(python), str(SCENARIO), str(work), "--flavor", flavor]
    if train:
        command.append("--train")
    if base_model is not None:
        command += ["--base-model", str(base_model)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=work.parent)
    lines = [line for line in result.stdout.splitlines() if line.startswith("SCENARIO-RESULT ")]
    assert result.returncode == 0 and lines, (
        f"scenario failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return json.loads(lines[-1][len("SCENARIO-RESULT "):])


def assert_trained_and_selected(result: dict) -> None:
    """What every host must show after a tiny job through the tab and "Use in txt2img"."""
    assert result["api_jobs_status"] == 200  # the job REST API is mounted on the WebUI's app
    expected_title = "dreamcore/tiny-anna.safetensors"
    assert result["job_status"] == "completed", result["final_message"] + "\n" + result["log_tail"]
    assert result["published_exists"]
    assert expected_title in result["checkpoint_list"]
    assert result["use_title"] == expected_title
    assert result["selected_checkpoint"] == expected_title
    assert result["loaded_checkpoint"] == expected_title, result["use_message"]
    assert result["use_prompt"] == "portrait photo of sks person"
    assert result["user_metadata"]["activation text"] == "photo of sks person"
    assert result["loss_plot_has_line"]
    assert result["sample_count"] >= 1
    assert result["progress_updates"] >= 2


def assert_loaded_like_the_host(result: dict) -> None:
    assert result["script_modules"] == ["dreamcore_tab"]
    assert result["tabs"] == [["Blocks", "DreamBooth", "dreamcore_tab"]]
    assert not result["root_left_on_sys_path"]
    assert "/webui/extensions/dreamcore/dreamcore/" in result["dreamcore_file"]
    assert result["heavy_modules_after_import"] == []
    # Start-up loads only the glue package and its callbacks; the tab, host and job code wait for first use.
    assert result["glue_modules_after_import"] == ["dreamcore_webui", "dreamcore_webui.dreamcore_callbacks"]
    assert result["options"] == ["dreamcore_api_allowed_dirs", "dreamcore_default_preset", "dreamcore_output_dir"]
    # The job REST API is mounted on the WebUI's app, behind its request checks.
    assert (result["api_jobs_status"], result["api_foreign_host_status"]) == (200, 421)
