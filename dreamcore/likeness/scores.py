"""Score one checkpoint's samples: likeness to the user, class drift, and variety.

- likeness: how much the instance-prompt samples look like the person in the training photos. Each
  sample's largest face is compared with every training photo's face (:func:`identity_similarity`,
  0..1, 0.5 = dlib's same-person line) and the mean is taken; a sample in which no face is found counts
  as 0, so a checkpoint that stops drawing faces loses likeness. ``face_rate`` reports that share too.
- class drift: the same measure on the class-prompt samples ("photo of a person"). Prior preservation
  should keep it where unrelated people score (roughly 0.15-0.45); when it nears 0.5 the class prompt
  has started to draw the user.
- variety: how different the samples of one prompt are from one another, as the mean absolute pixel
  difference (0..1) of every pair at 64x64. Overfitting collapses every seed onto the same picture and
  drives it towards 0. It needs no face, so it is defined even for checkpoints that draw none.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from dreamcore.images import ImageLoadError, load_rgb_image
from dreamcore.likeness.faces import FaceEmbedding, embed_faces, identity_similarity

logger = logging.getLogger(__name__)

VARIETY_THUMBNAIL = 64  # pixels a side: enough for layout and colour, blind to sampler noise


class LikenessError(ValueError):
    """Scoring cannot run on the inputs given; the message names the file or folder and what to do."""


@dataclass(frozen=True)
class PhotoReference:
    """The training photos' faces, embedded once and reused for every checkpoint."""

    faces: tuple[FaceEmbedding, ...]
    photos: tuple[str, ...]
    photos_without_face: tuple[str, ...] = ()

    def similarity(self, face: FaceEmbedding) -> float:
        """Mean identity similarity of ``face`` to the training photos' faces."""
        return float(np.mean([identity_similarity(face, photo_face) for photo_face in self.faces]))


@dataclass
class PromptScore:
    """The scores of one prompt's samples at one checkpoint."""

    num_samples: int
    faces_found: int
    likeness: float
    variety: float | None

    @property
    def face_rate(self) -> float:
        return self.faces_found / self.num_samples if self.num_samples else 0.0


@dataclass
class CheckpointScore:
    """Likeness, class drift and variety of one checkpoint (see the module docstring for each).

    ``likeness``, ``face_rate`` and ``variety`` pool every instance prompt (the instance prompt and its
    variations); ``class_drift`` is None when no class-prompt samples were scored and ``variety`` is None
    when no prompt had two samples. ``prompts`` holds the per-prompt detail.
    """

    step: int | None
    likeness: float
    face_rate: float
    class_drift: float | None
    variety: float | None
    num_samples: int
    num_class_samples: int = 0
    label: str = ""
    prompts: dict[str, PromptScore] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, for train_config.json's run report and ``score --json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "scores") -> "CheckpointScore":
        """Rebuild a score written by :meth:`to_dict`. Raises LikenessError naming ``source`` if malformed."""
        if not isinstance(data, Mapping):
            raise LikenessError(f"{source}: expected an object per checkpoint, got {type(data).__name__}")
        required = ("step", "likeness", "face_rate", "class_drift", "variety", "num_samples")
        missing = [name for name in required if name not in data]
        if missing:
            raise LikenessError(f"{source}: a checkpoint score lacks {', '.join(missing)}; was it written by "
                                "dreamcore's likeness scoring?")
        try:
            prompts = {str(prompt): PromptScore(**values) for prompt, values in dict(data.get("prompts", {})).items()}
            return cls(step=None if data["step"] is None else int(data["step"]),
                       likeness=float(data["likeness"]), face_rate=float(data["face_rate"]),
                       class_drift=_optional_float(data["class_drift"]), variety=_optional_float(data["variety"]),
                       num_samples=int(data["num_samples"]),
                       num_class_samples=int(data.get("num_class_samples", 0)),
                       label=str(data.get("label", "")), prompts=prompts)
        except (TypeError, ValueError) as error:
            raise LikenessError(f"{source}: a checkpoint score has a value of the wrong type ({error})") from error


def scores_to_json(scores: Sequence[CheckpointScore]) -> list[dict[str, Any]]:
    return [score.to_dict() for score in scores]


def scores_from_json(data: Any, source: str = "scores") -> list[CheckpointScore]:
    if not isinstance(data, list):
        raise LikenessError(f"{source}: expected a list of checkpoint scores, got {type(data).__name__}")
    return [CheckpointScore.from_dict(entry, f"{source} entry {index + 1}") for index, entry in enumerate(data)]


