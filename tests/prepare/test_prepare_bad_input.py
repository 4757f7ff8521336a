"""Every bad input of issue 4: none crashes the run, each is named in the report, originals never change."""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from dreamcore import images
from dreamcore.fileio import OutputWriteError
from dreamcore.prepare import PrepareError, prepare_for_training, prepare_photos

from photo_helpers import folder_digest, side_by_side


def _png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims width x height pixels: a decompression bomb."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = b"IDAT" + zlib.compress(b"\x00" * 64)
    chunks = b"".join(struct.pack(">I", len(c) - 4) + c + struct.pack(">I", zlib.crc32(c))
                      for c in (ihdr, idat, b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunks


@pytest.fixture
def messy_folder(tmp_path: Path, astronaut: Image.Image, grace_hopper: Image.Image, no_face: Image.Image) -> Path:
    """A unicode folder name with spaces, two good photos and one of every bad kind."""
    folder = tmp_path / "Fotos für Zoë 📷"
    folder.mkdir()
    astronaut.save(folder / "astronaut in space é.png")
    grace_hopper.save(folder / "grace hopper.jpg", quality=95)
    no_face.save(folder / "coffee.jpg")
    (folder / "zero bytes.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a photo at all")
    whole = grace_hopper.tobytes()  # raw pixels are no JPEG
    (folder / "raw.png").write_bytes(whole[:1000])
    full = tmp_path / "full.jpg"
    grace_hopper.save(full, quality=95)
    (folder / "truncated.jpg").write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    (folder / "bomb.png").write_bytes(_png_claiming(40_000, 40_000))
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    return folder


def test_messy_folder_is_reported_photo_by_photo(messy_folder: Path, tmp_path: Path) -> None:
    before = folder_digest(messy_folder)
    out = tmp_path / "prepared set ü"
    report = prepare_photos(messy_folder, out, size=256)

    verdicts = {photo.source.name: photo for photo in report.photos}
    assert set(verdicts) == {"astronaut in space é.png", "grace hopper.jpg", "coffee.jpg", "zero bytes.jpg",
                             "notes.jpg", "raw.png", "truncated.jpg", "bomb.png"}
    assert {p.source.name for p in report.kept} == {"astronaut in space é.png", "grace hopper.jpg", "coffee.jpg"}
    # A usable photo is never refused for lacking a face; for a person it is kept with the reason stated.
    assert verdicts["coffee.jpg"].verdict == "no face: cropped around the salient region"
    assert any(w.startswith("no face found") for w in verdicts["coffee.jpg"].warnings)
    assert "empty (0 bytes)" in verdicts["zero bytes.jpg"].verdict
    assert "not an image" in verdicts["notes.jpg"].verdict
    assert "not an image" in verdicts["raw.png"].verdict
    assert "truncated or damaged" in verdicts["truncated.jpg"].verdict
    assert "over the limit" in verdicts["bomb.png"].verdict

    # Outputs: one PNG per kept photo under its own (unicode) name, the report and the contact sheet.
    assert sorted(p.name for p in out.iterdir()) == ["astronaut in space é.png", "coffee.png", "grace hopper.png",
                                                     "report"]
    data = json.loads((out / "report" / "prepare_report.json").read_text(encoding="utf-8"))
    assert data["kept_count"] == 3 and data["rejected_count"] == 5
    assert data["suggested_max_train_steps"] == 300
    named = {Path(p["source"]).name: p for p in data["photos"]}
    assert "truncated" in named["truncated.jpg"]["verdict"]
    sheet = Image.open(out / "report" / "contact_sheet.png")
    assert sheet.width >= 6 * 192 and sheet.height >= 2 * 192  # eight cells, six to a row

    # The table names every file and the set-level advice.
    table = report.format_table()
    for name in verdicts:
        assert name[:29] in table
    assert "guide advises 13-20" in table
    assert folder_digest(messy_folder) == before  # the originals are only read


def test_heic_photo_is_prepared_through_pillow_heif(tmp_path: Path, grace_hopper: Image.Image) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    photos = tmp_path / "iphone"
    photos.mkdir()
    # Half size keeps the HEVC encode quick; the face (~107 px) is still well above the detector's minimum.
    pillow_heif.from_pillow(grace_hopper.resize((256, 300))).save(photos / "IMG_4711.HEIC", quality=90)
    report = prepare_photos(photos, tmp_path / "out", size=128)
    assert report.photos[0].kept and report.photos[0].output.name == "IMG_4711.png"


def test_heic_without_pillow_heif_is_named_with_how_to_convert(tmp_path: Path, grace_hopper: Image.Image,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(path: Path) -> None:
        raise images.ImageLoadError(path, images.HEIC_ADVICE)

    monkeypatch.setattr(images, "_register_heif_opener", missing)
    photos = tmp_path / "iphone"
    photos.mkdir()
    grace_hopper.save(photos / "ok.jpg")
    (photos / "IMG_0001.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
    report = prepare_photos(photos, tmp_path / "out", size=128)
    heic = next(p for p in report.photos if p.source.suffix == ".heic")
    assert not heic.kept and "convert them to JPEG" in heic.verdict and "pillow-heif" in heic.verdict
    assert [p.source.name for p in report.kept] == ["ok.jpg"]


def test_read_only_output_folder_is_refused_cleanly(tmp_path: Path, grace_hopper: Image.Image,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    grace_hopper.save(photos / "grace.jpg")
    locked_parent = tmp_path / "locked"
    locked_parent.mkdir()
    if os.geteuid() == 0:
        # root ignores permission bits; make the folder behave as a read-only one does for a user.
        real_mkdtemp = tempfile.mkdtemp

        def read_only(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == locked_parent:
                raise PermissionError(13, "Permission denied", str(dir))
            return real_mkdtemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    locked_parent.chmod(0o555)
    try:
        with pytest.raises(OutputWriteError) as caught:
            prepare_photos(photos, locked_parent / "out", size=128)
    finally:
        locked_parent.chmod(0o755)
    message = str(caught.value)
    assert "locked" in message and "choose an output folder you can write to" in message
    assert list(locked_parent.iterdir()) == []  # nothing half-written


def test_existing_read_only_output_folder_is_refused(tmp_path: Path, grace_hopper: Image.Image,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    grace_hopper.save(photos / "grace.jpg")
    out = tmp_path / "out"
    prepare_photos(photos, out, size=128)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == out.resolve()
                        else real_access(path, mode))
    with pytest.raises(OutputWriteError, match="read-only"):
        prepare_photos(photos, out, size=128)


def test_output_folder_rules(tmp_path: Path, grace_hopper: Image.Image) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    grace_hopper.save(photos / "grace.jpg")
    with pytest.raises(PrepareError, match="is the photo folder"):
        prepare_photos(photos, photos)
    with pytest.raises(PrepareError, match="inside the output folder"):
        prepare_photos(photos, tmp_path)
    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "taxes.pdf").write_bytes(b"%PDF")
    with pytest.raises(PrepareError, match="did not write"):
        prepare_photos(photos, foreign)
    assert (foreign / "taxes.pdf").read_bytes() == b"%PDF"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(PrepareError, match="is a file"):
        prepare_photos(photos, a_file)
    # A subfolder of the photo folder is fine (the scan is not recursive).
    report = prepare_photos(photos, photos / "prepared", size=128)
    assert report.kept and (photos / "prepared" / "grace.png").is_file()


def test_rerun_replaces_an_earlier_prepare_whole(tmp_path: Path, astronaut: Image.Image,
                                                 grace_hopper: Image.Image) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    astronaut.save(photos / "astronaut.png")
    grace_hopper.save(photos / "grace.jpg")
    out = tmp_path / "out"
    prepare_photos(photos, out, size=128)
    (photos / "astronaut.png").unlink()
    prepare_photos(photos, out, size=128)
    assert sorted(p.name for p in out.iterdir()) == ["grace.png", "report"]  # no stale crop left behind


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 500}, "multiple of 8"),
    ({"size": 32}, "at least 64"),
    ({"framing": "closeup"}, "framing must be one of portrait, half, full"),
    ({"pad_mode": "mirror"}, "pad_mode must be one of"),
    ({"token": "two words"}, "one word"),
])
def test_bad_options_are_refused_before_any_work(tmp_path: Path, kwargs: dict, message: str) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    with pytest.raises(ValueError, match=message):
        prepare_photos(photos, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_missing_or_empty_photo_folder(tmp_path: Path) -> None:
    with pytest.raises(images.ImageLoadError, match="does not exist"):
        prepare_photos(tmp_path / "nope", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    with pytest.raises(PrepareError, match="no photos found"):
        prepare_photos(empty, tmp_path / "out")


def test_no_face_is_kept_and_several_faces_rejected_unless_asked_otherwise(tmp_path: Path, no_face: Image.Image,
                                                                          astronaut: Image.Image,
                                                                          grace_hopper: Image.Image) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    no_face.save(photos / "coffee.png")
    side_by_side(astronaut, grace_hopper.resize((300, 352))).save(photos / "two people.png")
    default = {p.source.name: p for p in prepare_photos(photos, tmp_path / "default", size=128).photos}
    assert default["coffee.png"].kept and default["coffee.png"].cropped_around == "salient region"
    assert not default["two people.png"].kept and "2 faces" in default["two people.png"].verdict
    # The Python API has no command-line flags: its reasons name none.
    assert "--" not in default["two people.png"].verdict

    strict = {p.source.name: p for p in
              prepare_photos(photos, tmp_path / "strict", size=128, require_face=True).photos}
    assert not strict["coffee.png"].kept and strict["coffee.png"].verdict.startswith("no face found")

    kept = {p.source.name: p for p in
            prepare_photos(photos, tmp_path / "lenient", size=128, keep_center_crop=True).photos}
    assert kept["coffee.png"].verdict == "no face: centre crop"
    assert kept["two people.png"].verdict == "2 faces: centre crop"
    for name in ("coffee.png", "two people.png"):
        assert kept[name].kept and kept[name].cropped_around == "centre"
        assert any("check that the crop shows the person" in warning for warning in kept[name].warnings)
        assert Image.open(kept[name].output).size == (128, 128)


def test_prepare_for_training_refuses_a_set_with_nothing_usable(tmp_path: Path, no_face: Image.Image,
                                                                 grace_hopper: Image.Image) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (300, 200), (40, 40, 40)).save(photos / "lens cap.png")
    with pytest.raises(PrepareError, match="none of the 1 photos could be used") as caught:
        prepare_for_training(photos, tmp_path / "out", size=128)
    assert "prepare_report.json" in str(caught.value) and "add readable photos of the subject" in str(caught.value)
    grace_hopper.save(photos / "grace.jpg")
    no_face.save(photos / "coffee.png")
    report = prepare_for_training(photos, tmp_path / "out", size=128)
    assert report.framing == "portrait" and [p.source.name for p in report.kept] == ["coffee.png", "grace.jpg"]
    assert report.suggested_max_train_steps == 200
    assert "blank" in report.rejected[0].verdict


def test_missing_detector_package_says_what_to_install(tmp_path: Path, grace_hopper: Image.Image,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from dreamcore.cli import main
    from dreamcore.prepare import faces

    def no_dlib():
        raise faces.DetectorUnavailableError("photo preparation needs the face detector from the 'dlib-bin' "
                                             "package: pip install dlib-bin")

    monkeypatch.setattr(faces, "_detector", no_dlib)
    photos = tmp_path / "photos"
    photos.mkdir()
    grace_hopper.save(photos / "grace.jpg")
    with pytest.raises(faces.DetectorUnavailableError, match="pip install dlib-bin"):
        prepare_photos(photos, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["prepare", str(photos), str(tmp_path / "out")]) == 2
    assert "pip install dlib-bin" in capsys.readouterr().err


def test_photos_sharing_a_name_get_distinct_crops(tmp_path: Path, grace_hopper: Image.Image) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    small = grace_hopper.resize((256, 300))
    small.save(photos / "IMG_1.jpg")
    small.save(photos / "IMG_1.png")
    small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "img_1.webp")
    report = prepare_photos(photos, tmp_path / "out", size=64)
    outputs = [photo.output.name for photo in report.photos]
    assert len({name.casefold() for name in outputs}) == 3
    assert outputs[0] == "IMG_1.png" and all(name.lower().startswith("img_1") for name in outputs)
    assert all(photo.output.is_file() for photo in report.photos)
