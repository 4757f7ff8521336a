"""Fixtures of the extension tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scenario_checks, host_venvs, host_loader


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dreamcore.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("base") / "tiny-sd1.safetensors", fmt="safetensors")
