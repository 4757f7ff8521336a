"""`python -m dreamcore prepare` crops at the resolution the model family trains at: named with --family, read
from the base model with --model; --size wins; the summary says which size and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dreamcore.cli import main
from dreamcore.families import DEFAULT_FAMILY, FAMILY_NAMES
from dreamcore.families.sdxl import SDXL


@pytest.fixture
def photos(tmp_path: Path, no_face: Image.Image) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    no_face.save(folder / "cup.jpg")
    return folder


def prepare(photos: Path, out: Path, *flags: str) -> int:
    return main(["prepare", str(photos), str(out), "--subject", "cup", *flags])


def crop_side(out: Path) -> int:
    (crop,) = out.glob("*.png")
    with Image.open(crop) as image:
        assert image.width == image.height
        return image.width


def test_the_family_sets_the_size_and_the_summary_says_why(photos, tmp_path, capsys) -> None:
    assert SDXL.training_resolution != DEFAULT_FAMILY.training_resolution  # else this test could not fail
    assert prepare(photos, tmp_path / "xl", "--family", SDXL.name) == 0
    assert crop_side(tmp_path / "xl") == SDXL.training_resolution
    printed = capsys.readouterr().out
    assert f"size: {SDXL.training_resolution} px, {SDXL.label}'s training resolution\n" in printed
    report = json.loads((tmp_path / "xl" / "report" / "prepare_report.json").read_text())
    assert report["size"] == SDXL.training_resolution and report["size_reason"] == f"{SDXL.label}'s training resolution"

    assert prepare(photos, tmp_path / "default") == 0
    assert crop_side(tmp_path / "default") == DEFAULT_FAMILY.training_resolution
    assert (f"size: {DEFAULT_FAMILY.training_resolution} px, {DEFAULT_FAMILY.label}'s training resolution (give "
            "--family or --model for another model family)") in capsys.readouterr().out


def test_size_wins_over_the_family_and_says_what_the_family_trains_at(photos, tmp_path, capsys) -> None:
    assert prepare(photos, tmp_path / "out", "--family", SDXL.name, "--size", "256") == 0
    assert crop_side(tmp_path / "out") == 256
    assert (f"size: 256 px, as --size asks ({SDXL.label} trains at {SDXL.training_resolution} px unless its "
            "resolution is set to 256)") in capsys.readouterr().out
    assert prepare(photos, tmp_path / "plain", "--size", "128") == 0
    assert crop_side(tmp_path / "plain") == 128
    assert "size: 128 px, as --size asks\n" in capsys.readouterr().out


def test_the_base_models_family_sets_the_size(photos, tmp_path, capsys) -> None:
    from dreamcore.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "models", family=SDXL.name, fmt="safetensors")
    assert prepare(photos, tmp_path / "out", "--model", str(model)) == 0
    assert crop_side(tmp_path / "out") == SDXL.training_resolution
    assert (f"size: {SDXL.training_resolution} px, {SDXL.label}'s training resolution ({model} is an {SDXL.label} "
            "model)") in capsys.readouterr().out


def test_a_bad_family_or_model_is_one_line_naming_what_to_do(photos, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        prepare(photos, tmp_path / "out", "--family", "sdxxl")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--family: invalid choice: 'sdxxl'" in error
    assert all(repr(name) in error for name in FAMILY_NAMES)

    with pytest.raises(SystemExit):
        prepare(photos, tmp_path / "out", "--family", SDXL.name, "--model", str(tmp_path))
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--model: not allowed with argument --family" in error

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    assert prepare(photos, tmp_path / "out", "--model", str(broken)) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "broken.safetensors" in error
    assert not (tmp_path / "out").exists()  # refused before any photo was cropped
