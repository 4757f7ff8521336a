"""Sharpness, perceptual hash and look-alike measures on real photos and controlled changes of them."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from dreamcore.prepare import quality


def _jpeg(image: Image.Image, quality_level: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality_level)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_blur_score_falls_as_blur_grows(grace_hopper: Image.Image) -> None:
    face = (161, 137, 376, 352)
    scores = [quality.blur_score(grace_hopper.filter(ImageFilter.GaussianBlur(r)) if r else grace_hopper, face)
              for r in (0, 1, 2, 4)]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > quality.BLURRY_BELOW > scores[2]


def test_perceptual_hash_survives_reencoding_but_not_another_photo(astronaut: Image.Image,
                                                                     grace_hopper: Image.Image) -> None:
    original = quality.perceptual_hash(astronaut)
    assert quality.hamming(original, quality.perceptual_hash(_jpeg(astronaut, 60))) <= 4
    assert quality.hamming(original, quality.perceptual_hash(astronaut.resize((300, 300)))) <= 4
    assert quality.hamming(original, quality.perceptual_hash(ImageEnhance.Brightness(astronaut).enhance(1.2))) <= 4
    assert quality.hamming(original, quality.perceptual_hash(grace_hopper)) > 16
    assert quality.hamming(original, quality.perceptual_hash(astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT))) > 16


def test_near_duplicate_groups_are_transitive_and_sorted() -> None:
    base = 0xFFFF_0000_FFFF_0000
    hashes = [base, base ^ 0b1, 0x0123_4567_89AB_CDEF, base ^ 0b11, ~base & (2**64 - 1)]
    assert quality.near_duplicate_groups(hashes) == [[0, 1, 3]]


def test_outside_face_histograms_ignore_exposure_but_see_another_place(astronaut: Image.Image,
                                                                       grace_hopper: Image.Image) -> None:
    astronaut_face = (0.32, 0.22, 0.68, 0.58)
    background, clothing = quality.outside_face_histograms(astronaut, astronaut_face)
    assert abs(background.sum() - 1) < 1e-9
    brighter = ImageEnhance.Brightness(astronaut).enhance(1.25)
    bright_background, bright_clothing = quality.outside_face_histograms(brighter, astronaut_face)
    other_background, _ = quality.outside_face_histograms(grace_hopper, (0.32, 0.19, 0.73, 0.61))

    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.minimum(a, b).sum())

    assert similarity(background, bright_background) > quality.ALIKE_MIN_SIMILARITY
    assert similarity(clothing, bright_clothing) > quality.ALIKE_MIN_SIMILARITY
    assert similarity(background, other_background) < 0.5
    assert quality.lookalike_groups([background, bright_background, other_background]) == [[0, 1]]


def test_blank_means_one_flat_colour_not_one_grey_level(astronaut: Image.Image) -> None:
    """A brown dog on green grass can be a single grey level; it is still a photo with something in it."""
    grass, dog = (90, 140, 60), (165, 100, 64)
    two_colours = Image.new("RGB", (400, 300), grass)
    two_colours.paste(dog, (120, 80, 300, 220))
    grey = np.asarray(two_colours.convert("L").resize((64, 64), Image.Resampling.BOX), dtype=np.float64)
    assert grey.std() < quality.BLANK_BELOW  # flat in grey
    assert not quality.is_blank(_jpeg(two_colours, 90))
    rng = np.random.default_rng(0)
    noisy_flat = np.clip(rng.normal((40, 90, 160), 6, (300, 400, 3)), 0, 255).astype(np.uint8)
    assert quality.is_blank(_jpeg(Image.fromarray(noisy_flat, "RGB"), 80))  # sensor noise on a lens cap
    assert quality.is_blank(Image.new("RGB", (640, 480), (200, 30, 30)))
    assert not quality.is_blank(astronaut)
