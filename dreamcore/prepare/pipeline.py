"""prepare_photos: a folder of phone photos in, a folder of square face crops plus a report out."""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from PIL import Image

from dreamcore.fileio import OutputWriteError, atomic_directory, atomic_write_text
from dreamcore.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageLoadError, load_rgb_image, scan_images
from dreamcore.prepare import quality
from dreamcore.prepare.contact_sheet import make_contact_sheet, save_png
from dreamcore.prepare.faces import find_main_face, require_detector
from dreamcore.prepare.framing import FRAMINGS, PAD_MODES, CropPlan, plan_center_crop, plan_face_crop, render_crop
from dreamcore.prepare.report import GUIDE_MAX_PHOTOS, GUIDE_MIN_PHOTOS, STEPS_PER_PHOTO, PhotoResult, PrepareReport
from dreamcore.prepare.token import TokenCheck, check_token

logger = logging.getLogger(__name__)

REPORT_DIR = "report"  # inside the output folder; a subfolder, so trainers reading the folder skip it
REPORT_NAME = "prepare_report.json"
CONTACT_SHEET_NAME = "contact_sheet.png"
MAX_UPSCALE = 2.0
MAX_PADDED_FRACTION = 0.02
MAX_WORKERS = 4  # each holds one decoded photo (a 12 MP photo is ~36 MB, ~100 MB at the peak)

Progress = Callable[[int, int, Path], None]


class PrepareError(ValueError):
    """The input or output folder cannot be used; the message names it and says what to do."""


