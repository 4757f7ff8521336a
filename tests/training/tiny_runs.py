"""The training tests' run: the tiny model on the test photos, small enough to finish in seconds."""

from __future__ import annotations

from pathlib import Path

from dreamcore import TrainConfig


def tiny_config(model: Path, photos: Path, out: Path, **overrides) -> TrainConfig:
    """64 px, 6 steps at a high rate, no resumable state, one sample of 2 steps a save; ``overrides`` win."""
    values = dict(pretrained_model_name_or_path=str(model), instance_data_dir=str(photos),
                  instance_prompt="photo of sks person", output_dir=str(out), resolution=64, max_train_steps=6,
                  learning_rate=1e-3, lr_warmup_steps=0, checkpointing_steps=0, n_save_sample=1,
                  save_infer_steps=2, seed=7)
    values.update(overrides)
    return TrainConfig(**values)
