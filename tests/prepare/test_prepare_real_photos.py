"""The issue's "Done when" on real photographs: face found, square crop at the requested size, face in the
upper-middle with the shoulders below, and EXIF-rotated copies giving the same crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamcore.prepare import prepare_photos
from dreamcore.prepare.faces import find_main_face

from photo_helpers import mean_abs_difference

ORIENTATION_TAG = 0x0112
# Pillow transpose that turns the upright photo into the stored pixels a camera writes with each tag.
STORED_FROM_UPRIGHT = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
                       8: Image.Transpose.ROTATE_270}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, astronaut: Image.Image, grace_hopper: Image.Image):
    photos = tmp_path_factory.mktemp("photos")
    astronaut.save(photos / "astronaut.png")
    grace_hopper.save(photos / "grace_hopper.jpg", quality=95)
    report = prepare_photos(photos, tmp_path_factory.mktemp("out") / "prepared", size=384)
    return {photo.source.name: photo for photo in report.photos}, report


@pytest.mark.parametrize("name, photo_height", [("astronaut.png", 512), ("grace_hopper.jpg", 600)])
def test_real_portrait_is_cropped_head_and_shoulders(prepared, name: str, photo_height: int) -> None:
    photos, _ = prepared
    photo = photos[name]
    assert photo.kept and photo.verdict == "face crop"
    crop = Image.open(photo.output)
    assert crop.size == (384, 384)  # square at the requested size

    left, top, right, bottom = photo.face_box_in_crop
    center_x, center_y = (left + right) / 2, (top + bottom) / 2
    # Upper-middle: centred across (within 8% of the side), centre of the face above the middle.
    assert abs(center_x - 0.5) < 0.08
    assert 0.25 < center_y < 0.5
    # The whole face is in the frame with room above it for the hair.
    assert top > 0.1 and left > 0 and right < 1
    # Shoulders below: the chin is in the upper two thirds, and the rest of the frame below it comes from
    # the photo (no padding at the bottom: the crop box ends inside the photo).
    assert bottom < 0.67
    assert photo.crop_box[3] <= photo_height + 1
    assert photo.padded_fraction < 0.02
    # The face box really is a face: the detector finds it again in the written crop.
    again = find_main_face(crop.convert("RGB")).main
    assert again is not None
    assert abs((again.left + again.right) / 2 / 384 - center_x) < 0.05


def test_small_astronaut_face_is_reported_as_enlarged(prepared) -> None:
    photos, _ = prepared
    astronaut = photos["astronaut.png"]
    assert astronaut.face_size == pytest.approx(90, abs=10)
    grace = photos["grace_hopper.jpg"]
    assert grace.upscale < 1.0 and not any("enlarged" in w for w in grace.warnings)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_copies_give_the_same_crop(tmp_path: Path, grace_hopper: Image.Image,
                                                orientation: int) -> None:
    """Tolerance: face box within 1% of the side; mean pixel difference under 3 of 255 (the rotated copy
    is a separate JPEG encoding of the same pixels, so it cannot be bit-identical)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    grace_hopper.save(photos / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    grace_hopper.transpose(STORED_FROM_UPRIGHT[orientation]).save(photos / "rotated.jpg", quality=95, exif=exif)
    with Image.open(photos / "rotated.jpg") as stored:
        assert stored.size != grace_hopper.size or orientation == 3  # the pixels really are turned

    report = prepare_photos(photos, tmp_path / "out", size=256)
    by_name = {photo.source.name: photo for photo in report.photos}
    upright, rotated = by_name["upright.jpg"], by_name["rotated.jpg"]
    assert upright.kept and rotated.kept
    assert np.allclose(upright.face_box_in_crop, rotated.face_box_in_crop, atol=0.01)
    assert mean_abs_difference(Image.open(upright.output), Image.open(rotated.output)) < 3.0


def test_framings_get_wider(tmp_path: Path, grace_hopper: Image.Image) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    grace_hopper.save(photos / "grace.png")
    face_widths = {}
    for framing in ("portrait", "half", "full"):
        report = prepare_photos(photos, tmp_path / framing, size=128, framing=framing)
        photo = report.photos[0]
        left, _, right, _ = photo.face_box_in_crop
        face_widths[framing] = right - left
        if framing != "portrait":
            # grace_hopper is a head-and-shoulders photo: wider framings must pad, not stretch.
            assert photo.padded_fraction > 0.1
            assert any("too tight" in warning for warning in photo.warnings)
            assert Image.open(photo.output).size == (128, 128)
    assert face_widths["portrait"] > face_widths["half"] > face_widths["full"]