def embed_photos(photo_paths: Iterable[str | Path]) -> PhotoReference:
    """Embed the training photos' faces (the largest face of each photo).

    Photos without a face are left out and listed (a logged skip: they cannot say what the person looks
    like). Raises LikenessError when none has a face, or ImageLoadError for an unreadable photo.
    """
    photo_paths = [Path(path) for path in photo_paths]
    if not photo_paths:
        raise LikenessError("no training photos given: likeness compares samples with the photos of the person")
    faces, with_face, without_face = [], [], []
    for path in photo_paths:
        found = embed_faces(load_rgb_image(path))
        if found:
            faces.append(found[0])
            with_face.append(str(path))
        else:
            without_face.append(str(path))
            logger.warning("likeness: no face found in training photo %s; it is left out of the comparison", path)
    if not faces:
        folders = sorted({str(path.parent) for path in photo_paths})
        raise LikenessError(f"no face was found in any of the {len(photo_paths)} training photos in "
                            f"{', '.join(folders)}; likeness needs photos in which the face is visible and at "
                            "least about 40 pixels wide (run 'python -m dreamcore prepare' to check them)")
    return PhotoReference(tuple(faces), tuple(with_face), tuple(without_face))


def score_images(sample_paths_by_prompt: Mapping[str, Sequence[Path]], class_sample_paths: Sequence[Path],
                 photo_paths: Sequence[Path], step: int | None = None, label: str = "",
                 reference: PhotoReference | None = None) -> CheckpointScore:
    """Score saved samples: ``{prompt: [sample files]}`` of the instance prompt(s), class-prompt samples
    (may be empty: no class drift then) and the training photos (or a precomputed ``reference``)."""
    samples = {prompt: [_load_sample(path) for path in paths] for prompt, paths in sample_paths_by_prompt.items()}
    class_samples = [_load_sample(path) for path in class_sample_paths]
    return score_loaded_images(samples, class_samples, reference or embed_photos(photo_paths), step, label)


def score_loaded_images(samples_by_prompt: Mapping[str, Sequence[Image.Image]],
                        class_samples: Sequence[Image.Image], reference: PhotoReference,
                        step: int | None = None, label: str = "") -> CheckpointScore:
    """:func:`score_images` for images already in memory."""
    if not any(samples_by_prompt.values()):
        raise LikenessError("no samples to score: give at least one image of the instance prompt")
    prompts = {prompt: _score_prompt(images, reference) for prompt, images in samples_by_prompt.items() if images}
    num_samples = sum(score.num_samples for score in prompts.values())
    likeness = sum(score.likeness * score.num_samples for score in prompts.values()) / num_samples
    face_rate = sum(score.faces_found for score in prompts.values()) / num_samples
    varieties = [score.variety for score in prompts.values() if score.variety is not None]
    class_drift = _mean_similarity(class_samples, reference)[0] if class_samples else None
    return CheckpointScore(step=step, likeness=likeness, face_rate=face_rate, class_drift=class_drift,
                           variety=float(np.mean(varieties)) if varieties else None, num_samples=num_samples,
                           num_class_samples=len(class_samples), label=label, prompts=prompts)


def image_variety(images: Sequence[Image.Image]) -> float | None:
    """Mean absolute pixel difference (0..1) over every pair of images at 64x64; None for fewer than 2."""
    if len(images) < 2:
        return None
    thumbnails = [np.asarray(image.convert("RGB").resize((VARIETY_THUMBNAIL, VARIETY_THUMBNAIL), Image.BOX),
                             dtype=np.float32) / 255.0 for image in images]
    return float(np.mean([np.abs(a - b).mean() for a, b in itertools.combinations(thumbnails, 2)]))


# --- helpers ----------------------------------------------------------------------------------------

def _score_prompt(images: Sequence[Image.Image], reference: PhotoReference) -> PromptScore:
    likeness, faces_found = _mean_similarity(images, reference)
    return PromptScore(num_samples=len(images), faces_found=faces_found, likeness=likeness,
                       variety=image_variety(images))


def _mean_similarity(images: Sequence[Image.Image], reference: PhotoReference) -> tuple[float, int]:
    """Mean similarity of each image's largest face to the photos (0 where no face), and the face count."""
    similarities, faces_found = [], 0
    for image in images:
        faces = embed_faces(image)
        if faces:
            faces_found += 1
            similarities.append(reference.similarity(faces[0]))
        else:
            similarities.append(0.0)
    return float(np.mean(similarities)), faces_found


def _load_sample(path: str | Path) -> Image.Image:
    try:
        return load_rgb_image(path)
    except ImageLoadError as error:
        raise LikenessError(f"sample image {error}") from error


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
