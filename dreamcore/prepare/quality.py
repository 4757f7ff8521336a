"""Measures of a prepared set: blank photos, sharpness, near-duplicates and variety outside the face.

Each is a few lines of numpy, hand-written because no library dreamcore already depends on does them and
pulling scipy or OpenCV into a WebUI's environment for a Laplacian and a DCT is not worth the risk.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

# Variance of the Laplacian of the face, measured at 128 px face width (or less, never upscaled, so an
# enlarged small face is not called sharp or blurry for its interpolation). Measured: sharp astronaut 825,
# grace_hopper 2148; the same under a Gaussian blur of about 1 px at that scale: 75 and 91; 1.5-2 px: 12-31.
BLUR_MEASURE_FACE_WIDTH = 128
BLURRY_BELOW = 100.0
# Standard deviation of the levels (0-255) of each colour channel of a 64x64 copy under which a photo is one
# flat colour (the averaging into 64x64 removes most sensor noise and JPEG blocking, so only real content is
# left). Per channel, not grey: a brown dog on green grass can be one grey level.
BLANK_BELOW = 3.0
# Hamming distance between 64-bit perceptual hashes at or under which two crops count as near-duplicates
# (the same shot, or a burst): re-encoding or a small crop shift stays under 6, different poses exceed 16.
NEAR_DUPLICATE_MAX_DISTANCE = 8
# Colour-histogram intersection (0 = no shared colours, 1 = identical) above which two crops have
# "the same" background or clothing.
ALIKE_MIN_SIMILARITY = 0.75


def is_blank(image: Image.Image) -> bool:
    """True when the photo is one flat colour (a lens cap, a blank export): nothing in it to learn."""
    small = image.convert("RGB").resize((64, 64), Image.Resampling.BOX, reducing_gap=2.0)
    return float(np.asarray(small, dtype=np.float64).reshape(-1, 3).std(axis=0).max()) < BLANK_BELOW


def blur_score(image: Image.Image, face_box: tuple[float, float, float, float]) -> float:
    """Sharpness of the face region: variance of its Laplacian (higher is sharper)."""
    face = image.crop(tuple(round(v) for v in face_box)).convert("L")
    if face.width > BLUR_MEASURE_FACE_WIDTH:
        height = max(1, round(face.height * BLUR_MEASURE_FACE_WIDTH / face.width))
        face = face.resize((BLUR_MEASURE_FACE_WIDTH, height), Image.Resampling.BOX)
    gray = np.asarray(face, dtype=np.float64)
    if min(gray.shape) < 3:
        return 0.0
    laplacian = (gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4 * gray[1:-1, 1:-1])
    return float(laplacian.var())


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT32 = _dct_matrix(32)


def perceptual_hash(image: Image.Image) -> int:
    """64-bit pHash: the signs of the lowest 8x8 DCT frequencies of a 32x32 greyscale copy vs. their median."""
    gray = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    low = (_DCT32 @ gray @ _DCT32.T)[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term is left out of the median: it is just brightness
    return int("".join("1" if bit else "0" for bit in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def group_pairs(count: int, alike: np.ndarray) -> list[list[int]]:
    """Connected groups (of 2 or more) of a symmetric boolean "alike" matrix, each sorted, largest first."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(count):
        for j in range(i + 1, count):
            if alike[i, j]:
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(count):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def near_duplicate_groups(hashes: Sequence[int]) -> list[list[int]]:
    n = len(hashes)
    alike = np.array([[hamming(hashes[i], hashes[j]) <= NEAR_DUPLICATE_MAX_DISTANCE for j in range(n)]
                      for i in range(n)], dtype=bool).reshape(n, n)
    return group_pairs(n, alike)


def outside_face_histograms(crop: Image.Image,
                            face_in_crop: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Colour histograms of the background (beside and above the head) and the clothing (below the chin).

    ``face_in_crop`` is the face box as fractions of the crop. The head is masked generously (hair above,
    ears beside) so skin and hair colour, which never change, do not make every photo look alike.
    """
    small = np.asarray(crop.convert("RGB").resize((64, 64), Image.Resampling.BOX)).astype(np.float64)
    left, top, right, bottom = (np.array(face_in_crop) * 64)
    width = right - left
    rows = np.arange(64)[:, None]
    cols = np.arange(64)[None, :]
    # Exposure differs from shot to shot; the face is the same skin in every photo, so scaling each crop
    # to a common face brightness compares the places and clothes rather than the camera's metering.
    face = (cols >= left) & (cols < right) & (rows >= top) & (rows < bottom)
    face_brightness = small[face].mean() if face.any() else small.mean()
    small = np.clip(small * np.clip(FACE_REFERENCE_BRIGHTNESS / max(face_brightness, 1.0), 0.5, 2.0), 0, 255)
    head = ((cols >= left - 0.35 * width) & (cols < right + 0.35 * width)
            & (rows >= top - 0.6 * width) & (rows < bottom + 0.15 * width))
    below_chin = np.broadcast_to(rows >= bottom + 0.15 * width, (64, 64))
    background = ~head & ~below_chin
    # Clothing is the middle band below the chin; the sides of that band are usually background again.
    clothing = below_chin & (cols >= left - 0.8 * width) & (cols < right + 0.8 * width)
    return _histogram(small[background]), _histogram(small[clothing])


FACE_REFERENCE_BRIGHTNESS = 140.0
HISTOGRAM_LEVELS = 5  # per channel: colour families, not exact shades


def _histogram(pixels: np.ndarray) -> np.ndarray:
    """A soft colour histogram: each pixel is shared between its neighbouring bins (trilinear weights), so
    a small change of exposure moves weight smoothly instead of flipping pixels across a bin edge."""
    levels = HISTOGRAM_LEVELS
    if len(pixels) == 0:
        return np.zeros(levels ** 3)
    position = pixels.astype(np.float64) * ((levels - 1) / 255.0)
    low = np.minimum(np.floor(position).astype(np.int64), levels - 2)
    high_weight = position - low
    counts = np.zeros(levels ** 3)
    for corner in range(8):
        offsets = [(corner >> channel) & 1 for channel in range(3)]
        weight = np.ones(len(pixels))
        index = np.zeros(len(pixels), dtype=np.int64)
        for channel, offset in enumerate(offsets):
            weight *= high_weight[:, channel] if offset else 1.0 - high_weight[:, channel]
            index = index * levels + low[:, channel] + offset
        counts += np.bincount(index, weights=weight, minlength=levels ** 3)
    return counts / counts.sum()


def lookalike_groups(histograms: Sequence[np.ndarray]) -> list[list[int]]:
    """Groups of crops whose histograms intersect by at least ALIKE_MIN_SIMILARITY."""
    n = len(histograms)
    alike = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in range(i + 1, n):
            if histograms[i].sum() > 0 and histograms[j].sum() > 0:
                similarity = float(np.minimum(histograms[i], histograms[j]).sum())
                alike[i, j] = alike[j, i] = similarity >= ALIKE_MIN_SIMILARITY
    return group_pairs(n, alike)
