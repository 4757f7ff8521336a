"""`train` on a raw photo folder: photos not square at the training size are face-cropped first (opt-out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamcore import ConfigError, TrainConfig
from dreamcore.training import train


@pytest.fixture
def raw_photos(tmp_path: Path) -> Path:
    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path / "raw"
    folder.mkdir()
    astronaut = Image.fromarray(skimage_data.astronaut())
    astronaut.save(folder / "astronaut.jpg", quality=92)
    # A wider shot with the face off-centre: a plain centre crop would cut it.
    wide = Image.new("RGB", (900, 600), (90, 120, 160))
    wide.paste(astronaut.resize((400, 400)), (40, 100))
    wide.save(folder / "wide.jpg", quality=92)
    Image.fromarray(np.full((300, 500, 3), 200, np.uint8)).save(folder / "wall.png")  # no face at all
    return folder


def config(model: Path, photos: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(pretrained_model_name_or_path=str(model), instance_data_dir=str(photos),
                  instance_prompt="photo of sks person", output_dir=str(out), resolution=64, max_train_steps=2,
                  learning_rate=1e-4, lr_warmup_steps=0, checkpointing_steps=0, n_save_sample=1, save_infer_steps=2)
    values.update(overrides)
    return TrainConfig(**values)


def test_raw_photos_are_prepared_before_training(tiny_model_dir: Path, raw_photos: Path, tmp_path: Path) -> None:
    originals = {p: p.read_bytes() for p in raw_photos.iterdir()}
    events = []
    result = train(config(tiny_model_dir, raw_photos, tmp_path / "out"), callbacks=[events.append])
    prepared = sorted((tmp_path / "out" / "prepared").glob("*/*.png"))
    assert [p.stem for p in prepared] == ["astronaut", "wide"]
    assert all(Image.open(p).size == (64, 64) for p in prepared)
    warnings = [e.message for e in events if e.kind == "log" and e.level == "warning"]
    assert any("wall.png" in message for message in warnings)  # the photo without a face is named
    assert {p: p.read_bytes() for p in raw_photos.iterdir()} == originals  # originals untouched
    assert result.status == "completed"


def test_opting_out_uses_the_photos_as_they_are(tiny_model_dir: Path, raw_photos: Path, tmp_path: Path) -> None:
    result = train(config(tiny_model_dir, raw_photos, tmp_path / "out", prepare_photos=False))
    assert result.status == "completed"
    assert not (tmp_path / "out" / "prepared").exists()


def test_a_folder_without_faces_is_refused_before_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "walls"
    folder.mkdir()
    Image.new("RGB", (200, 120), (10, 10, 10)).save(folder / "a.png")
    with pytest.raises(ConfigError, match="walls"):
        train(config(tiny_model_dir, folder, tmp_path / "out"))
    assert not list((tmp_path / "out").glob("*.safetensors"))
