"""Helpers shared by the photo-preparation tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image


def folder_digest(folder: Path) -> dict[str, str]:
    """Name -> SHA-256 of every file, to prove a folder was not modified."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.iterdir()) if path.is_file()}


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    height = max(left.height, right.height)
    canvas = Image.new("RGB", (left.width + right.width, height), (128, 128, 128))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


def mean_abs_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


def animal_photo(size: tuple[int, int], centre: tuple[float, float], body_width: float,
                 background: tuple[int, int, int] | Image.Image = (225, 225, 215),
                 fur: tuple[int, int, int] = (120, 70, 30)) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """A dog-like blob (body, head, four legs) drawn at ``centre`` of a plain or given background.

    Returns the photo and the blob's bounding box (left, top, right, bottom) in its pixels.
    """
    from PIL import ImageDraw

    photo = background.copy() if isinstance(background, Image.Image) else Image.new("RGB", size, background)
    draw = ImageDraw.Draw(photo)
    x, y, s = centre[0], centre[1], body_width / 2
    draw.ellipse((x - s, y - 0.5 * s, x + s, y + 0.5 * s), fill=fur)  # body
    draw.ellipse((x + 0.6 * s, y - 1.1 * s, x + 1.3 * s, y - 0.3 * s), fill=fur)  # head
    draw.polygon([(x + 0.7 * s, y - 0.95 * s), (x + 0.8 * s, y - 1.35 * s), (x + 0.95 * s, y - 1.05 * s)],
                 fill=fur)  # ear
    for offset in (-0.8, -0.45, 0.45, 0.8):
        draw.rectangle((x + (offset - 0.08) * s, y + 0.3 * s, x + (offset + 0.08) * s, y + 1.0 * s), fill=fur)
    return photo, (x - s, y - 1.35 * s, x + 1.3 * s, y + 1.0 * s)


def two_tone_room(size: tuple[int, int]) -> Image.Image:
    """A wall over a floor: a background of two colours, as indoors."""
    from PIL import ImageDraw

    room = Image.new("RGB", size, (205, 195, 175))
    ImageDraw.Draw(room).rectangle((0, int(size[1] * 0.62), size[0], size[1]), fill=(105, 80, 60))
    return room


def lawn(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A textured green background: every pixel a slightly different green."""
    rng = np.random.default_rng(seed)
    pixels = np.stack([rng.normal(70, 18, size[::-1]), rng.normal(140, 25, size[::-1]),
                       rng.normal(55, 15, size[::-1])], axis=-1)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def reshot(image: Image.Image) -> Image.Image:
    """Another photo of the same person, as far as a test can make one: mirrored, cropped, recoloured."""
    from PIL import ImageEnhance, ImageOps

    width, height = image.size
    view = ImageOps.mirror(image).crop((int(width * 0.1), 0, width, int(height * 0.9)))
    view = ImageEnhance.Color(view).enhance(0.7)
    return view.resize((int(view.width * 0.8), int(view.height * 0.8)), Image.Resampling.LANCZOS)
