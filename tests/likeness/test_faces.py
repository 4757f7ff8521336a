"""Face identity on real photographs: the same person scores as the same person, different people do not.

Threshold: dlib's documented same-person distance, 0.6 (its identity network was trained to put one
person's faces within 0.6 of each other; 99.38% on LFW). identity_similarity maps 0.6 to 0.5, so the
tests assert similarity above 0.5 for the same person and below it for different people. Measured here:
same person 0.05-0.2 distance (similarity > 0.83), astronaut vs Grace Hopper 0.64-0.72 (similarity
0.40-0.47) - the different-people margin is thin because both are women photographed frontally, which is
why the tests use dlib's line itself rather than a stricter one of our own.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from dreamcore.likeness import (SAME_PERSON_DISTANCE, SAME_PERSON_SIMILARITY, embed_faces, face_distance,
                                identity_similarity, is_same_person)


def largest_face(image):
    faces = embed_faces(image)
    assert faces, "no face found"
    return faces[0]


def test_the_face_is_found_where_it_is(astronaut, grace_hopper):
    face = largest_face(astronaut)
    left, top, right, bottom = face.box
    # Eileen Collins' face lies in the upper-left of the 512x512 photo, about 90 pixels wide.
    assert 150 < left < right < 300 and 50 < top < bottom < 200
    assert face.vector.shape == (128,)
    hopper = largest_face(grace_hopper)
    assert 150 < hopper.box[0] < hopper.box[2] < 400
    # Upsampled once, dlib also finds a weak false face on her suit: faces come largest first, so the
    # person is faces[0]; the default (upsample only when nothing is found) does not look that hard.
    upsampled = embed_faces(astronaut, upsample_times=1)
    assert len(upsampled) == 2 and upsampled[0].area > upsampled[1].area
    assert upsampled[0].detection_score > upsampled[1].detection_score
    assert len(embed_faces(astronaut)) == 1


def test_same_person_scores_as_same_person(astronaut, grace_hopper, second_view):
    # A weak second view (mirrored, cropped, recoloured, rescaled copy): no package ships two photos of one person.
    for photo in (astronaut, grace_hopper):
        original, view = largest_face(photo), largest_face(second_view(photo))
        assert identity_similarity(original, view) > SAME_PERSON_SIMILARITY
        assert face_distance(original, view) < SAME_PERSON_DISTANCE
        assert is_same_person(original, view)


def test_different_people_do_not(astronaut, grace_hopper, second_view):
    for a in (astronaut, second_view(astronaut)):
        for b in (grace_hopper, second_view(grace_hopper)):
            face_a, face_b = largest_face(a), largest_face(b)
            assert identity_similarity(face_a, face_b) < SAME_PERSON_SIMILARITY
            assert not is_same_person(face_a, face_b)


def test_same_and_different_after_the_preparation_crop(astronaut, grace_hopper, second_view, portrait_crop):
    crops = {name: portrait_crop(photo, largest_face(photo).box)
             for name, photo in (("astronaut", astronaut), ("hopper", grace_hopper))}
    for crop in crops.values():
        assert crop.size == (512, 512)
    astronaut_crop, hopper_crop = largest_face(crops["astronaut"]), largest_face(crops["hopper"])
    assert identity_similarity(astronaut_crop, largest_face(astronaut)) > SAME_PERSON_SIMILARITY
    assert identity_similarity(astronaut_crop, largest_face(second_view(astronaut))) > SAME_PERSON_SIMILARITY
    assert identity_similarity(hopper_crop, largest_face(grace_hopper)) > SAME_PERSON_SIMILARITY
    assert identity_similarity(astronaut_crop, hopper_crop) < SAME_PERSON_SIMILARITY


def test_similarity_is_linear_in_distance_and_symmetric():
    a = np.zeros(128)
    for distance, expected in ((0.0, 1.0), (0.3, 0.75), (0.6, 0.5), (1.2, 0.0), (2.0, 0.0)):
        b = np.zeros(128)
        b[0] = distance
        assert identity_similarity(a, b) == pytest.approx(expected)
        assert identity_similarity(b, a) == pytest.approx(expected)


def test_accepts_paths_arrays_and_grayscale(tmp_path, astronaut):
    path = tmp_path / "astronaut photo.jpg"
    astronaut.save(path, quality=95)
    from_path = largest_face(path)
    from_array = largest_face(np.asarray(astronaut))
    from_gray = largest_face(ImageOps.grayscale(astronaut))
    assert identity_similarity(from_path, from_array) > 0.8
    assert identity_similarity(from_gray, from_array) > SAME_PERSON_SIMILARITY


def test_no_face_in_noise_or_flat_images():
    rng = np.random.default_rng(0)
    assert embed_faces(Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))) == []
    assert embed_faces(Image.new("RGB", (64, 64), "gray")) == []


def test_bad_arrays_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="uint8"):
        embed_faces(np.zeros((32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="RGBA"):
        embed_faces(np.zeros((32, 32, 4), dtype=np.uint8))
    with pytest.raises(TypeError, match="Pillow image"):
        embed_faces(42)


def test_same_and_different_after_dreamcore_prepare(tmp_path, astronaut, grace_hopper, second_view):
    """The same judgement on the crops dreamcore.prepare writes for training (issue 4's portrait framing)."""
    prepare = pytest.importorskip("dreamcore.prepare", reason="dreamcore.prepare (issue 4) is not in this tree")
    originals = tmp_path / "originals"
    originals.mkdir()
    astronaut.save(originals / "a1-astronaut.png")
    second_view(astronaut).save(originals / "a2-astronaut-view.jpg", quality=92)
    grace_hopper.save(originals / "h1-hopper.jpg", quality=92)
    report = prepare.prepare_photos(originals, tmp_path / "prepared", size=512, framing="portrait")
    crops = {photo.source.name: photo.output for photo in report.photos}
    assert all(path is not None and path.is_file() for path in crops.values()), crops
    astronaut_crop = largest_face(crops["a1-astronaut.png"])
    view_crop = largest_face(crops["a2-astronaut-view.jpg"])
    hopper_crop = largest_face(crops["h1-hopper.jpg"])
    assert identity_similarity(astronaut_crop, view_crop) > SAME_PERSON_SIMILARITY
    assert identity_similarity(astronaut_crop, largest_face(astronaut)) > SAME_PERSON_SIMILARITY
    assert identity_similarity(hopper_crop, largest_face(grace_hopper)) > SAME_PERSON_SIMILARITY
    assert identity_similarity(astronaut_crop, hopper_crop) < SAME_PERSON_SIMILARITY
    assert identity_similarity(view_crop, hopper_crop) < SAME_PERSON_SIMILARITY
