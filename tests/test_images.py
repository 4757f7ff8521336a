"""dreamcore.images: every photo a user might drop in the folder loads as upright 8-bit RGB or is refused
with an error that names the file."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamcore import images
from dreamcore.images import ImageLoadError, load_rgb_image, scan_images, to_rgb

ORIENTATION_TAG = 0x0112


def _gradient_rgb(width: int = 48, height: int = 32) -> Image.Image:
    """An image whose every pixel differs, so a wrong rotation or flip is visible."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def test_rgb_jpeg_loads_unchanged_in_size(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    _gradient_rgb().save(path, quality=95)
    image = load_rgb_image(path)
    assert image.mode == "RGB" and image.size == (48, 32)


# Pillow's transpose that undoes each EXIF orientation (the tag says how the stored pixels must be turned).
@pytest.mark.parametrize("orientation, stored_from_upright", [
    (3, Image.Transpose.ROTATE_180),
    (6, Image.Transpose.ROTATE_90),    # camera held clockwise: stored pixels are the upright turned left
    (8, Image.Transpose.ROTATE_270),
    (2, Image.Transpose.FLIP_LEFT_RIGHT),  # the mirrored tags (front cameras, some editors)
    (4, Image.Transpose.FLIP_TOP_BOTTOM),
    (5, Image.Transpose.TRANSPOSE),
    (7, Image.Transpose.TRANSVERSE),
])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, stored_from_upright) -> None:
    upright = _gradient_rgb()
    stored = upright.transpose(stored_from_upright)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    path = tmp_path / f"rotated_{orientation}.png"
    stored.save(path, exif=exif)
    loaded = load_rgb_image(path)
    assert loaded.size == upright.size
    assert np.array_equal(np.asarray(loaded), np.asarray(upright))


def test_rgba_is_composited_over_white(tmp_path: Path) -> None:
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., 0] = 200  # red under the transparent half: must not show through
    pixels[:, :2, 3] = 0  # left half fully transparent
    pixels[:, 2:, 3] = 255  # right half opaque red
    path = tmp_path / "cutout.png"
    Image.fromarray(pixels, "RGBA").save(path)
    rgb = np.asarray(load_rgb_image(path))
    assert (rgb[:, :2] == 255).all()
    assert (rgb[:, 2:] == [200, 0, 0]).all()


def test_la_half_transparent_is_blended_with_white(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    Image.fromarray(np.stack([np.zeros((2, 2)), np.full((2, 2), 128)], -1).astype(np.uint8), "LA").save(path)
    rgb = np.asarray(load_rgb_image(path))
    assert np.all(np.abs(rgb.astype(int) - 127) <= 1)  # black at ~50% alpha over white is mid grey


def test_palette_with_transparency_is_composited_over_white(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * (254 * 3))
    image.paste(1, (2, 0, 4, 4))
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    rgb = np.asarray(load_rgb_image(path))
    assert (rgb[:, :2] == 255).all()
    assert (rgb[:, 2:] == [10, 200, 30]).all()


def test_palette_without_transparency(tmp_path: Path) -> None:
    path = tmp_path / "palette.gif"
    _gradient_rgb().convert("P").save(path)
    assert load_rgb_image(path).mode == "RGB"


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    rgb = np.asarray(load_rgb_image(path)).astype(int)
    assert rgb.shape == (8, 8, 3)
    assert (rgb[..., 0] > 230).all() and (rgb[..., 1:] < 25).all()


def test_16_bit_greyscale_png_keeps_its_brightness(tmp_path: Path) -> None:
    values = np.array([[0, 32896, 65535, 65535]], dtype=np.uint16)
    path = tmp_path / "scan16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    rgb = np.asarray(load_rgb_image(path))
    assert rgb[0, :, 0].tolist() == [0, 128, 255, 255]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_32_bit_integer_tiff(tmp_path: Path) -> None:
    path = tmp_path / "deep.tif"
    Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), "I").save(path)
    rgb = np.asarray(load_rgb_image(path))
    assert rgb[0, :, 1].tolist() == [0, 100, 255]  # already in 0..255: kept, not stretched


