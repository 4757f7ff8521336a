"""`python -m dreamcore prepare IN_DIR OUT_DIR ...` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dreamcore.cli import main


def test_prepare_command_writes_crops_report_and_prints_the_table(tmp_path: Path, grace_hopper: Image.Image,
                                                                  no_face: Image.Image,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "my photos"
    photos.mkdir()
    grace_hopper.save(photos / "grace.jpg")
    no_face.save(photos / "coffee.jpg")
    out = tmp_path / "prepared"
    code = main(["prepare", str(photos), str(out), "--size", "256", "--framing", "half", "--pad", "solid",
                 "--token", "ukj"])
    assert code == 0
    printed = capsys.readouterr()
    assert "grace.jpg" in printed.out and "KEPT face crop" in printed.out
    assert "KEPT no face: cropped around the salient region" in printed.out
    assert "max_train_steps = 2 x 100 = 200" in printed.out
    assert "'ukj' is 2 tokens (uk + j)" in printed.out and "ohwx" in printed.out
    assert "[1/2] coffee.jpg" in printed.err  # progress goes to stderr
    assert Image.open(out / "grace.png").size == (256, 256)
    data = json.loads((out / "report" / "prepare_report.json").read_text())
    assert data["framing"] == "half" and data["size"] == 256
    assert data["token_check"]["pieces"] == ["uk", "j"]

    # --require-face rejects the photo without a face, and says how to keep it; --keep-center-crop keeps it
    # at the centre.
    assert main(["prepare", str(photos), str(out), "--size", "128", "--require-face"]) == 0
    printed = capsys.readouterr().out
    assert "REJECTED no face found" in printed and "leave out --require-face" in printed
    assert not (out / "coffee.png").exists()
    assert main(["prepare", str(photos), str(out), "--size", "128", "--keep-center-crop"]) == 0
    assert "KEPT no face: centre crop" in capsys.readouterr().out
    assert (out / "coffee.png").is_file()


def test_prepare_command_reports_folder_errors_without_a_traceback(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err and "does not exist" in err
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"")
    assert main(["prepare", str(photos), str(photos)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is the photo folder" in err


def test_prepare_command_exits_1_when_nothing_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "broken.jpg").write_bytes(b"")
    assert main(["prepare", str(photos), str(tmp_path / "out")]) == 1
    assert "no photo could be used" in capsys.readouterr().out
