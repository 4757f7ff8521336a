"""What prepare found, per photo and for the set: a dataclass, its JSON form and a printed table."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamcore.prepare.token import TokenCheck

# The guide: 13-20 photos; max_train_steps = photos x 100.
GUIDE_MIN_PHOTOS = 13
GUIDE_MAX_PHOTOS = 20
STEPS_PER_PHOTO = 100
# A subject that is not a person: the DreamBooth paper learns one from "just a few (3-5) images".
OBJECT_MIN_PHOTOS = 3
VERDICT_COLUMN_MAX = 48


@dataclass
class PhotoResult:
    source: Path
    kept: bool
    verdict: str  # why kept ("face crop", "no face: cropped around the salient region") or why rejected
    output: Path | None = None
    warnings: list[str] = field(default_factory=list)
    cropped_around: str | None = None  # "face", "salient region" or "centre"; None when rejected
    salient_point: tuple[float, float] | None = None  # in the upright photo's pixels, when cropped around it
    face_box: tuple[int, int, int, int] | None = None  # in the upright photo's pixels
    face_size: int | None = None  # face box width in the photo's pixels
    face_box_in_crop: tuple[float, float, float, float] | None = None  # fractions of the crop side
    crop_box: tuple[float, float, float, float] | None = None  # may reach outside the photo (padded)
    upscale: float | None = None  # output size / crop side in the photo; > 1 means enlarged
    padded_fraction: float = 0.0
    blur_score: float | None = None
    perceptual_hash: str | None = None
    duplicate_group: int | None = None


@dataclass
class PrepareReport:
    in_dir: Path
    out_dir: Path
    size: int
    framing: str
    photos: list[PhotoResult]
    warnings: list[str]  # about the whole set
    duplicate_groups: list[list[str]]
    background_groups: list[list[str]]
    clothing_groups: list[list[str]]
    token_check: TokenCheck | None
    report_path: Path | None = None
    contact_sheet_path: Path | None = None
    subject: str = "a person"  # as messages name it: 'a person' or the prompt that named the subject
    subject_is_person: bool = True
    same_person_checked: bool | None = None  # None: not applicable (fewer than two face crops)
    person_groups: list[list[str]] = field(default_factory=list)  # photos by the person they show
    different_person: list[str] = field(default_factory=list)  # photos that look like someone else
    size_reason: str = ""  # why the crops are ``size`` pixels: "SDXL's training resolution"

    @property
    def kept(self) -> list[PhotoResult]:
        return [photo for photo in self.photos if photo.kept]

    @property
    def rejected(self) -> list[PhotoResult]:
        return [photo for photo in self.photos if not photo.kept]

    @property
    def suggested_max_train_steps(self) -> int:
        return len(self.kept) * STEPS_PER_PHOTO

    def to_dict(self) -> dict[str, Any]:
        data = _jsonable(dataclasses.asdict(self))
        data["kept_count"] = len(self.kept)
        data["rejected_count"] = len(self.rejected)
        data["suggested_max_train_steps"] = self.suggested_max_train_steps
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def format_table(self) -> str:
        """A fixed-width table for the terminal, then the set-level findings."""
        verdicts = [("KEPT " if photo.kept else "REJECTED ") + photo.verdict for photo in self.photos]
        # Wide enough for a kept photo's verdict ("KEPT no face: cropped around the salient region"); the
        # reasons for a rejection, which run longer, are in the notes column in full.
        width = max([len("verdict")] + [len(v) for v, p in zip(verdicts, self.photos) if p.kept])
        width = min(max(width, 28), VERDICT_COLUMN_MAX)
        header = f"{'photo':32} {'verdict':{width}} {'face px':>7} {'upscale':>7} {'blur':>6}  notes"
        lines = [header, "-" * len(header)]
        for photo, verdict in zip(self.photos, verdicts):
            name = photo.source.name if len(photo.source.name) <= 32 else photo.source.name[:29] + "..."
            verdict = verdict if len(verdict) <= width else verdict[:width - 3] + "..."
            face = f"{photo.face_size}" if photo.face_size else "-"
            upscale = f"{photo.upscale:.2f}x" if photo.upscale else "-"
            blur = f"{photo.blur_score:.0f}" if photo.blur_score is not None else "-"
            notes = "; ".join(photo.warnings) if photo.kept else photo.verdict
            lines.append(f"{name:32} {verdict:{width}} {face:>7} {upscale:>7} {blur:>6}  {notes}")
        lines.append("")
        lines.append(f"{len(self.kept)} kept, {len(self.rejected)} rejected; suggested max_train_steps = "
                     f"{len(self.kept)} x {STEPS_PER_PHOTO} = {self.suggested_max_train_steps}")
        if not self.subject_is_person:
            lines.append(f"subject: {self.subject} (not a person): crops around the salient region, or around a "
                         "face where one is found")
        else:
            lines.append(f"subject: {self.subject}" + ("" if self.subject == "a person" else " (a person)")
                         + ": crops around the face")
        lines.append(f"size: {self.size} px" + (f", {self.size_reason}" if self.size_reason else ""))
        lines += [f"warning: {warning}" for warning in self.warnings]
        if self.token_check is not None:
            lines.append(f"token: {self.token_check.message}")
            if self.token_check.suggestions:
                lines.append(f"       single rare tokens to use instead: {', '.join(self.token_check.suggestions)}")
        if self.report_path:
            lines.append(f"report: {self.report_path}")
        if self.contact_sheet_path:
            lines.append(f"contact sheet: {self.contact_sheet_path}")
        return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, float):
        return round(value, 4)
    return value
