"""score_likeness during training: scores at each checkpoint, the table, the plot and the run report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dreamcore import ConfigError, TrainConfig
from dreamcore.training import train


@pytest.fixture
def face_photos(tmp_path: Path) -> Path:
    skimage_data = pytest.importorskip("skimage.data")
    pytest.importorskip("dlib")
    folder = tmp_path / "faces"
    folder.mkdir()
    astronaut = Image.fromarray(skimage_data.astronaut())
    astronaut.save(folder / "a.png")
    astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((400, 400)).save(folder / "b.png")
    return folder


def test_checkpoints_are_scored_and_reported(tiny_model_dir: Path, face_photos: Path, tmp_path: Path) -> None:
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_model_dir), instance_data_dir=str(face_photos),
                         instance_prompt="photo of sks person", class_prompt="photo of a person",
                         output_dir=str(tmp_path / "out"), resolution=64, max_train_steps=4, save_interval=2,
                         checkpointing_steps=0, n_save_sample=2, save_infer_steps=2, lr_warmup_steps=0,
                         score_likeness=True, keep_best=True)
    events = []
    result = train(config, callbacks=[events.append])
    assert result.status == "completed"
    report = json.loads((tmp_path / "out" / "train_config.json").read_text())["run_report"]["likeness"]
    assert [c["step"] for c in report["checkpoints"]] == [2, 4]
    assert (tmp_path / "out" / "likeness" / "likeness.png").is_file()
    assert any(e.kind == "log" and "likeness per checkpoint" in e.message for e in events)
    # The report does not stop the file from being reused as a config.
    assert TrainConfig.load(tmp_path / "out" / "train_config.json") == config


def test_photos_without_faces_are_refused_before_training(tiny_model_dir: Path, photo_dir: Path,
                                                          tmp_path: Path) -> None:
    pytest.importorskip("dlib")
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_model_dir), instance_data_dir=str(photo_dir),
                         instance_prompt="photo of sks person", output_dir=str(tmp_path / "out"), resolution=64,
                         max_train_steps=2, save_interval=1, score_likeness=True)
    with pytest.raises(ConfigError, match="no face was found"):
        train(config)
    assert not (tmp_path / "out" / "state").exists()


def test_keep_best_needs_scoring(tmp_path: Path) -> None:
    config = TrainConfig(keep_best=True, likeness_early_stop=-1, output_dir=str(tmp_path))
    problems = "\n".join(config.problems())
    assert "turn on score_likeness" in problems and "likeness_early_stop" in problems
    with pytest.raises(ConfigError):
        config.validate()
