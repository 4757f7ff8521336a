"""diffusers' DreamBooth example tests (checkpointing, checkpoints_total_limit, resume latest and by name,
validation) replayed against `python -m dreamcore train` with a tiny local model.

Each run takes the flags diffusers' tests pass, with a local model and photos, plus the fewest samples at the
smallest cost (dreamcore samples at every checkpoint and at the end). Where dreamcore differs, the test checks
dreamcore's own behaviour and the README ("Coming from diffusers") says so: states are <output_dir>/state/step-N
(checkpoint-N names the same step), the final model is <output_dir>/diffusers, and a state is also saved at the
last step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dreamcore.commands.demo import make_demo_photos
from dreamcore.tiny import save_tiny_model

pytestmark = pytest.mark.slow  # each case a python -m dreamcore train subprocess or two: run by .ci/run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("replay")
    model = save_tiny_model(folder / "model", fmt="diffusers")
    make_demo_photos(folder / "photos", count=2, size=64)
    return model, folder / "photos"


def train(inputs: tuple[Path, Path], out: Path, *flags: str) -> subprocess.CompletedProcess:
    """`python -m dreamcore train` with the settings of diffusers' tests and ``flags``; fails the test on an error."""
    model, photos = inputs
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "dreamcore", "train", "--pretrained_model_name_or_path", str(model),
         "--instance_data_dir", str(photos), "--instance_prompt", "photo", "--resolution", "64",
         "--train_batch_size", "1", "--gradient_accumulation_steps", "1", "--learning_rate", "5.0e-04", "--scale_lr",
         "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--output_dir", str(out),
         "--n_save_sample", "1", "--save_infer_steps", "1", *flags],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def states(out: Path) -> set[str]:
    return {p.name for p in (out / "state").iterdir()}


def test_checkpointing_then_resume_by_name(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    out = tmp_path / "out"
    train(inputs, out, "--max_train_steps", "4", "--checkpointing_steps=2", "--seed=0")
    StableDiffusionPipeline.from_pretrained(out / "diffusers", safety_checker=None)("photo", num_inference_steps=1)
    assert states(out) == {"step-2", "step-4"}
    # a state holds the trained weights (not a diffusers subfolder); they load into the base model's UNet
    pipeline = StableDiffusionPipeline.from_pretrained(inputs[0], safety_checker=None)
    pipeline.unet.load_state_dict(load_file(str(out / "state" / "step-2" / "unet.safetensors")))
    assert not torch.equal(pipeline.unet.conv_in.weight,
                           StableDiffusionPipeline.from_pretrained(inputs[0]).unet.conv_in.weight)
    pipeline("photo", num_inference_steps=1)

    shutil.rmtree(out / "state" / "step-2")
    resumed = train(inputs, out, "--max_train_steps", "6", "--checkpointing_steps=2",
                    "--resume_from_checkpoint=checkpoint-4", "--seed=0")
    assert f"resumed from {out / 'state' / 'step-4'} at step 4" in resumed.stdout + resumed.stderr
    StableDiffusionPipeline.from_pretrained(out / "diffusers", safety_checker=None)("photo", num_inference_steps=1)
    assert states(out) == {"step-4", "step-6"}


def test_checkpoints_total_limit(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    # "latest" on a fresh folder starts a new run, as scripts that pass it on every launch expect
    first = train(inputs, out, "--max_train_steps=6", "--checkpoints_total_limit=2", "--checkpointing_steps=2",
                  "--resume_from_checkpoint=latest")
    assert "so this is a new run" in first.stdout + first.stderr
    assert states(out) == {"step-4", "step-6"}


def test_checkpoints_total_limit_removes_multiple_states_after_resume(inputs: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    train(inputs, out, "--max_train_steps=4", "--checkpointing_steps=2")
    assert states(out) == {"step-2", "step-4"}
    train(inputs, out, "--max_train_steps=8", "--checkpointing_steps=2", "--resume_from_checkpoint=checkpoint-4",
          "--checkpoints_total_limit=2")
    assert states(out) == {"step-6", "step-8"}


def test_validation_makes_samples_without_checkpoints(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    train(inputs, out, "--max_train_steps=4", "--checkpointing_steps=0", "--validation_prompt", "photo of a dog",
          "--validation_steps=2", "--num_validation_images=1")
    assert len(list((out / "samples" / "step-000002").glob("*.png"))) == 1
    assert not (out / "checkpoints").exists() and not (out / "state").exists()
    assert (out / "out.safetensors").is_file()  # the final model
