"""Where the subject of a photo probably is, when there is no face to go by.

The measure is a boundary prior, the assumption behind most simple salient-object detectors: what a photo
is *of* rarely touches its edges, so the background is what the border shows. A pixel's saliency is its
colour distance to the nearest of the border's common colours (the border ring's pixels whose coarse
colour bin holds at least ``BACKGROUND_MIN_SHARE`` of the ring, so a subject that touches the edge a little
does not become background). The salient point is the centre of
mass of the above-average saliency: a dog on a lawn, a mug on a table, a cat against a two-tone wall.

Hand-written in numpy because dreamcore's image dependencies (Pillow, numpy, torch) have no saliency
measure, and OpenCV's (opencv-contrib) is not worth adding to a WebUI's environment for a few lines.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# The map is computed on a copy whose long side is this: the subject's position, not its detail, matters.
MAP_LONG_SIDE = 128
BORDER_FRACTION = 0.06  # width of the border ring, as a fraction of the short side
COARSE_LEVELS = 8  # colour bins per channel that decide which of the border's colours are common
BACKGROUND_MIN_SHARE = 0.02
FINE_LEVELS = 32  # colour bins per channel of the background colours themselves
MAX_BACKGROUND_COLOURS = 256
# Nothing stands out when the most distinct 1% of the photo is closer than this to the border's colours
# (RGB in 0..1, so distances reach sqrt(3); a fine bin is 1/31 wide, so quantisation adds at most ~0.03).
MIN_SALIENT_CONTRAST = 0.1
SALIENT_PERCENTILE = 99


def saliency_map(image: Image.Image) -> tuple[np.ndarray, float]:
    """The saliency of a small copy of ``image`` (HxW, 0 = like the background) and that copy's scale."""
    scale = min(1.0, MAP_LONG_SIDE / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small = image.convert("RGB").resize(size, Image.Resampling.BOX, reducing_gap=2.0) if scale < 1.0 \
        else image.convert("RGB")
    pixels = np.asarray(small, dtype=np.float32) / 255.0
    height, width, _ = pixels.shape
    ring = max(1, round(BORDER_FRACTION * min(height, width)))
    border = np.concatenate([pixels[:ring].reshape(-1, 3), pixels[-ring:].reshape(-1, 3),
                             pixels[ring:-ring, :ring].reshape(-1, 3), pixels[ring:-ring, -ring:].reshape(-1, 3)])
    background = _background_colours(border)
    flat = pixels.reshape(-1, 3)
    # Squared distance to every background colour at once: |p|^2 - 2 p.c + |c|^2.
    squared = (flat ** 2).sum(axis=1)[:, None] - 2.0 * flat @ background.T + (background ** 2).sum(axis=1)[None, :]
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0)).reshape(height, width), scale


def _background_colours(border: np.ndarray) -> np.ndarray:
    """The border's common colours: its pixels whose coarse colour bin holds at least BACKGROUND_MIN_SHARE
    of the ring, as the distinct colours of a fine quantisation (so a pixel of a background colour lies
    close to one of them), the most frequent ``MAX_BACKGROUND_COLOURS``."""
    coarse = _bins(border, COARSE_LEVELS)
    counts = np.bincount(coarse, minlength=COARSE_LEVELS ** 3)
    common = counts[coarse] >= BACKGROUND_MIN_SHARE * len(border)
    if not common.any():  # a border of many colours, none common: its most frequent one stands for all
        common = coarse == int(np.argmax(counts))
    fine = _bins(border[common], FINE_LEVELS)
    colours, inverse, frequency = np.unique(fine, return_inverse=True, return_counts=True)
    sums = np.zeros((len(colours), 3), dtype=np.float64)
    np.add.at(sums, inverse.reshape(-1), border[common])
    means = (sums / frequency[:, None]).astype(np.float32)
    return means[np.argsort(-frequency, kind="stable")[:MAX_BACKGROUND_COLOURS]]


def _bins(colours: np.ndarray, levels: int) -> np.ndarray:
    return np.round(colours * (levels - 1)).astype(np.int64) @ np.array([levels * levels, levels, 1])


def salient_point(image: Image.Image) -> tuple[float, float] | None:
    """The centre of the photo's salient region in its own pixels, or None when nothing stands out."""
    saliency, scale = saliency_map(image)
    if saliency.size == 0 or float(np.percentile(saliency, SALIENT_PERCENTILE)) < MIN_SALIENT_CONTRAST:
        return None
    # Only what stands out more than the average counts, so a busy background spread over the whole photo
    # does not pull the point towards the middle.
    weight = np.maximum(saliency - saliency.mean(), 0.0)
    total = float(weight.sum())
    if total <= 0.0:
        return None
    rows, cols = np.indices(weight.shape)
    x = (float((cols * weight).sum()) / total + 0.5) / scale
    y = (float((rows * weight).sum()) / total + 0.5) / scale
    return (min(max(x, 0.0), float(image.width)), min(max(y, 0.0), float(image.height)))
