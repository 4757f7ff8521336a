"""`python -m dreamcore grid`: a run's checkpoints (columns) against prompts (rows), every cell at one seed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamcore import train
from dreamcore.cli import main
from dreamcore.commands.demo import make_demo_photos
from dreamcore.generate import GenerationSettings, PipelineCache, generate_images
from dreamcore.grid import GridError, default_prompts, render_grid, run_models
from dreamcore.tiny import save_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from tiny_runs import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run that saved at steps 2 and 4 and finished at 6: three models to compare."""
    root = tmp_path_factory.mktemp("run")
    model = save_tiny_model(root / "tiny", fmt="diffusers")
    make_demo_photos(root / "photos", count=3, size=64)
    train(tiny_config(model, root / "photos", root / "out", save_interval=2, class_prompt="photo of a person"))
    return root / "out"


def test_columns_are_the_checkpoints_in_step_order_then_the_final_model(run_dir: Path) -> None:
    models = run_models(run_dir)
    assert [c.label for c in models.checkpoints] == ["step 2", "step 4", "final"]
    assert [c.source.path.name for c in models.checkpoints] == ["out-step-000002.safetensors",
                                                                "out-step-000004.safetensors", "out.safetensors"]
    prompts = default_prompts(models.instance_prompt, models.class_prompt)
    assert prompts[0] == "photo of sks person" and prompts[-1] == "photo of a person" and len(prompts) == 4


def test_grid_cells_equal_single_generate_calls_with_the_same_seed(run_dir: Path, tmp_path: Path) -> None:
    models = run_models(run_dir)
    prompts = ["photo of sks person", "photo of sks person, oil painting", "photo of a person"]
    settings = GenerationSettings(prompts[0], seed=11, num_inference_steps=3, width=64, height=64)
    cache = PipelineCache()
    grid = render_grid(models.checkpoints, prompts, settings, cache=cache)
    assert len(grid.cells) == 3 and all(len(column) == 3 for column in grid.cells)
    for checkpoint, column in zip(models.checkpoints, grid.cells):
        for prompt, cell in zip(prompts, column):
            single = generate_images(checkpoint.source, GenerationSettings(prompt, seed=11, num_inference_steps=3,
                                                                           width=64, height=64), cache=cache)[0]
            # A batch of prompts and a single prompt differ only by float rounding (about 1e-6 of a pixel's
            # range), which may move a pixel by one level where it rounds.
            difference = np.abs(np.asarray(cell, np.int16) - np.asarray(single.image, np.int16))
            assert difference.max() <= 1, (checkpoint.label, prompt)
    # The checkpoints differ, so their columns do: the grid compares something.
    assert np.abs(np.asarray(grid.cells[0][0], np.int16) - np.asarray(grid.cells[2][0], np.int16)).max() > 1
    # Every cell sits in the sheet below its column label and right of its prompt.
    sheet = np.asarray(grid.image)
    assert grid.image.width > 3 * 64 and grid.image.height > 3 * 64
    found = [(y, x) for y in range(sheet.shape[0] - 63) for x in range(sheet.shape[1] - 63)
             if np.array_equal(sheet[y:y + 64, x:x + 64], np.asarray(grid.cells[1][2].convert("RGB")))]
    assert found, "the cell of step 4 x the class prompt is not in the sheet"


def test_grid_command_writes_one_numbered_png(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "grids"
    assert main(["grid", str(run_dir), "--prompt", "{}", "--prompt", "{}, smiling", "--seed", "4",
                 "--num_inference_steps", "2", "--out", str(out)]) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written == out / "00000-4.png"
    image = Image.open(written)
    assert image.width > 3 * 64 and image.height > 2 * 64
    assert "Seed: 4" in image.info["parameters"]


def test_a_folder_that_is_not_a_run_is_named(tmp_path: Path, capsys) -> None:
    assert main(["grid", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "train_config.json" in err
    with pytest.raises(GridError, match="random"):
        render_grid(run_models_stub(), ["x"], GenerationSettings("x", seed=None))


def run_models_stub() -> list:
    from dreamcore.generate import ModelSource
    from dreamcore.grid import RunCheckpoint

    return [RunCheckpoint("final", None, ModelSource(Path("unused")))]


@pytest.fixture(scope="module")
def lora_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LoRA run: its output holds adapters only, drawn on the run's base model."""
    root = tmp_path_factory.mktemp("lora-run")
    model = save_tiny_model(root / "tiny", fmt="diffusers")
    make_demo_photos(root / "photos", count=3, size=64)
    train(tiny_config(model, root / "photos", root / "out", use_lora=True, lora_rank=4, lora_alpha=4.0,
                      learning_rate=1e-2, max_train_steps=4))
    return root / "out"


def test_generate_draws_a_runs_final_model_from_its_output_folder(run_dir: Path, tmp_path: Path, capsys) -> None:
    arguments = ["--prompt", "photo of sks person", "--seed", "5", "--num_inference_steps", "2"]
    assert main(["generate", "--model", str(run_dir), *arguments, "--out", str(tmp_path / "a")]) == 0
    final = run_models(run_dir).checkpoints[-1].source.path
    assert main(["generate", "--model", str(final), *arguments, "--out", str(tmp_path / "b")]) == 0
    (a,), (b,) = sorted((tmp_path / "a").glob("*.png")), sorted((tmp_path / "b").glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_generate_draws_a_lora_on_its_base_and_a_lora_given_as_the_model_says_how(
        lora_run_dir: Path, tmp_path: Path, capsys) -> None:
    from dreamcore.config import TrainConfig

    base = TrainConfig.load(lora_run_dir / "train_config.json").pretrained_model_name_or_path
    lora = lora_run_dir / "out.safetensors"
    arguments = ["--prompt", "photo of sks person", "--seed", "5", "--num_inference_steps", "2"]
    assert main(["generate", "--model", str(lora_run_dir), *arguments, "--out", str(tmp_path / "run")]) == 0
    assert main(["generate", "--model", base, "--lora", str(lora), *arguments, "--out", str(tmp_path / "lora")]) == 0
    assert main(["generate", "--model", base, *arguments, "--out", str(tmp_path / "base")]) == 0
    capsys.readouterr()
    run, with_lora, plain = (np.asarray(Image.open(next((tmp_path / name).glob("*.png"))), dtype=np.int16)
                             for name in ("run", "lora", "base"))
    assert np.array_equal(run, with_lora)  # the run folder means its LoRA on its base
    assert np.abs(with_lora - plain).max() > 0  # the LoRA changed the picture
    assert main(["generate", "--model", str(lora), *arguments, "--out", str(tmp_path / "wrong")]) == 1
    assert "--lora" in capsys.readouterr().err