def prepare_photos(in_dir: str | Path, out_dir: str | Path, size: int = 512, framing: str = "portrait",
                   keep_center_crop: bool = False, token: str | None = None, *, pad_mode: str = "blur",
                   max_pixels: int = DEFAULT_MAX_PIXELS, progress: Progress | None = None,
                   workers: int | None = None) -> PrepareReport:
    """Crop every photo in ``in_dir`` square around the face and write the set to ``out_dir``.

    ``out_dir`` receives one ``<name>.png`` per kept photo, plus ``report/prepare_report.json`` and
    ``report/contact_sheet.png``. It is replaced whole and atomically; an existing folder is only replaced
    when an earlier prepare wrote it. The originals are only read. Photos that cannot be used are listed in
    the report with the reason; only folder-level problems raise (:class:`PrepareError`,
    :class:`dreamcore.images.ImageLoadError` for the input folder, ``OutputWriteError`` when writing fails).
    ``progress(index, total, path)`` is called as each photo is done; ``workers`` photos are processed at
    once (default: one per CPU core, at most 4, which bounds memory to a few decoded photos).
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    _check_options(size, framing, pad_mode)
    token_check = check_token(token) if token is not None else None
    require_detector()  # fail before any work when the detector package is missing
    usable, skipped = scan_images(in_dir, max_pixels=max_pixels)
    if not usable and not skipped:
        raise PrepareError(f"{in_dir}: no photos found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
                           "put the photos directly in this folder")
    _check_output_folder(in_dir, out_dir)

    staging_area = contextlib.ExitStack()
    try:
        staging = staging_area.enter_context(atomic_directory(out_dir))
    except OSError as error:  # no folder can be made beside out_dir: read-only, missing drive, ...
        raise _write_error(out_dir, in_dir, f"could not write {out_dir}: {error.strerror or error}",
                           error.errno) from error
    try:
        with staging_area:
            report = _write_set(staging, in_dir, out_dir, usable, dict(skipped), size, framing,
                                keep_center_crop, pad_mode, max_pixels, token_check, progress,
                                workers or min(MAX_WORKERS, os.cpu_count() or 1))
    except OutputWriteError as error:
        raise _write_error(out_dir, in_dir, str(error.strerror), error.errno) from error
    return report


def prepare_for_training(in_dir: str | Path, out_dir: str | Path, size: int = 512,
                         token: str | None = None) -> PrepareReport:
    """The trainer's entry: the guide's head-and-shoulders crops; raises when no photo is usable."""
    report = prepare_photos(in_dir, out_dir, size=size, framing="portrait", keep_center_crop=False, token=token)
    for line in report.format_table().splitlines():
        logger.info(line)
    if not report.kept:
        raise PrepareError(f"{in_dir}: none of the {len(report.photos)} photos could be used "
                           f"(see {report.report_path}); add photos where one face is clearly visible")
    return report


def _write_set(staging: Path, in_dir: Path, out_dir: Path, usable: list[Path], skipped: dict[Path, str],
               size: int, framing: str, keep_center_crop: bool, pad_mode: str, max_pixels: int,
               token_check: TokenCheck | None, progress: Progress | None, workers: int) -> PrepareReport:
    """Crop every photo into ``staging`` (the future ``out_dir``), then check the set and write the report."""
    sources = sorted([*usable, *skipped], key=lambda path: (path.name.casefold(), path.name))
    output_names = _output_names(usable)

    def crop_and_save(source: Path) -> tuple[PhotoResult, Image.Image | None, Image.Image]:
        if source in skipped:
            return PhotoResult(source=source, kept=False, verdict=skipped[source]), None, _placeholder()
        result, crop, thumbnail = _prepare_one(source, size, framing, keep_center_crop, pad_mode, max_pixels)
        if crop is not None:
            result.output = out_dir / output_names[source]
            save_png(crop, staging / output_names[source])
        return result, crop, thumbnail

    photos: list[PhotoResult] = []
    thumbnails: list[Image.Image] = []
    kept_crops: dict[int, tuple[Image.Image, tuple[float, float, float, float] | None]] = {}
    # Photos are independent and the heavy parts (JPEG decode, resize, dlib, PNG encode) release the GIL,
    # so threads use every core; map() keeps the results in file-name order.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for index, (result, crop, thumbnail) in enumerate(pool.map(crop_and_save, sources)):
            if progress is not None:
                progress(index, len(sources), result.source)
            if crop is not None:
                kept_crops[index] = (crop, result.face_box_in_crop)
            photos.append(result)
            thumbnails.append(thumbnail)
    report = _assess_set(in_dir, out_dir, size, framing, photos, kept_crops, token_check)
    report.report_path = out_dir / REPORT_DIR / REPORT_NAME
    report.contact_sheet_path = out_dir / REPORT_DIR / CONTACT_SHEET_NAME
    # Drawn after the set checks, which add near-duplicate warnings to the captions.
    sheet_entries = [(thumbnail, photo.source.name, _short_verdict(photo),
                      "rejected" if not photo.kept else "warning" if photo.warnings else "kept")
                     for thumbnail, photo in zip(thumbnails, photos)]
    save_png(make_contact_sheet(sheet_entries), staging / REPORT_DIR / CONTACT_SHEET_NAME)
    atomic_write_text(staging / REPORT_DIR / REPORT_NAME, report.to_json())
    return report


def _write_error(out_dir: Path, in_dir: Path, what: str, errno: int | None) -> OutputWriteError:
    return OutputWriteError(errno, f"{what}; choose an output folder you can write to "
                                f"(nothing was written to {out_dir}; the photos in {in_dir} were not changed)")


def _check_options(size: int, framing: str, pad_mode: str) -> None:
    problems = []
    if not isinstance(size, int) or size < 64 or size % 8:
        problems.append(f"size must be a whole number of pixels, at least 64 and a multiple of 8 (the VAE "
                        f"works in 8-pixel blocks), not {size!r}; the guide uses 512")
    if framing not in FRAMINGS:
        problems.append(f"framing must be one of {', '.join(FRAMINGS)}, not {framing!r}")
    if pad_mode not in PAD_MODES:
        problems.append(f"pad_mode must be one of {', '.join(PAD_MODES)}, not {pad_mode!r}")
    if problems:
        raise PrepareError("; ".join(problems))


def _check_output_folder(in_dir: Path, out_dir: Path) -> None:
    source, target = in_dir.resolve(), out_dir.resolve()
    if target == source:
        raise PrepareError(f"{out_dir}: the output folder is the photo folder; choose another one "
                           "(the originals are never overwritten)")
    if source.is_relative_to(target):
        raise PrepareError(f"{out_dir}: the photo folder {in_dir} is inside the output folder, which prepare "
                           "replaces whole; choose an output folder outside it")
    if target.exists() and not target.is_dir():
        raise PrepareError(f"{out_dir}: this is a file; give a folder for the prepared photos")
    if target.is_dir() and any(target.iterdir()) and not (target / REPORT_DIR / REPORT_NAME).is_file():
        raise PrepareError(f"{out_dir}: this folder already holds files that prepare did not write, and "
                           "prepare replaces its output folder whole; choose a new or empty folder")
    if target.is_dir() and not os.access(target, os.W_OK):
        raise OutputWriteError(13, f"{out_dir}: the output folder is read-only; choose a folder you can "
                                   f"write to (the photos in {in_dir} were not changed)")


def _output_names(sources: list[Path]) -> dict[Path, str]:
    """``<stem>.png``, made unique ignoring case (IMG_1.jpg + IMG_1.png, or a.jpg + A.jpg, must not
    overwrite each other on Windows or macOS): later ones get ``-2``, ``-3``, ..."""
    names: dict[Path, str] = {}
    taken: set[str] = set()
    for source in sources:
        name, number = f"{source.stem}.png", 1
        while name.casefold() in taken:
            number += 1
            name = f"{source.stem}-{number}.png"
        taken.add(name.casefold())
        names[source] = name
    return names


def _prepare_one(source: Path, size: int, framing: str, keep_center_crop: bool, pad_mode: str,
                 max_pixels: int) -> tuple[PhotoResult, Image.Image | None, Image.Image]:
    """Crop one photo. Returns the result, the crop (None when rejected) and a thumbnail for the sheet."""
    try:
        image = load_rgb_image(source, max_pixels=max_pixels)
    except ImageLoadError as error:
        return PhotoResult(source=source, kept=False, verdict=error.reason), None, _placeholder()
    search = find_main_face(image)
    result = PhotoResult(source=source, kept=True, verdict="face crop")
    plan: CropPlan
    if search.main is None or search.other_people:
        problem = ("no face found" if search.main is None
                   else f"{1 + len(search.other_people)} faces: a photo of one person is needed")
        if not keep_center_crop:
            result.kept = False
            result.verdict = problem + (" (the face must be upright and clearly visible; or use "
                                        "--keep-center-crop)" if search.main is None
                                        else " (crop the others out; or use --keep-center-crop)")
            return result, None, _center_thumbnail(image)
        result.verdict = f"centre crop: {problem}"
        result.warnings.append(f"{problem}; kept as a centre crop, check that it shows the person")
        plan = plan_center_crop(image.size)
    else:
        plan = plan_face_crop(image.size, search.main, framing)
    if search.main is not None:
        face = search.main
        result.face_box = face.as_tuple()
        result.face_size = round(face.width)
        result.face_box_in_crop = tuple((value - origin) / plan.side for value, origin in
                                        zip((face.left, face.top, face.right, face.bottom),
                                            (plan.left, plan.top, plan.left, plan.top)))
        result.blur_score = quality.blur_score(image, face.as_tuple())
        if result.blur_score < quality.BLURRY_BELOW:
            result.warnings.append(f"the face looks blurry (sharpness {result.blur_score:.0f}, under "
                                   f"{quality.BLURRY_BELOW:.0f}); use a sharper photo")
        if search.ignored:
            result.warnings.append(f"{len(search.ignored)} smaller or unclear face(s) also found and ignored; "
                                   "the crop centres on the largest face")
    result.crop_box = plan.box
    result.upscale = size / plan.side
    result.padded_fraction = plan.padded_fraction
    if result.upscale > MAX_UPSCALE:
        result.warnings.append(f"enlarged {result.upscale:.1f}x (more than {MAX_UPSCALE:.0f}x): the crop will be "
                               "soft; use a higher-resolution or closer photo")
    if plan.padded_fraction > MAX_PADDED_FRACTION:
        result.warnings.append(f"the photo is too tight for '{framing}': {plan.padded_fraction:.0%} of the "
                               f"square is padding ({pad_mode}); a wider shot gives real background")
    crop = render_crop(image, plan, size, pad_mode)
    result.perceptual_hash = f"{quality.perceptual_hash(crop):016x}"
    return result, crop, crop


def _assess_set(in_dir: Path, out_dir: Path, size: int, framing: str, photos: list[PhotoResult],
                kept_crops: dict[int, tuple[Image.Image, tuple[float, float, float, float] | None]],
                token_check: TokenCheck | None) -> PrepareReport:
    """Checks across photos: count, near-duplicates, variety of backgrounds and clothing, token."""
    warnings: list[str] = []
    kept_indices = [i for i in range(len(photos)) if photos[i].kept]
    count = len(kept_indices)
    if count == 0:
        warnings.append("no photo could be used; see the reasons above")
    elif count < GUIDE_MIN_PHOTOS:
        warnings.append(f"only {count} photo(s) kept; the guide advises {GUIDE_MIN_PHOTOS}-{GUIDE_MAX_PHOTOS} "
                        "(different clothes, backgrounds and expressions)")
    elif count > GUIDE_MAX_PHOTOS:
        warnings.append(f"{count} photos kept; the guide advises {GUIDE_MIN_PHOTOS}-{GUIDE_MAX_PHOTOS}: more "
                        f"photos mean longer training ({STEPS_PER_PHOTO} steps each) rather than a better likeness")

    hashes = [int(photos[i].perceptual_hash, 16) for i in kept_indices]
    duplicate_groups = [[kept_indices[k] for k in group] for group in quality.near_duplicate_groups(hashes)]
    for number, group in enumerate(duplicate_groups, start=1):
        names = [photos[i].source.name for i in group]
        for i in group:
            photos[i].duplicate_group = number
            others = ", ".join(name for name in names if name != photos[i].source.name)
            photos[i].warnings.append(f"near-duplicate of {others}")
        warnings.append(f"near-duplicates: {', '.join(names)}; keep one of them, a repeated shot is learned "
                        "more strongly than the others")

    face_crops = [i for i in kept_indices if kept_crops[i][1] is not None]
    histograms = [quality.outside_face_histograms(*kept_crops[i]) for i in face_crops]
    named_groups = {}
    for part, column in (("backgrounds", 0), ("clothing", 1)):
        groups = [[face_crops[k] for k in group]
                  for group in quality.lookalike_groups([pair[column] for pair in histograms])]
        named_groups[part] = [[photos[i].source.name for i in group] for group in groups]
        if len(face_crops) >= 3 and groups and len(groups[0]) * 2 > len(face_crops):
            warnings.append(f"{len(groups[0])} of {len(face_crops)} photos have alike {part} "
                            f"({', '.join(named_groups[part][0])}); the model may learn them as part of the "
                            "person - vary " + ("the places" if part == "backgrounds" else "the outfits"))
    return PrepareReport(in_dir=in_dir, out_dir=out_dir, size=size, framing=framing, photos=photos,
                         warnings=warnings,
                         duplicate_groups=[[photos[i].source.name for i in g] for g in duplicate_groups],
                         background_groups=named_groups["backgrounds"], clothing_groups=named_groups["clothing"],
                         token_check=token_check)


def _short_verdict(result: PhotoResult) -> str:
    if not result.kept:
        return "REJECTED: " + result.verdict
    if result.warnings:
        return "KEPT, " + result.warnings[0]
    return "KEPT: " + result.verdict


def _placeholder() -> Image.Image:
    return Image.new("RGB", (64, 64), (200, 200, 200))


def _center_thumbnail(image: Image.Image) -> Image.Image:
    plan = plan_center_crop(image.size)
    return image.resize((192, 192), Image.Resampling.BILINEAR, box=plan.box, reducing_gap=2.0)
