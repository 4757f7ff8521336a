"""Tiny SD1 / SD2 / SD2-v models (real block layout, random weights) and their files, built once."""

from __future__ import annotations

from pathlib import Path

import pytest
from dreamcore.components import ModelComponents

from convert_helpers import FAMILIES


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, ModelComponents]:
    from dreamcore.tiny import build_tiny_model

    return {family: build_tiny_model(family, seed=index) for index, family in enumerate(FAMILIES)}


@pytest.fixture(scope="session")
def tiny_files(tiny_models, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(family, suffix) -> a single file written by save_single_file (fp32)."""
    from dreamcore.convert import save_single_file

    folder = tmp_path_factory.mktemp("single-files")
    return {(family, suffix): save_single_file(model, folder / f"tiny-{family}{suffix}")
            for family, model in tiny_models.items() for suffix in (".safetensors", ".ckpt")}
