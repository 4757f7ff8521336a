"""`python -m dreamcore train` with the guide's command: only paths, steps, resolution and counts made small."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from dreamcore.commands.demo import make_demo_photos
from dreamcore.tiny import save_tiny_model

ROOT = Path(__file__).resolve().parents[2]

# The guide's train_dreambooth.py command; {placeholders} are the only changes.
GUIDE_COMMAND = """
  --pretrained_model_name_or_path={model}
  --pretrained_vae_name_or_path={vae}
  --output_dir={out}
  --revision="fp16"
  --with_prior_preservation --prior_loss_weight=1.0
  --seed=1337
  --resolution=64
  --train_batch_size=1
  --train_text_encoder
  --mixed_precision="fp16"
  --use_8bit_adam
  --gradient_accumulation_steps=1
  --learning_rate=1e-6
  --lr_scheduler="constant"
  --lr_warmup_steps=0
  --num_class_images=2
  --sample_batch_size=2
  --max_train_steps=4
  --save_interval=2
  --save_sample_prompt="photo of ukj person"
  --concepts_list="{concepts}"
"""


def run_dreamcore(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "dreamcore", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_the_guides_command_runs_on_a_tiny_model(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "tiny", fmt="diffusers")
    photos = tmp_path / "ukj photos"  # a space in the path, as on real machines
    make_demo_photos(photos, count=3, size=64)
    concepts = tmp_path / "concepts_list.json"
    concepts.write_text(json.dumps([{"instance_prompt": "photo of ukj person", "class_prompt": "photo of a person",
                                     "instance_data_dir": str(photos), "class_data_dir": str(tmp_path / "class")}]))
    argv = shlex.split(GUIDE_COMMAND.format(model=model, vae=model / "vae", out=tmp_path / "out",
                                            concepts=concepts))
    result = run_dreamcore("train", *argv, "--class_infer_steps=2", "--save_infer_steps=2", "--n_save_sample=1")
    assert result.returncode == 0, result.stderr[-3000:]
    # fp16 and 8-bit Adam cannot run on a CPU: each says so once and the run goes on.
    assert result.stderr.count("8-bit Adam needs a CUDA GPU") + result.stdout.count("8-bit Adam needs a CUDA GPU") == 1
    exported = tmp_path / "out" / "out.safetensors"
    with safe_open(str(exported), framework="pt") as handle:
        keys = list(handle.keys())
    for prefix in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert len(list((tmp_path / "class").glob("*.png"))) == 2
    assert (tmp_path / "out" / "checkpoints" / "out-step-000002.safetensors").is_file()
    saved = json.loads((tmp_path / "out" / "train_config.json").read_text())
    assert saved["max_train_steps"] == 4 and saved["concepts_list"] == str(concepts)

    generated = run_dreamcore("generate", "--model", str(exported), "--prompt", "photo of ukj person",
                              "--seed", "5", "--num_inference_steps", "2", "--out", str(tmp_path / "gen"))
    assert generated.returncode == 0, generated.stderr[-3000:]
    again = run_dreamcore("generate", "--model", str(exported), "--prompt", "photo of ukj person",
                          "--seed", "5", "--num_inference_steps", "2", "--out", str(tmp_path / "gen2"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "gen" / "00000-5.png").read_bytes() == (tmp_path / "gen2" / "00000-5.png").read_bytes()


def test_bad_settings_exit_with_every_problem(tmp_path: Path) -> None:
    result = run_dreamcore("train", "--pretrained_model_name_or_path", str(tmp_path / "missing.safetensors"),
                           "--instance_data_dir", str(tmp_path / "nope"), "--instance_prompt", "photo of sks person",
                           "--resolution", "500", "--with_prior_preservation")
    assert result.returncode == 2
    for expected in ("missing.safetensors", "does not exist", "multiple of 8", "class_prompt"):
        assert expected in result.stderr


def test_a_truncated_base_model_is_a_clear_error_before_training(tmp_path: Path) -> None:
    good = save_tiny_model(tmp_path / "tiny.safetensors", fmt="safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:4096])
    photos = tmp_path / "photos"
    make_demo_photos(photos, count=2, size=64)
    result = run_dreamcore("train", "--pretrained_model_name_or_path", str(truncated), "--instance_data_dir",
                           str(photos), "--instance_prompt", "photo of sks person", "--resolution", "64",
                           "--output_dir", str(tmp_path / "out"), "--max_train_steps", "2")
    assert result.returncode == 1
    assert "truncated.safetensors" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "out").rglob("*.safetensors"))


def test_flags_of_other_scripts_are_explained_or_refused() -> None:
    import argparse

    from dreamcore.commands import train as train_command

    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    args = parser.parse_args(["--enable_xformers_memory_efficient_attention", "--report_to", "tensorboard",
                              "--push_to_hub", "--not_cache_latents"])
    notes, errors = train_command.compatibility_messages(args)
    assert any("SDPA" in n for n in notes)
    assert not any("--report_to" in n for n in notes)  # it does something: report_to_messages says what
    assert any("never uploads" in e for e in errors) and any("--no-cache_latents" in n for n in notes)


def test_the_remaining_flags_of_other_scripts_are_accepted_and_each_explained() -> None:
    import argparse

    from dreamcore.commands import train as train_command

    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    args = parser.parse_args(["--skip_save_text_encoder", "--pre_compute_text_embeddings", "--validation_images",
                              "a.png", "b.png", "--validation_scheduler", "DPMSolverMultistepScheduler",
                              "--class_labels_conditioning", "timesteps", "--log_interval", "10"])
    notes, errors = train_command.compatibility_messages(args)
    assert errors == []
    for flag in ("--skip_save_text_encoder", "--pre_compute_text_embeddings", "--validation_images",
                 "--validation_scheduler", "--class_labels_conditioning", "--log_interval"):
        assert sum(note.startswith(flag + ":") for note in notes) == 1, flag


def test_an_unknown_flag_is_one_line_naming_the_nearest_known_one(capsys) -> None:
    from dreamcore.cli import main

    assert main(["train", "--chekpointing_steps", "4", "--validation_step=2"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "usage" not in error
    assert "unknown flag --chekpointing_steps (did you mean --checkpointing_steps?)" in error
    with pytest.raises(SystemExit) as exit_info:  # a bad value: one line too, not the whole usage
        main(["train", "--resolution", "abc"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--resolution: invalid int value: 'abc'" in error


def test_a_stopped_run_prints_the_command_that_resumes_it(tiny_model_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import dreamcore.training
    from dreamcore.cli import main
    from dreamcore.training import TrainResult

    make_demo_photos(tmp_path / "photos", count=1, size=64)
    monkeypatch.setattr(dreamcore.training, "train", lambda config, callbacks, stop: TrainResult("stopped", 3, {}))
    argv = ["train", "--pretrained_model_name_or_path", str(tiny_model_dir), "--instance_data_dir",
            str(tmp_path / "photos"), "--instance_prompt", "photo of sks person", "--output_dir",
            str(tmp_path / "my out"), "--resume_from_checkpoint", "step-2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    expected = shlex.join(["python", "-m", "dreamcore", *argv[:-2], "--resume_from_checkpoint", "latest"])
    assert f"To continue this run:\n  {expected}\n" in printed
