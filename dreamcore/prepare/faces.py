"""Find faces with dlib's HOG frontal-face detector.

Why dlib's HOG detector: it ships inside the ``dlib-bin`` wheel from the package registry (Boost Software
License) and needs no model file, so nothing is downloaded at run time. It finds upright, roughly frontal
faces - what a DreamBooth training photo should show anyway. OpenCV's current wheels no longer ship their
Haar cascades, and the cascades also raise many more false "second faces" on clothing and backgrounds.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Detection runs on a copy whose long side is at most this: a 12 MP photo detects in ~0.15 s, and a
# face in a shoulders-up or half-body photo is still far above the detector's ~80 px minimum.
DETECTION_LONG_SIDE = 1024
# dlib scores: > 0 is a face at the detector's default threshold. A second face must be this confident
# and at least this large relative to the main face to make the photo "several people"; weaker or
# smaller ones (a poster, a face far in the background) are reported but do not reject the photo.
MIN_SCORE = 0.0
CONFIDENT_SECOND_FACE_SCORE = 0.5
SECOND_FACE_MIN_RELATIVE_WIDTH = 0.35


_DETECTOR_LOCK = threading.Lock()


class DetectorUnavailableError(RuntimeError):
    """The face detector package is not installed."""


@dataclass(frozen=True)
class FaceBox:
    """A detected face in the pixels of the upright photo: left, top, right, bottom and dlib's score."""

    left: float
    top: float
    right: float
    bottom: float
    score: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def center(self) -> tuple[float, float]:
        return ((self.left + self.right) / 2, (self.top + self.bottom) / 2)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (round(self.left), round(self.top), round(self.right), round(self.bottom))


@dataclass(frozen=True)
class FaceSearch:
    """The main face (largest confident one) and the others, split by whether they count as people."""

    main: FaceBox | None
    other_people: list[FaceBox]
    ignored: list[FaceBox]


@functools.lru_cache(maxsize=1)
def _detector():
    try:
        import dlib
    except ImportError as error:
        raise DetectorUnavailableError(
            "photo preparation needs the face detector from the 'dlib-bin' package: "
            "pip install dlib-bin (or pip install 'dreamcore[prepare]')") from error
    return dlib.get_frontal_face_detector()


def require_detector() -> None:
    """Raise :class:`DetectorUnavailableError` (saying what to install) when dlib is missing."""
    _detector()


def detect_faces(image: Image.Image) -> list[FaceBox]:
    """All faces in an RGB image, in its own pixel coordinates, largest first."""
    scale = min(1.0, DETECTION_LONG_SIDE / max(image.size))
    small = image if scale == 1.0 else image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR,
        reducing_gap=2.0)
    pixels = np.ascontiguousarray(np.asarray(small.convert("RGB")))
    detector = _detector()
    boxes: list[FaceBox] = []
    # Upsampling once finds faces down to ~40 px at 4x the cost; only needed when nothing was found.
    for upsample in (0, 1):
        with _DETECTOR_LOCK:  # one dlib detector run at a time: concurrent runs on it crash the process
            rectangles, scores, _ = detector.run(pixels, upsample, MIN_SCORE)
        boxes = [FaceBox(r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale,
                         float(s)) for r, s in zip(rectangles, scores)]
        if boxes:
            break
    return sorted(boxes, key=lambda box: box.width, reverse=True)


def find_main_face(image: Image.Image) -> FaceSearch:
    """The face to crop around, and whether other people are in the photo."""
    faces = detect_faces(image)
    if not faces:
        return FaceSearch(main=None, other_people=[], ignored=[])
    main = faces[0]
    others = faces[1:]
    people = [face for face in others if face.score >= CONFIDENT_SECOND_FACE_SCORE
              and face.width >= SECOND_FACE_MIN_RELATIVE_WIDTH * main.width]
    ignored = [face for face in others if face not in people]
    return FaceSearch(main=main, other_people=people, ignored=ignored)
