"""Where to crop around a face for each framing, or around a point for photos without one, and how to fill
what the photo does not cover.

A framing is a square whose side is a multiple of the detected face width, with the face centre placed at
a fixed point of it. dlib's face box runs from the eyebrows to the chin, about as wide as it is tall; the
numbers below put the whole head (hair included) inside the frame with room above it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from dreamcore.prepare.faces import FaceBox


@dataclass(frozen=True)
class Framing:
    side_in_face_widths: float  # crop side / face box width
    face_x: float  # face centre across the crop, 0 = left edge
    face_y: float  # face centre down the crop, 0 = top edge
    description: str


FRAMINGS: dict[str, Framing] = {
    # The guide's "shoulders-up": the face fills ~35% of the width, centred a little above the middle,
    # with the neck and shoulders in the lower third.
    "portrait": Framing(2.8, 0.5, 0.40, "head and shoulders"),
    "half": Framing(4.5, 0.5, 0.27, "head to waist"),
    "full": Framing(9.0, 0.5, 0.12, "whole body"),
}
PAD_MODES = ("blur", "edge", "solid")

# When the photo is narrower than the framing wants, the frame may be tightened this far before padding.
MIN_TIGHTENING = 0.85
# How far the face may move off its framing point (as a fraction of the crop side) to keep the crop
# inside the photo instead of padding it.
MAX_FACE_SHIFT = 0.12


@dataclass(frozen=True)
class CropPlan:
    """A square in source-photo pixels (it may reach outside the photo: that part is padded)."""

    left: float
    top: float
    side: float
    image_width: int
    image_height: int

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.left, self.top, self.left + self.side, self.top + self.side)

    @property
    def inside_box(self) -> tuple[int, int, int, int]:
        """The part of the square that lies inside the photo, in whole pixels."""
        left = max(0, int(np.floor(self.left)))
        top = max(0, int(np.floor(self.top)))
        right = min(self.image_width, int(np.ceil(self.left + self.side)))
        bottom = min(self.image_height, int(np.ceil(self.top + self.side)))
        return (left, top, right, bottom)

    @property
    def padded_fraction(self) -> float:
        left, top, right, bottom = self.inside_box
        covered = max(0, right - left) * max(0, bottom - top)
        return max(0.0, 1.0 - covered / (self.side * self.side))


def plan_face_crop(image_size: tuple[int, int], face: FaceBox, framing: str) -> CropPlan:
    """The square for ``framing`` around ``face``: tightened a little, then shifted a little, to stay inside."""
    spec = FRAMINGS[framing]
    width, height = image_size
    side = spec.side_in_face_widths * face.width
    fits = min(width, height)
    if side > fits:
        side = max(fits, side * MIN_TIGHTENING)
    center_x, center_y = face.center
    left = center_x - spec.face_x * side
    top = center_y - spec.face_y * side
    left = _shift_inside(left, side, width, MAX_FACE_SHIFT * side)
    top = _shift_inside(top, side, height, MAX_FACE_SHIFT * side)
    return CropPlan(left=left, top=top, side=side, image_width=width, image_height=height)


def plan_center_crop(image_size: tuple[int, int]) -> CropPlan:
    width, height = image_size
    return plan_square_around(image_size, (width / 2, height / 2))


def plan_square_around(image_size: tuple[int, int], point: tuple[float, float]) -> CropPlan:
    """The largest square inside the photo, as near to centred on ``point`` as the photo allows.

    Used for subjects without a face: the whole short side is kept (nothing of the subject is cut that a
    tighter square would cut, and nothing is enlarged or padded), and it slides along the long side to the
    subject.
    """
    width, height = image_size
    side = min(width, height)
    left = min(max(point[0] - side / 2, 0.0), width - side)
    top = min(max(point[1] - side / 2, 0.0), height - side)
    return CropPlan(left=left, top=top, side=side, image_width=width, image_height=height)


def _shift_inside(start: float, side: float, limit: int, max_shift: float) -> float:
    """Move [start, start+side) towards the inside of [0, limit) by at most ``max_shift``."""
    if side >= limit:
        wanted = (limit - side) / 2  # cannot fit: centre the overflow so both sides pad equally
    else:
        wanted = min(max(start, 0.0), limit - side)
    return start + float(np.clip(wanted - start, -max_shift, max_shift))


def render_crop(image: Image.Image, plan: CropPlan, size: int, pad_mode: str = "blur") -> Image.Image:
    """Cut ``plan`` out of ``image`` and resize it to ``size`` x ``size`` with LANCZOS, padding outside.

    Only the part inside the photo is resampled; the rest of the square is filled from its edges
    (``edge``: repeat the border pixels, ``blur``: the same, blurred so it reads as out-of-focus
    background, ``solid``: the border's mean colour). The photo is never stretched.
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {', '.join(PAD_MODES)}, not {pad_mode!r}")
    scale = size / plan.side
    left, top, right, bottom = plan.inside_box
    if plan.padded_fraction == 0.0:
        return image.resize((size, size), Image.Resampling.LANCZOS, box=plan.box, reducing_gap=3.0)
    # Where the inside part lands in the output square.
    out_left = int(round((left - plan.left) * scale))
    out_top = int(round((top - plan.top) * scale))
    out_right = min(size, max(out_left + 1, int(round((right - plan.left) * scale))))
    out_bottom = min(size, max(out_top + 1, int(round((bottom - plan.top) * scale))))
    inside = image.resize((out_right - out_left, out_bottom - out_top), Image.Resampling.LANCZOS,
                          box=(left, top, right, bottom), reducing_gap=3.0)
    inside_pixels = np.asarray(inside)
    rows = np.clip(np.arange(size) - out_top, 0, inside_pixels.shape[0] - 1)
    cols = np.clip(np.arange(size) - out_left, 0, inside_pixels.shape[1] - 1)
    filled = inside_pixels[rows][:, cols]  # edge pixels repeated outwards
    if pad_mode == "solid":
        border = np.concatenate([inside_pixels[0], inside_pixels[-1], inside_pixels[:, 0], inside_pixels[:, -1]])
        filled = np.broadcast_to(border.mean(axis=0).round().astype(np.uint8), filled.shape).copy()
    elif pad_mode == "blur":
        filled = np.asarray(Image.fromarray(filled).filter(ImageFilter.GaussianBlur(radius=size / 24))).copy()
    if pad_mode != "edge":
        filled[out_top:out_bottom, out_left:out_right] = inside_pixels
    return Image.fromarray(filled, "RGB")
