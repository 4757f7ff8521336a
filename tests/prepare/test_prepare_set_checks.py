"""Checks across the set and per photo: near-duplicates, look-alike backgrounds and clothing, blur,
enlargement, the guide's photo count and steps, and the token."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from dreamcore.prepare import prepare_photos


@pytest.fixture(scope="module")
def same_place_report(tmp_path_factory: pytest.TempPathFactory, astronaut: Image.Image,
                      grace_hopper: Image.Image):
    """Four shots of grace_hopper in one place and outfit (one a blurred copy of another), one astronaut."""
    photos = tmp_path_factory.mktemp("photos")
    grace_hopper.save(photos / "g1.png")
    grace_hopper.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "g2 mirrored.png")
    grace_hopper.crop((30, 20, 512, 600)).save(photos / "g3 shifted.png")
    grace_hopper.filter(ImageFilter.GaussianBlur(3)).save(photos / "g4 blurred.png")
    astronaut.save(photos / "astronaut.png")
    report = prepare_photos(photos, tmp_path_factory.mktemp("out") / "set", size=128, token="ukj")
    return report, {photo.source.name: photo for photo in report.photos}


def test_near_duplicates_are_grouped_and_named(same_place_report) -> None:
    report, photos = same_place_report
    assert report.duplicate_groups == [["g1.png", "g4 blurred.png"]]
    assert photos["g1.png"].duplicate_group == photos["g4 blurred.png"].duplicate_group == 1
    assert photos["g2 mirrored.png"].duplicate_group is None
    assert "near-duplicate of g4 blurred.png" in photos["g1.png"].warnings
    assert any("near-duplicates: g1.png, g4 blurred.png" in w for w in report.warnings)


def test_alike_backgrounds_and_clothing_are_warned(same_place_report) -> None:
    report, _ = same_place_report
    grace_shots = ["g1.png", "g2 mirrored.png", "g3 shifted.png", "g4 blurred.png"]
    assert report.background_groups == [grace_shots]
    assert report.clothing_groups == [grace_shots]
    assert any(w.startswith("4 of 5 photos have alike backgrounds") and "vary the places" in w
               for w in report.warnings)
    assert any(w.startswith("4 of 5 photos have alike clothing") and "vary the outfits" in w
               for w in report.warnings)


def test_varied_photos_get_no_variety_warning(tmp_path: Path, astronaut: Image.Image,
                                              grace_hopper: Image.Image, no_face: Image.Image) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    astronaut.save(photos / "a.png")
    grace_hopper.save(photos / "g.png")
    # A third shot: the astronaut's head only (down to the chin) on the coffee table's colours, so another
    # place and, below the chin, other "clothing".
    scene = no_face.resize((512, 768)).copy()
    scene.paste(astronaut.crop((130, 40, 320, 180)), (160, 120))
    scene.save(photos / "elsewhere.png")
    report = prepare_photos(photos, tmp_path / "out", size=128)
    assert len(report.kept) == 3
    assert not any("alike" in w for w in report.warnings)
    assert report.duplicate_groups == []


def test_blurry_face_is_warned_and_sharp_is_not(same_place_report) -> None:
    _, photos = same_place_report
    assert photos["g4 blurred.png"].blur_score < 100 < photos["g1.png"].blur_score
    assert any("blurry" in w for w in photos["g4 blurred.png"].warnings)
    assert not any("blurry" in w for w in photos["g1.png"].warnings)


def test_enlargement_over_2x_is_warned(tmp_path: Path, astronaut: Image.Image) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    astronaut.save(photos / "a.png")
    small = prepare_photos(photos, tmp_path / "at 256", size=256).photos[0]
    big = prepare_photos(photos, tmp_path / "at 512", size=512).photos[0]
    assert small.upscale == pytest.approx(big.upscale / 2)
    assert small.upscale < 2 and not any("enlarged" in w for w in small.warnings)
    assert big.upscale > 2 and any(w.startswith(f"enlarged {big.upscale:.1f}x") for w in big.warnings)


def test_count_steps_and_token_advice(same_place_report) -> None:
    report, _ = same_place_report
    assert len(report.kept) == 5
    assert report.suggested_max_train_steps == 500
    assert any("only 5 photo(s) kept; the guide advises 13-20" in w for w in report.warnings)
    assert report.token_check is not None and report.token_check.pieces == ["uk", "j"]
    table = report.format_table()
    assert "max_train_steps = 5 x 100 = 500" in table
    assert "'ukj' is 2 tokens (uk + j)" in table and "ohwx" in table


def test_more_than_twenty_photos_is_noted(tmp_path: Path, grace_hopper: Image.Image) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    small = grace_hopper.resize((160, 188))
    for index in range(21):
        small.rotate(index - 10, fillcolor=(index * 12, 90, 200 - index * 9)).save(photos / f"{index:02d}.png")
    report = prepare_photos(photos, tmp_path / "out", size=64)
    assert len(report.kept) == 21
    assert report.suggested_max_train_steps == 2100
    assert any(w.startswith("21 photos kept; the guide advises 13-20") for w in report.warnings)


def test_parallel_workers_give_the_same_report_as_one(same_place_report, tmp_path: Path) -> None:
    report, _ = same_place_report
    serial = prepare_photos(report.in_dir, tmp_path / "serial", size=128, workers=1)
    parallel = prepare_photos(report.in_dir, tmp_path / "parallel", size=128, workers=3)
    for one, many in zip(serial.photos, parallel.photos):
        assert (one.source, one.verdict, one.face_box, one.perceptual_hash, one.warnings) == \
               (many.source, many.verdict, many.face_box, many.perceptual_hash, many.warnings)
        assert Image.open(one.output).tobytes() == Image.open(many.output).tobytes()
    assert serial.warnings == parallel.warnings
