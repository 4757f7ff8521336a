"""Scoring samples against the training photos: likeness, face rate, class drift, variety."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from dreamcore.likeness import (DEFAULT_VARIETY_BOUND, SAME_PERSON_SIMILARITY, LikenessError, embed_photos,
                                image_variety, score_images)


def save(image: Image.Image, path):
    image.save(path)
    return path


def noise(seed: int, size: int = 128) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_samples_of_the_person_score_high_and_the_class_prompt_low(tmp_path, photo_folder, astronaut, grace_hopper,
                                                                   second_view, portrait_crop):
    from dreamcore.likeness import embed_faces

    photos = sorted(photo_folder.iterdir())
    crop = portrait_crop(astronaut, embed_faces(astronaut)[0].box, size=384)
    samples = {"photo of sks person": [save(crop, tmp_path / "s1.png"), save(noise(1), tmp_path / "s2.png")],
               "photo of sks person, smiling": [save(second_view(astronaut), tmp_path / "s3.png")]}
    class_samples = [save(grace_hopper, tmp_path / "c1.png"), save(noise(2), tmp_path / "c2.png")]
    score = score_images(samples, class_samples, photos, step=300, label="ckpt")

    assert score.step == 300 and score.label == "ckpt"
    assert score.num_samples == 3 and score.num_class_samples == 2
    assert score.face_rate == pytest.approx(2 / 3)
    first = score.prompts["photo of sks person"]
    assert (first.num_samples, first.faces_found) == (2, 1)
    # The sample without a face counts as 0, so it halves that prompt's likeness.
    assert SAME_PERSON_SIMILARITY / 2 < first.likeness < 0.5
    assert score.prompts["photo of sks person, smiling"].likeness > SAME_PERSON_SIMILARITY
    assert score.likeness == pytest.approx((first.likeness * 2 + score.prompts["photo of sks person, smiling"].likeness)
                                           / 3)
    # Grace Hopper is found but is someone else; the noise image has no face: drift stays well under 0.5.
    assert 0 < score.class_drift < SAME_PERSON_SIMILARITY / 2
    # Only the two-sample prompt has a variety; one sample has nothing to differ from.
    assert score.prompts["photo of sks person, smiling"].variety is None
    assert score.variety == pytest.approx(first.variety) and score.variety > 0.1


def test_class_samples_that_look_like_the_user_show_as_drift(tmp_path, photo_folder, astronaut, second_view):
    photos = sorted(photo_folder.iterdir())
    drifted = [save(second_view(astronaut), tmp_path / "c1.png")]
    score = score_images({"p": [save(astronaut, tmp_path / "s.png")]}, drifted, photos)
    assert score.class_drift > SAME_PERSON_SIMILARITY
    assert score.variety is None


def test_variety_falls_as_samples_collapse():
    distinct = [noise(seed) for seed in range(4)]
    collapsed = [noise(0)] * 3 + [noise(0).rotate(1)]
    assert image_variety([noise(0)]) is None
    assert image_variety([noise(0), noise(0)]) == 0.0
    assert image_variety(collapsed) < image_variety(distinct)
    assert 0.0 <= image_variety(distinct) <= 1.0


def test_default_variety_bound_separates_near_copies_from_different_pictures(astronaut, grace_hopper):
    hopper = grace_hopper.resize(astronaut.size)
    assert image_variety([astronaut, hopper]) > 4 * DEFAULT_VARIETY_BOUND
    assert image_variety([astronaut, astronaut.rotate(3)]) > DEFAULT_VARIETY_BOUND
    shifted = astronaut.crop((4, 4, 512, 512)).resize(astronaut.size)
    assert image_variety([astronaut, shifted]) < DEFAULT_VARIETY_BOUND
    assert image_variety([astronaut, astronaut.filter(ImageFilter.GaussianBlur(2))]) < DEFAULT_VARIETY_BOUND


def test_photos_without_any_face_are_refused_naming_the_folder(tmp_path):
    folder = tmp_path / "no faces"
    folder.mkdir()
    paths = [save(noise(seed), folder / f"{seed}.png") for seed in range(2)]
    with pytest.raises(LikenessError, match="no face was found in any of the 2 training photos in .*no faces"):
        embed_photos(paths)
    with pytest.raises(LikenessError, match="no training photos"):
        embed_photos([])


def test_a_photo_without_a_face_is_left_out(tmp_path, photo_folder):
    photos = [*sorted(photo_folder.iterdir()), save(noise(3), tmp_path / "landscape.png")]
    reference = embed_photos(photos)
    assert len(reference.faces) == 2
    assert reference.photos_without_face == (str(tmp_path / "landscape.png"),)


def test_unreadable_sample_is_named(tmp_path, photo_folder):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(LikenessError, match="broken.png"):
        score_images({"p": [broken]}, [], sorted(photo_folder.iterdir()))
    with pytest.raises(LikenessError, match="no samples"):
        score_images({"p": []}, [], sorted(photo_folder.iterdir()))
