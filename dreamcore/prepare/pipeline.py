"""prepare_photos: a folder of phone photos in, a folder of square crops plus a report out.

Each photo is cropped around the face when one is found, otherwise around its salient region (or its
centre), and never rejected merely for lacking a face: the best crop tools (the WebUI's focal-point crop,
smartcrop) fall back the same way, and a dog, a mug or a person seen from behind are all worth training on.
For a person, a photo in which no face is found is kept with a warning saying so; ``require_face`` turns
that back into a rejection for those who want only face crops.
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from dreamcore.fileio import OutputWriteError, atomic_directory, atomic_write_text
from dreamcore.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageLoadError, load_rgb_image, scan_images
from dreamcore.prepare import quality
from dreamcore.prepare.contact_sheet import make_contact_sheet, save_png
from dreamcore.prepare.faces import DetectorUnavailableError, FaceSearch, find_main_face, require_detector
from dreamcore.prepare.framing import (FRAMINGS, PAD_MODES, CropPlan, plan_center_crop, plan_face_crop,
                                       plan_square_around, render_crop)
from dreamcore.prepare.report import (GUIDE_MAX_PHOTOS, GUIDE_MIN_PHOTOS, OBJECT_MIN_PHOTOS, STEPS_PER_PHOTO,
                                      PhotoResult, PrepareReport)
from dreamcore.prepare.saliency import salient_point
from dreamcore.prepare.sizing import SMALLEST_SIZE
from dreamcore.prepare.same_person import SamePersonCheck, check_same_person, face_patch
from dreamcore.prepare.subject import Subject
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


@dataclass(frozen=True)
class OptionHints:
    """Ways to keep a rejected photo, as the command that prints the report spells its options.

    A rejection may end with one; only the command knows its own option names (``prepare
    --keep-center-crop``, ``train --no-prepare_photos``), so it passes them in. Each is a clause that
    follows a semicolon ("or use --keep-center-crop to keep it as a centre crop"); empty, the default, names
    no option, for callers that have none (the Python API names its arguments itself, the WebUI tab).
    """

    keep_several_faces: str = ""  # for a photo of several people, when the subject is a person
    keep_without_face: str = ""  # for a photo without a face, rejected because ``require_face`` was asked


@dataclass(frozen=True)
class _Settings:
    """What every photo of one run is prepared with."""

    size: int
    size_reason: str
    framing: str
    keep_center_crop: bool
    require_face: bool
    look_for_faces: bool
    subject: Subject
    pad_mode: str
    max_pixels: int
    hints: OptionHints


@dataclass
class _Prepared:
    """One photo's outcome: the report line, the crop (None when rejected), a thumbnail for the contact
    sheet, and the face cut out for the same-person check (None unless the crop is around a face)."""

    result: PhotoResult
    crop: Image.Image | None
    thumbnail: Image.Image
    face_patch: Image.Image | None = None


def prepare_photos(in_dir: str | Path, out_dir: str | Path, size: int = 512, framing: str = "portrait",
                   keep_center_crop: bool = False, token: str | None = None, *, pad_mode: str = "blur",
                   max_pixels: int = DEFAULT_MAX_PIXELS, progress: Progress | None = None,
                   workers: int | None = None, subject: Subject | None = None, require_face: bool = False,
                   hints: OptionHints = OptionHints(), size_reason: str = "") -> PrepareReport:
    """Crop every photo in ``in_dir`` square and write the set to ``out_dir``.

    Where each square goes:

    - around the face, placed by ``framing``, when one face is found;
    - a photo of several people is rejected when ``subject`` is a person (a crop of one of them would teach
      the others too); ``keep_center_crop`` keeps it as a centre crop instead. For any other subject the
      faces are someone else's and the photo is cropped as one without a face;
    - without a face: the largest square around the photo's salient region (:mod:`dreamcore.prepare.saliency`),
      or its centre when nothing stands out or ``keep_center_crop`` asks for centre crops. Such a photo is
      kept: for a person with a warning that no face was found (a face in profile, turned away or small
      is missed; the photo may still be a good one), for any other subject as the normal case. Only when
      ``require_face`` is given is it rejected, as a user who wants face crops only expects.

    ``subject`` (from :func:`dreamcore.prepare.subject_from_prompts`) says what the photos show; None means
    a person. Faces are looked for in every case: a face found in a non-person set is cropped around (the
    word list cannot name every kind of person) and, when most photos show none, named in a warning as
    probably someone else's. For a subject that is not a person a missing face detector is reported instead
    of raised. Blank photos (one flat colour) and unreadable ones are rejected with the reason.

    ``out_dir`` receives one ``<name>.png`` per kept photo, plus ``report/prepare_report.json`` and
    ``report/contact_sheet.png``. It is replaced whole and atomically; an existing folder is only replaced
    when an earlier prepare wrote it. The originals are only read. Photos that cannot be used are listed in
    the report with the reason, ending with the way to keep them that ``hints`` names; only folder-level
    problems raise (:class:`PrepareError`, :class:`dreamcore.images.ImageLoadError` for the input folder,
    ``OutputWriteError`` when writing fails, :class:`DetectorUnavailableError` when a person's photos need
    the face detector and it is missing). ``progress(index, total, path)`` is called as each photo is done;
    ``workers`` photos are processed at once (default: one per CPU core, at most 4, which bounds memory to
    a few decoded photos). ``size_reason`` says why the crops are ``size`` pixels ("SDXL's training
    resolution"), for the report.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    _check_options(size, framing, pad_mode)
    token_check = check_token(token) if token is not None else None
    subject = subject or Subject(is_person=True)
    detector_missing = ""
    if subject.is_person or require_face:
        require_detector()  # fail before any work: a person's photos without face crops would train badly
    else:
        try:
            require_detector()
        except DetectorUnavailableError as error:  # reported in the set's warnings
            detector_missing = str(error)
    usable, skipped = scan_images(in_dir, max_pixels=max_pixels)
    if not usable and not skipped:
        raise PrepareError(f"{in_dir}: no photos found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
                           "put the photos directly in this folder")
    _check_output_folder(in_dir, out_dir)
    settings = _Settings(size=size, size_reason=size_reason, framing=framing, keep_center_crop=keep_center_crop,
                         require_face=require_face, look_for_faces=not detector_missing, subject=subject,
                         pad_mode=pad_mode, max_pixels=max_pixels, hints=hints)

    staging_area = contextlib.ExitStack()
    try:
        staging = staging_area.enter_context(atomic_directory(out_dir))
    except OSError as error:  # no folder can be made beside out_dir: read-only, missing drive, ...
        raise _write_error(out_dir, in_dir, f"could not write {out_dir}: {error.strerror or error}",
                           error.errno) from error
    try:
        with staging_area:
            report = _write_set(staging, in_dir, out_dir, usable, dict(skipped), settings, detector_missing,
                                token_check, progress, workers or min(MAX_WORKERS, os.cpu_count() or 1))
    except OutputWriteError as error:
        raise _write_error(out_dir, in_dir, str(error.strerror), error.errno) from error
    return report


def prepare_for_training(in_dir: str | Path, out_dir: str | Path, size: int = 512,
                         token: str | None = None, *, subject: Subject | None = None,
                         hints: OptionHints = OptionHints()) -> PrepareReport:
    """The trainer's entry: the guide's head-and-shoulders crops for a person, crops around the salient
    region for any other subject; raises :class:`PrepareError` when no photo is usable."""
    report = prepare_photos(in_dir, out_dir, size=size, framing="portrait", keep_center_crop=False, token=token,
                            subject=subject, hints=hints)
    for line in report.format_table().splitlines():
        logger.info(line)
    if not report.kept:
        raise PrepareError(f"{in_dir}: none of the {len(report.photos)} photos could be used (the reason for "
                           f"each is in {report.report_path}); add readable photos of the subject")
    return report


def _write_set(staging: Path, in_dir: Path, out_dir: Path, usable: list[Path], skipped: dict[Path, str],
               settings: _Settings, detector_missing: str, token_check: TokenCheck | None,
               progress: Progress | None, workers: int) -> PrepareReport:
    """Crop every photo into ``staging`` (the future ``out_dir``), then check the set and write the report."""
    sources = sorted([*usable, *skipped], key=lambda path: (path.name.casefold(), path.name))
    output_names = _output_names(usable)

    def crop_and_save(source: Path) -> _Prepared:
        if source in skipped:
            return _Prepared(PhotoResult(source=source, kept=False, verdict=skipped[source]), None, _placeholder())
        prepared = _prepare_one(source, settings)
        if prepared.crop is not None:
            prepared.result.output = out_dir / output_names[source]
            save_png(prepared.crop, staging / output_names[source])
        return prepared

    photos: list[PhotoResult] = []
    thumbnails: list[Image.Image] = []
    kept_crops: dict[int, tuple[Image.Image, tuple[float, float, float, float] | None]] = {}
    face_patches: dict[int, Image.Image] = {}
    # Photos are independent and the heavy parts (JPEG decode, resize, dlib, PNG encode) release the GIL,
    # so threads use every core; map() keeps the results in file-name order.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for index, prepared in enumerate(pool.map(crop_and_save, sources)):
            if progress is not None:
                progress(index, len(sources), prepared.result.source)
            if prepared.crop is not None:
                kept_crops[index] = (prepared.crop, prepared.result.face_box_in_crop)
            if prepared.face_patch is not None:
                face_patches[index] = prepared.face_patch
            photos.append(prepared.result)
            thumbnails.append(prepared.thumbnail)
    report = _assess_set(in_dir, out_dir, settings, photos, kept_crops, face_patches, detector_missing,
                         token_check)
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
    if not isinstance(size, int) or size < SMALLEST_SIZE or size % 8:
        problems.append(f"size must be a whole number of pixels, at least {SMALLEST_SIZE} and a multiple of 8 (the VAE "
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


def _prepare_one(source: Path, settings: _Settings) -> _Prepared:
    """Crop one photo: around its face, else around its salient region or centre (see prepare_photos)."""
    try:
        image = load_rgb_image(source, max_pixels=settings.max_pixels)
    except ImageLoadError as error:
        return _Prepared(PhotoResult(source=source, kept=False, verdict=error.reason), None, _placeholder())
    result = PhotoResult(source=source, kept=True, verdict="face crop")
    if quality.is_blank(image):
        result.kept = False
        result.verdict = "blank: the photo is one flat colour, with nothing to learn from; remove it"
        return _Prepared(result, None, _center_thumbnail(image))
    search = find_main_face(image) if settings.look_for_faces else FaceSearch(main=None, other_people=[],
                                                                              ignored=[])
    several_people = search.main is not None and bool(search.other_people)
    plan: CropPlan
    if search.main is not None and not several_people:
        plan = plan_face_crop(image.size, search.main, settings.framing)
        result.cropped_around = "face"
    elif several_people and settings.subject.is_person and not settings.keep_center_crop:
        result.kept = False
        result.verdict = (f"{1 + len(search.other_people)} faces: a photo of one person is needed (crop the "
                          f"others out{_clause(settings.hints.keep_several_faces)})")
        return _Prepared(result, None, _center_thumbnail(image))
    elif search.main is None and settings.require_face:
        result.kept = False
        result.verdict = ("no face found (the face must be upright and clearly visible"
                          f"{_clause(settings.hints.keep_without_face)})")
        return _Prepared(result, None, _center_thumbnail(image))
    else:
        plan = _plan_without_face(image, settings.keep_center_crop, result)
        how = "cropped around the salient region" if result.cropped_around == "salient region" else \
            "centre crop" if settings.keep_center_crop else "centre crop (nothing stands out)"
        faces = "no face" if search.main is None else f"{1 + len(search.other_people)} faces"
        result.verdict = f"{faces}: {how}" if settings.look_for_faces else how
        if settings.subject.is_person:
            result.warnings.append(f"{faces} found: check that the crop shows the person"
                                   + (" (a face in profile, turned away or small is not found)"
                                      if search.main is None else ""))
    if search.main is not None:
        face = search.main
        result.face_box = face.as_tuple()
        result.face_size = round(face.width)
        if result.cropped_around == "face":
            result.face_box_in_crop = tuple((value - origin) / plan.side for value, origin in
                                            zip((face.left, face.top, face.right, face.bottom),
                                                (plan.left, plan.top, plan.left, plan.top)))
            result.blur_score = quality.blur_score(image, face.as_tuple())
            if result.blur_score < quality.BLURRY_BELOW:
                result.warnings.append(f"the face looks blurry (sharpness {result.blur_score:.0f}, under "
                                       f"{quality.BLURRY_BELOW:.0f}); use a sharper photo")
            if search.ignored:
                result.warnings.append(f"{len(search.ignored)} smaller or unclear face(s) also found and "
                                       "ignored; the crop centres on the largest face")
    result.crop_box = plan.box
    result.upscale = settings.size / plan.side
    result.padded_fraction = plan.padded_fraction
    if result.upscale > MAX_UPSCALE:
        result.warnings.append(f"enlarged {result.upscale:.1f}x (more than {MAX_UPSCALE:.0f}x): the crop will be "
                               "soft; use a higher-resolution or closer photo")
    if plan.padded_fraction > MAX_PADDED_FRACTION:
        result.warnings.append(f"the photo is too tight for '{settings.framing}': {plan.padded_fraction:.0%} of "
                               f"the square is padding ({settings.pad_mode}); a wider shot gives real background")
    crop = render_crop(image, plan, settings.size, settings.pad_mode)
    result.perceptual_hash = f"{quality.perceptual_hash(crop):016x}"
    patch = face_patch(image, search.main) if result.cropped_around == "face" else None
    return _Prepared(result, crop, crop, patch)


def _plan_without_face(image: Image.Image, centre_only: bool, result: PhotoResult) -> CropPlan:
    """The largest square around the salient region, or the centred one (asked for, or nothing stands out)."""
    point = None if centre_only else salient_point(image)
    if point is None:
        result.cropped_around = "centre"
        return plan_center_crop(image.size)
    result.cropped_around = "salient region"
    result.salient_point = (round(point[0], 1), round(point[1], 1))
    return plan_square_around(image.size, point)


def _clause(hint: str) -> str:
    return f"; {hint}" if hint else ""


def _assess_set(in_dir: Path, out_dir: Path, settings: _Settings, photos: list[PhotoResult],
                kept_crops: dict[int, tuple[Image.Image, tuple[float, float, float, float] | None]],
                face_patches: dict[int, Image.Image], detector_missing: str,
                token_check: TokenCheck | None) -> PrepareReport:
    """Checks across photos: count, faces in a set that is not of a person, one person throughout,
    near-duplicates, variety of backgrounds and clothing, token."""
    warnings: list[str] = []
    subject = settings.subject
    kept_indices = [i for i in range(len(photos)) if photos[i].kept]
    count = len(kept_indices)
    if count == 0:
        warnings.append("no photo could be used; see the reasons above")
    elif subject.is_person and count < GUIDE_MIN_PHOTOS:
        warnings.append(f"only {count} photo(s) kept; the guide advises {GUIDE_MIN_PHOTOS}-{GUIDE_MAX_PHOTOS} "
                        "(different clothes, backgrounds and expressions)")
    elif subject.is_person and count > GUIDE_MAX_PHOTOS:
        warnings.append(f"{count} photos kept; the guide advises {GUIDE_MIN_PHOTOS}-{GUIDE_MAX_PHOTOS}: more "
                        f"photos mean longer training ({STEPS_PER_PHOTO} steps each) rather than a better likeness")
    elif not subject.is_person and count < OBJECT_MIN_PHOTOS:
        warnings.append(f"only {count} photo(s) kept; DreamBooth learns a subject from {OBJECT_MIN_PHOTOS}-5 "
                        "photos or more, taken from different sides and in different places")
    if detector_missing:
        warnings.append(f"faces were not looked for ({detector_missing}); every photo is cropped around its "
                        "salient region")

    face_cropped = [i for i in kept_indices if photos[i].cropped_around == "face"]
    if not subject.is_person and face_cropped and 2 * len(face_cropped) <= count:
        # Most photos show no face, so the faces are probably someone else's: a photo of the owner among
        # the cat photos would otherwise be learned as the cat.
        names = ", ".join(photos[i].source.name for i in face_cropped)
        for i in face_cropped:
            photos[i].warnings.append(f"a face was found and the crop is around it, but the subject is "
                                      f"{subject.name}; check that the photo shows the subject")
        warnings.append(f"a face was found in {len(face_cropped)} of {count} photos ({names}), although the "
                        f"subject is {subject.name}; they are cropped around the face: remove the ones that do "
                        "not show the subject")
    same_person = None
    if len(face_patches) >= 2 and (subject.is_person or 2 * len(face_cropped) > count):
        same_person = check_same_person({photos[i].source.name: patch for i, patch in face_patches.items()})
        warnings.extend(_same_person_warnings(same_person, photos))

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
    return PrepareReport(in_dir=in_dir, out_dir=out_dir, size=settings.size, size_reason=settings.size_reason,
                         framing=settings.framing, photos=photos, warnings=warnings,
                         duplicate_groups=[[photos[i].source.name for i in g] for g in duplicate_groups],
                         background_groups=named_groups["backgrounds"], clothing_groups=named_groups["clothing"],
                         token_check=token_check, subject=subject.name, subject_is_person=subject.is_person,
                         same_person_checked=None if same_person is None else same_person.checked,
                         person_groups=same_person.groups if same_person is not None else [],
                         different_person=same_person.different if same_person is not None else [])


def _same_person_warnings(check: SamePersonCheck, photos: list[PhotoResult]) -> list[str]:
    """The set's warnings for the same-person check, and a note on each photo that looks like someone else."""
    if not check.checked:
        return ["not checked whether every photo shows the same person: that needs the optional face-identity "
                "models (pip install 'dreamcore[faces]')"]
    if not check.different:
        return []
    by_name = {photo.source.name: photo for photo in photos}
    if check.has_majority:
        for name in check.different:
            by_name[name].warnings.append("looks like a different person than most photos")
        looks = "looks" if len(check.different) == 1 else "look"
        return [f"{', '.join(check.different)} {looks} like a different person than the other "
                f"{len(check.groups[0])} photos; DreamBooth learns everyone in the photos as one subject: "
                "remove them, or train them as a concept of their own"]
    for name in check.different:
        by_name[name].warnings.append("the faces in this set look like several different people")
    groups = "; ".join(", ".join(group) for group in check.groups)
    return [f"the faces look like {len(check.groups)} different people ({groups}); DreamBooth learns everyone "
            "in the photos as one subject: keep the photos of one person"]


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
