"""Fixtures of the job runner tests: photos made in code, settings, and managers with a fake child."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from dreamcore.config import TrainConfig
from dreamcore.jobs import JobInfo, JobManager
from dreamcore.jobs.folder import JobFolder

FAKE_CHILD = Path(__file__).with_name("fake_child.py")


def make_photos(folder: Path, count: int = 3, size: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        colour = (40 * index % 256, 90, 200 - 30 * index)
        image = Image.new("RGB", (size, size), colour)
        for x in range(size // 4, size // 2):  # a square, so photos differ in more than colour
            for y in range(size // 4, size // 2 + index * 4):
                image.putpixel((x, y), (255, 255, 255))
        image.save(folder / f"photo-{index}.png")
    return folder


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


def fake_child_command(folder: JobFolder, attempt: int) -> list[str]:
    return [sys.executable, str(FAKE_CHILD), str(folder.path), str(attempt)]


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


def wait_for(manager: JobManager, name: str, condition: Callable[[JobInfo], bool], timeout: float = 60.0,
             what: str = "") -> JobInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = manager.get(name)
        if condition(info):
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"job {name!r} never reached {what or 'the condition'}: status {info.status}, "
                                 f"step {info.step}, error {info.error!r}\nlog:\n" + "\n".join(info.log_tail))
        time.sleep(0.05)


def wait_until_final(manager: JobManager, name: str, timeout: float = 60.0) -> JobInfo:
    return wait_for(manager, name, lambda i: i.status in ("completed", "failed", "cancelled"), timeout, "an end")
