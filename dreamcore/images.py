"""Load the user's photos as 8-bit RGB, whatever a phone, camera or editor wrote.

One function reads one photo (:func:`load_rgb_image`), one lists a folder of them (:func:`scan_images`).
Both refuse bad files with an :class:`ImageLoadError` that names the file and says what to do, so the
training set and the photo preparation never stop on a raw Pillow traceback.

Why each step is there:
- EXIF orientation: phones store portrait photos as landscape pixels plus a "rotate me" tag; training on
  the raw pixels would teach the model sideways faces.
- Transparency is composited over white, not dropped: dropping alpha reveals whatever colour the editor
  left under transparent pixels (often black), which the model would learn as part of the person.
- A pixel limit guards against decompression bombs: a tiny file that decodes to gigabytes of pixels.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 100 MP: above the largest phone sensors (a 48 MP or 64 MP photo loads), far below what would exhaust
# memory (100 MP RGB is 300 MB decoded). Pillow's own bomb check is replaced by this explicit limit.
DEFAULT_MAX_PIXELS = 100_000_000

# Suffixes scan_images looks at. HEIC/HEIF are listed so they are reported (with how to convert them)
# rather than silently ignored when the optional pillow-heif package is missing.
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif",
    ".heic", ".heif", ".mpo",
})
HEIF_SUFFIXES = frozenset({".heic", ".heif"})

HEIC_ADVICE = (
    "HEIC/HEIF photos (the iPhone default) need the optional 'pillow-heif' package: "
    "pip install pillow-heif - or convert them to JPEG first (on the iPhone: Settings > Camera > Formats > "
    "Most Compatible; on a Mac: open in Preview and File > Export as JPEG; elsewhere: "
    "'heif-convert photo.heic photo.jpg' from libheif)"
)


class ImageLoadError(ValueError):
    """A photo could not be used; ``path`` is the file, the message says why and what to do."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


def load_rgb_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read one photo as an upright 8-bit RGB image, fully decoded (the file is closed on return).

    Raises :class:`ImageLoadError` for missing, empty, unreadable, truncated, oversized (more than
    ``max_pixels`` pixels) or unsupported files.
    """
    path = Path(path)
    with _open_checked(path, max_pixels) as image:
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError) as error:
            raise _damaged(path, error) from error
        return to_rgb(upright, path)


def scan_images(folder: str | Path,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[list[Path], list[tuple[Path, str]]]:
    """List the usable photos in ``folder`` (not its subfolders), sorted by file name.

    Returns ``(usable, skipped)``: ``skipped`` pairs each photo-named file that cannot be used with the
    reason. Hidden files (``.DS_Store``, ``._IMG_1.jpg``) and files whose suffix is not an image suffix
    (``notes.txt``) are ignored without a mention. Every candidate is decoded once (JPEGs at reduced scale,
    which still reads the whole stream) so truncated files are caught here, not halfway through training.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ImageLoadError(folder, "this photo folder does not exist; check the path")
    if not folder.is_dir():
        raise ImageLoadError(folder, "this is a file, not a folder; give the folder that holds the photos")
    try:
        entries = list(folder.iterdir())
    except PermissionError as error:
        raise ImageLoadError(folder, "this folder cannot be read (permission denied); "
                                     "fix its permissions or copy the photos elsewhere") from error
    candidates = sorted(
        (entry for entry in entries
         if not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_SUFFIXES and not entry.is_dir()),
        key=lambda entry: (entry.name.casefold(), entry.name),
    )
    usable: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for candidate in candidates:
        try:
            _check_decodes(candidate, max_pixels)
        except ImageLoadError as error:
            skipped.append((candidate, error.reason))
        else:
            usable.append(candidate)
    return usable, skipped


def to_rgb(image: Image.Image, path: str | Path = "<image>") -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited over white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info) \
            or (mode in ("L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_8bit(np.asarray(image), mode), mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:  # e.g. LAB or multi-band modes Pillow cannot map to RGB
        raise ImageLoadError(path, f"colour mode {mode!r} is not supported; "
                                   "save the photo as an RGB JPEG or PNG") from error


def _high_depth_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit, 32-bit integer and float greyscale to 0..255.

    The range is taken from the type, not the data, so a dark photo stays dark: 16-bit data spans
    0..65535; float data is taken as 0..1 when it fits there, 0..255 when it fits there. Only values
    outside every standard range (rare scientific TIFFs) are stretched to their own min..max.
    """
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if mode.startswith("I;16"):
        scaled = values / 257.0
    elif mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif low >= 0.0 and high <= 255.0:
        scaled = values
    elif mode == "I" and low >= 0.0 and high <= 65535.0:
        scaled = values / 257.0  # a 16-bit PNG that Pillow opened as 32-bit "I"
    else:
        scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """Open (not decode) ``path`` after checking it is a non-empty readable image within the pixel limit."""
    if not path.exists():
        raise ImageLoadError(path, "this file does not exist; check the path")
    if path.is_dir():
        raise ImageLoadError(path, "this is a folder, not a photo")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageLoadError(path, f"cannot read this file ({error.strerror or error})") from error
    if size == 0:
        raise ImageLoadError(path, "the file is empty (0 bytes), probably an interrupted copy or download; "
                                   "copy the photo again from its source")
    suffix = path.suffix.lower()
    if suffix in HEIF_SUFFIXES:
        _register_heif_opener(path)
    try:
        with warnings.catch_warnings():
            # The pixel limit below replaces Pillow's global bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except PermissionError as error:
        raise ImageLoadError(path, "permission denied; make the file readable "
                                   "(or copy it somewhere you own)") from error
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(path, None, max_pixels) from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(path, f"this is not an image format dreamcore can read"
                                   f"{' (' + suffix + ')' if suffix else ''}; "
                                   "save or export it as JPEG or PNG, or remove it from the folder") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise _damaged(path, error) from error
    pixels = image.width * image.height
    if pixels > max_pixels:
        image.close()
        raise _too_many_pixels(path, image.size, max_pixels)
    return image


def _check_decodes(path: Path, max_pixels: int) -> None:
    """Decode ``path`` once to prove it is whole; JPEGs decode at 1/8 scale, which still reads every byte."""
    with _open_checked(path, max_pixels) as image:
        try:
            if image.format in ("JPEG", "MPO"):
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise _damaged(path, error) from error


def _damaged(path: Path, error: BaseException) -> ImageLoadError:
    return ImageLoadError(path, f"the file is truncated or damaged ({error}); "
                                "copy the photo again from its source, or remove it from the folder")


def _too_many_pixels(path: Path, size: tuple[int, int] | None, max_pixels: int) -> ImageLoadError:
    described = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels" if size else "too many pixels"
    return ImageLoadError(path, f"{described} is over the limit of {max_pixels:,} pixels "
                                "(a decompression bomb or a huge scan); resize it below the limit first")


_heif_registered = False
_heif_lock = threading.Lock()  # photos may be loaded from several threads (dreamcore.prepare does)


def _register_heif_opener(path: Path) -> None:
    """Teach Pillow HEIC/HEIF through pillow-heif when it is installed; otherwise say how to convert."""
    global _heif_registered
    with _heif_lock:
        if _heif_registered:
            return
        try:
            import pillow_heif
        except ImportError as error:
            raise ImageLoadError(path, HEIC_ADVICE) from error
        pillow_heif.register_heif_opener()
        _heif_registered = True
