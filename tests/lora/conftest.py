from __future__ import annotations

from pathlib import Path

import pytest

from dreamcore.commands.demo import make_demo_photos


@pytest.fixture(scope="session")
def lora_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    make_demo_photos(folder, count=3, size=64)
    return folder
