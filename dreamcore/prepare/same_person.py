"""Do the photos show one person? The face-identity network of ``dreamcore.likeness`` (the ``faces`` extra)
compares the faces, and the photos whose face looks like someone else than the majority's are named.

DreamBooth binds everything the photos share to one token; a friend in two of fifteen photos comes out as a
blend. The identity network is optional: without it nothing is compared, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from dreamcore.prepare.faces import FaceBox
from dreamcore.prepare.quality import group_pairs

# A face is cut out of the photo with this much room around it (in face widths, each side) and scaled to
# this face width: the identity network's own detector finds it again at once, whatever the photo's size.
PATCH_MARGIN = 0.6
PATCH_FACE_WIDTH = 150


@dataclass(frozen=True)
class SamePersonCheck:
    """The outcome: ``checked`` False (with ``reason``) when the identity network is not installed.

    ``groups``: the photos by person, largest group first (singletons included). ``different``: the photos
    that look like someone other than the majority, or every photo when no person holds a majority.
    """

    checked: bool
    reason: str = ""
    groups: list[list[str]] = field(default_factory=list)
    different: list[str] = field(default_factory=list)

    @property
    def has_majority(self) -> bool:
        total = sum(len(group) for group in self.groups)
        return bool(self.groups) and 2 * len(self.groups[0]) > total


def face_patch(image: Image.Image, face: FaceBox) -> Image.Image:
    """The face with some room around it, scaled so the face is ``PATCH_FACE_WIDTH`` pixels wide."""
    margin = PATCH_MARGIN * face.width
    box = (max(0, round(face.left - margin)), max(0, round(face.top - margin)),
           min(image.width, round(face.right + margin)), min(image.height, round(face.bottom + margin)))
    scale = PATCH_FACE_WIDTH / max(face.width, 1.0)
    size = (max(1, round((box[2] - box[0]) * scale)), max(1, round((box[3] - box[1]) * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)


def check_same_person(patches: dict[str, Image.Image]) -> SamePersonCheck:
    """Group the photos (name -> :func:`face_patch`) by the person their face looks like.

    Two faces are one person when dlib's identity vectors are closer than its documented line
    (``SAME_PERSON_DISTANCE``, 0.6); groups are the connected sets of such pairs. A patch in which the
    identity network finds no face is left out of the comparison (its detector is the same as the one that
    found it, so this is rare).
    """
    from dreamcore.likeness.faces import (SAME_PERSON_DISTANCE, ScoringUnavailableError, embed_faces,
                                          face_distance, scoring_available)

    available, message = scoring_available()
    if not available:
        return SamePersonCheck(checked=False, reason=message)
    names: list[str] = []
    vectors: list[np.ndarray] = []
    for name, patch in patches.items():
        try:
            faces = embed_faces(patch)
        except ScoringUnavailableError as error:  # installed but unusable: the same as not installed
            return SamePersonCheck(checked=False, reason=str(error))
        if faces:
            names.append(name)
            vectors.append(faces[0].vector)
    count = len(names)
    alike = np.zeros((count, count), dtype=bool)
    for i in range(count):
        for j in range(i + 1, count):
            alike[i, j] = alike[j, i] = face_distance(vectors[i], vectors[j]) < SAME_PERSON_DISTANCE
    grouped = group_pairs(count, alike)
    in_a_group = {index for group in grouped for index in group}
    groups = [[names[i] for i in group] for group in grouped] + [[names[i]] for i in range(count)
                                                                 if i not in in_a_group]
    check = SamePersonCheck(checked=True, groups=groups)
    if len(groups) <= 1:
        return check
    different = [name for group in groups[1:] for name in group] if check.has_majority else \
        [name for group in groups for name in group]
    return SamePersonCheck(checked=True, groups=groups, different=sorted(different, key=names.index))
