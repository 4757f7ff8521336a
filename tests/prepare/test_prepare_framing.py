"""Where the square goes around a face, and how the part outside the photo is filled."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dreamcore.prepare.faces import FaceBox
from dreamcore.prepare.framing import (FRAMINGS, MAX_FACE_SHIFT, MIN_TIGHTENING, plan_center_crop,
                                       plan_face_crop, render_crop)


def _face(center_x: float, center_y: float, width: float) -> FaceBox:
    return FaceBox(center_x - width / 2, center_y - width / 2, center_x + width / 2, center_y + width / 2, 1.0)


@pytest.mark.parametrize("framing", list(FRAMINGS))
def test_roomy_photo_puts_the_face_on_the_framing_point(framing: str) -> None:
    spec = FRAMINGS[framing]
    face = _face(3000, 2000, 100)
    plan = plan_face_crop((6000, 6000), face, framing)
    assert plan.side == pytest.approx(spec.side_in_face_widths * 100)
    assert (3000 - plan.left) / plan.side == pytest.approx(spec.face_x)
    assert (2000 - plan.top) / plan.side == pytest.approx(spec.face_y)
    assert plan.padded_fraction == 0.0


def test_face_near_an_edge_shifts_the_square_inside_by_a_bounded_amount() -> None:
    face = _face(150, 500, 100)  # portrait: side 280, wants left = 150 - 140 = 10: fits as it is
    near_edge = plan_face_crop((2000, 2000), _face(120, 500, 100), "portrait")
    assert near_edge.left == pytest.approx(0.0)  # wanted -20: moved 20 px right, within the limit
    assert near_edge.padded_fraction == 0.0
    far_out = plan_face_crop((2000, 2000), _face(20, 500, 100), "portrait")
    assert far_out.left == pytest.approx(20 - 140 + MAX_FACE_SHIFT * 280)  # shifted the most it may
    assert far_out.padded_fraction > 0  # the rest is padding, never a stretched photo
    assert plan_face_crop((2000, 2000), face, "portrait").left == pytest.approx(10.0)


def test_narrow_photo_tightens_then_pads() -> None:
    face = _face(250, 300, 200)  # portrait wants 560 px
    slightly_narrow = plan_face_crop((500, 900), face, "portrait")
    assert slightly_narrow.side == 500 and slightly_narrow.padded_fraction == 0.0  # tightened to fit
    too_narrow = plan_face_crop((400, 900), _face(200, 300, 200), "portrait")
    assert too_narrow.side == pytest.approx(560 * MIN_TIGHTENING)  # tightened as far as allowed
    assert too_narrow.padded_fraction > 0
    assert too_narrow.left == pytest.approx((400 - too_narrow.side) / 2)  # the overflow is split evenly


def test_center_crop_is_the_largest_centred_square() -> None:
    plan = plan_center_crop((600, 400))
    assert (plan.left, plan.top, plan.side) == (100, 0, 400)


def _striped(width: int, height: int) -> Image.Image:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    pixels[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("pad_mode", ["blur", "edge", "solid"])
def test_padding_keeps_the_photo_undistorted(pad_mode: str) -> None:
    photo = _striped(200, 400)
    # A 400 px square centred on a 200 px wide photo: 100 px of padding each side.
    plan = plan_face_crop((200, 400), _face(100, 160, 400 / 2.8 / MIN_TIGHTENING), "portrait")
    assert plan.side == pytest.approx(400) and plan.left == pytest.approx(-100)
    crop = np.asarray(render_crop(photo, plan, 100, pad_mode)).astype(int)
    assert crop.shape == (100, 100, 3)
    # The photo occupies the middle half at the same scale in both directions (25 px = 100 source px).
    middle = crop[:, 26:74]
    expected = np.asarray(photo.resize((50, 100), Image.Resampling.LANCZOS, box=plan.inside_box)).astype(int)
    assert np.abs(middle - expected[:, 1:49]).mean() < 2
    left_pad = crop[:, :24]
    if pad_mode == "solid":
        assert (left_pad == left_pad[0, 0]).all()
    elif pad_mode == "edge":
        assert np.abs(left_pad - crop[:, 25:26]).max() <= 1  # the border column repeated
    else:
        assert left_pad[..., 1].std() > 0  # the blurred edge still follows the photo downwards


def test_render_without_padding_is_a_plain_lanczos_resize() -> None:
    photo = _striped(300, 300)
    plan = plan_center_crop((300, 300))
    crop = render_crop(photo, plan, 150)
    expected = photo.resize((150, 150), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(crop), np.asarray(expected))


def test_unknown_pad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="pad_mode must be one of blur, edge, solid"):
        render_crop(_striped(10, 10), plan_center_crop((10, 10)), 8, "mirror")
