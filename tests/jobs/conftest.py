"""Fixtures of the job runner tests: photos made in code, settings, and managers with a fake child."""

from __future__ import annotations

from pathlib import Path

import pytest

from dreamcore.config import TrainConfig
from dreamcore.jobs import JobManager

from jobs_helpers import fake_child_command, make_photos


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD1 model as a single .safetensors file (real training in the child loads it)."""
    from dreamcore.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-base"), family="sd1", fmt="safetensors")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    return make_photos(tmp_path / "photos")


@pytest.fixture
def fake_config(tmp_path: Path, photos: Path) -> TrainConfig:
    """Settings that validate; the fake child reads max_train_steps, seed (mode) and save_interval (ms/step)."""
    model = tmp_path / "model"
    model.mkdir()
    return TrainConfig(pretrained_model_name_or_path=str(model), instance_data_dir=str(photos),
                       instance_prompt="photo of sks person", max_train_steps=5, seed=0, save_interval=30)


@pytest.fixture
def make_manager(tmp_path: Path):
    managers: list[JobManager] = []

    def make(root: Path | None = None, **kwargs) -> JobManager:
        kwargs.setdefault("child_command", fake_child_command)
        kwargs.setdefault("poll_interval", 0.05)
        manager = JobManager(root or tmp_path / "jobs", **kwargs)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.shutdown(stop_running=True, timeout=30)