def test_float_tiff_in_unit_range(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F").save(path)
    rgb = np.asarray(load_rgb_image(path))
    assert rgb[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("mode", ["L", "1", "YCbCr"])
def test_other_modes_become_rgb(mode: str) -> None:
    image = _gradient_rgb().convert(mode)
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == image.size


def test_zero_byte_file_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty") as caught:
        load_rgb_image(path)
    assert caught.value.path == path and str(path) in str(caught.value)
    assert "copy the photo again" in str(caught.value)


@pytest.mark.parametrize("suffix, fmt", [(".jpg", "JPEG"), (".png", "PNG")])
def test_truncated_file_is_refused(tmp_path: Path, suffix: str, fmt: str) -> None:
    whole = tmp_path / f"whole{suffix}"
    _gradient_rgb(256, 256).save(whole, fmt)
    truncated = tmp_path / f"cut{suffix}"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ImageLoadError, match="truncated or damaged") as caught:
        load_rgb_image(truncated)
    assert caught.value.path == truncated


def test_non_image_with_image_suffix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels")
    with pytest.raises(ImageLoadError, match="not an image format") as caught:
        load_rgb_image(path)
    assert "JPEG or PNG" in str(caught.value)


def test_missing_file_and_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_rgb_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match="folder, not a photo"):
        load_rgb_image(tmp_path)


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size: a few bytes that would decode to gigabytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n"
            + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_claiming(50_000, 50_000))
    with pytest.raises(ImageLoadError, match="over the limit") as caught:
        load_rgb_image(path)
    assert caught.value.path == path


def test_pixel_limit_is_the_callers(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    _gradient_rgb(100, 100).save(path)
    with pytest.raises(ImageLoadError, match="100x100 = 10,000 pixels is over the limit of 5,000"):
        load_rgb_image(path, max_pixels=5_000)
    assert load_rgb_image(path, max_pixels=10_000).size == (100, 100)


def test_image_between_pillow_warning_and_our_limit_raises_no_bomb_warning(tmp_path: Path) -> None:
    # Pillow warns above ~89 MP; our explicit limit decides instead. A 10000x9000 header passes the
    # 100 MP limit and fails only because its pixel data is missing.
    path = tmp_path / "claims90mp.png"
    path.write_bytes(_png_header_claiming(10_000, 9_000))
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        with pytest.raises(ImageLoadError, match="truncated or damaged"):
            load_rgb_image(path)
    assert not [r for r in records if issubclass(r.category, Image.DecompressionBombWarning)]


def test_heic_loads_through_pillow_heif(tmp_path: Path) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    path = tmp_path / "IMG_0001.HEIC"
    pillow_heif.from_pillow(_gradient_rgb(64, 48)).save(path, quality=90)
    image = load_rgb_image(path)
    assert image.mode == "RGB" and image.size == (64, 48)


def test_heic_without_pillow_heif_says_how_to_convert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pillow_heif(name, *args, **kwargs):
        if name == "pillow_heif":
            raise ImportError("No module named 'pillow_heif'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pillow_heif)
    monkeypatch.setattr(images, "_heif_registered", False)
    path = tmp_path / "IMG_0002.heic"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
    with pytest.raises(ImageLoadError, match="pillow-heif") as caught:
        load_rgb_image(path)
    assert "convert them to JPEG" in str(caught.value) and caught.value.path == path


def test_unicode_and_space_paths(tmp_path: Path) -> None:
    folder = tmp_path / "Fotos von Zoë" / "été 2024 📷"
    folder.mkdir(parents=True)
    path = folder / "ßeach day ü.jpg"
    _gradient_rgb().save(path)
    assert load_rgb_image(path).size == (48, 32)
    usable, skipped = scan_images(folder)
    assert usable == [path] and skipped == []


def test_unreadable_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.jpg"
    _gradient_rgb().save(path)
    real_open = Image.open

    def denied(fp, *args, **kwargs):
        if Path(fp) == path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(ImageLoadError, match="permission denied"):
        load_rgb_image(path)


def test_scan_sorts_usable_and_names_skipped_with_reasons(tmp_path: Path) -> None:
    _gradient_rgb().save(tmp_path / "b.png")
    _gradient_rgb().save(tmp_path / "A.JPG", "JPEG")
    _gradient_rgb().save(tmp_path / "c photo.webp")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "fake.png").write_text("hello")
    whole = tmp_path / "whole.jpeg"
    _gradient_rgb(400, 300).save(whole)
    (tmp_path / "cut.jpeg").write_bytes(whole.read_bytes()[:1500])
    whole.unlink()
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")
    _gradient_rgb().save(tmp_path / "._hidden.jpg", "JPEG")
    (tmp_path / "sub.jpg").mkdir()  # a folder with an image-like name is not a photo

    usable, skipped = scan_images(tmp_path)

    assert [path.name for path in usable] == ["A.JPG", "b.png", "c photo.webp"]
    reasons = {path.name: reason for path, reason in skipped}
    assert set(reasons) == {"cut.jpeg", "empty.jpg", "fake.png"}
    assert "empty" in reasons["empty.jpg"]
    assert "not an image" in reasons["fake.png"]
    assert "truncated" in reasons["cut.jpeg"]


def test_scan_refuses_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="does not exist"):
        scan_images(tmp_path / "missing")
    file_path = tmp_path / "photo.png"
    _gradient_rgb().save(file_path)
    with pytest.raises(ImageLoadError, match="not a folder"):
        scan_images(file_path)
