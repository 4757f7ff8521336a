"""From the tab's raw values to a TrainConfig: the one place where UI input is checked.

The tab shows every TrainConfig field. A few are filled by the main controls (base model, photos,
token and class, job name); all others appear under "Advanced", grouped and labelled from the
dataclass's metadata, so a new field shows up in the tab without touching it.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dreamcore.fileio import atomic_directory
from dreamcore.config import CHOSEN_KEY, ConfigError, TrainConfig, coerce_field_value, config_fields, \
    field_is_optional, field_type
from dreamcore.presets import preset_names, preset_overrides

# Fields the main controls set: (field, the control that sets it).
MAIN_FIELDS = {
    "pretrained_model_name_or_path": "Base model",
    "instance_data_dir": "Photos",
    "instance_prompt": "Token and class",
    "class_prompt": "Token and class",
    "output_dir": "the job's folder",
    "model_name": "Model name",
}
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9]+")


def advanced_fields() -> list[dataclasses.Field]:
    """TrainConfig fields under "Advanced", in declaration order."""
    return [f for f in config_fields() if f.name not in MAIN_FIELDS]


def advanced_groups() -> dict[str, list[dataclasses.Field]]:
    groups: dict[str, list[dataclasses.Field]] = {}
    for f in advanced_fields():
        groups.setdefault(f.metadata["group"], []).append(f)
    return groups


def default_ui_value(f: dataclasses.Field) -> Any:
    """A field's default as its control shows it (optional numbers are text boxes; empty = None)."""
    default = TrainConfig().to_dict()[f.name]
    return ui_value(f, default)


# An optional switch (empty = dreamcore decides) shows as a choice of three, not as a checkbox that can only
# say on or off.
OPTIONAL_SWITCH = {"auto": None, "on": True, "off": False}


def is_optional_switch(f: dataclasses.Field) -> bool:
    return field_is_optional(f) and field_type(f) is bool


def ui_value(f: dataclasses.Field, value: Any) -> Any:
    if field_is_optional(f) and field_type(f) in (int, float):
        return "" if value is None else str(value)
    if is_optional_switch(f):
        return next(label for label, meaning in OPTIONAL_SWITCH.items() if meaning is value)
    return value


def uses_text_box(f: dataclasses.Field) -> bool:
    return field_type(f) is str or (field_is_optional(f) and field_type(f) in (int, float))


def parse_ui_value(f: dataclasses.Field, raw: Any) -> Any:
    """A control's value converted to the field's type; ValueError says what is wrong."""
    kind = field_type(f)
    if is_optional_switch(f) and isinstance(raw, str):
        if raw not in OPTIONAL_SWITCH:
            raise ValueError(f"{raw!r} is not one of {', '.join(OPTIONAL_SWITCH)}")
        raw = OPTIONAL_SWITCH[raw]
    if isinstance(raw, str) and kind in (int, float):
        text = raw.strip()
        if not text:
            raw = None
        else:
            try:
                raw = int(text) if kind is int else float(text)
            except ValueError:
                raise ValueError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}"
                                 + ("; leave it empty for the default" if field_is_optional(f) else "")) from None
    return coerce_field_value(f, raw)


@dataclass
class TabForm:
    """What the person entered in the tab (raw control values)."""

    base_model: str = ""
    photos_dir: str = ""
    uploaded_photos: list[str] = field(default_factory=list)  # paths of uploaded files
    token: str = ""
    class_word: str = "person"
    job_name: str = ""
    advanced: dict[str, Any] = field(default_factory=dict)  # field name -> raw control value
    preset: str = ""  # the preset the advanced controls started from ("" = TrainConfig's defaults)


def instance_prompt(token: str, class_word: str) -> str:
    return f"photo of {token} {class_word}"


def class_prompt(class_word: str) -> str:
    return f"photo of a {class_word}"


def build_config(form: TabForm, resolve_checkpoint: Callable[[str], str | None], uploads_dir: Path) -> TrainConfig:
    """The TrainConfig for a form; raises ConfigError listing every problem, labelled as in the tab."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for f in advanced_fields():
        if f.name not in form.advanced:
            continue
        try:
            values[f.name] = parse_ui_value(f, form.advanced[f.name])
        except (TypeError, ValueError) as error:
            problems.append(f"Advanced > {f.metadata['group']} > {f.name}: {error}")

    base_model = resolve_checkpoint(form.base_model) if form.base_model else None
    if not form.base_model:
        problems.append("Base model: choose a checkpoint from the list.")
    elif base_model is None:
        problems.append(f"Base model: {form.base_model!r} is not in the WebUI's checkpoint list any more; press "
                        "the refresh button and choose again.")
    token = form.token.strip()
    if not TOKEN_PATTERN.fullmatch(token):
        problems.append(f"Token: {form.token!r} must be one word of letters and digits, e.g. 'sks' or 'ukj'.")
    class_word = form.class_word.strip()
    if not class_word:
        problems.append("Class: name what the subject is, e.g. 'person', 'man', 'woman' or 'dog'.")
    if not form.job_name.strip():
        problems.append("Model name: give the new model a name, e.g. 'anna-sd15'.")
    if not form.uploaded_photos and not form.photos_dir.strip():
        problems.append("Photos: give a folder of 13-20 photos, or upload them.")
    if form.preset and form.preset not in preset_names():
        problems.append(f"Preset: {form.preset!r} is not one of {', '.join(preset_names())}; choose one again.")
    if problems:
        raise ConfigError(problems)

    photos_dir = form.photos_dir.strip()
    if form.uploaded_photos and not photos_dir:  # a folder given (or made by "Prepare") wins over uploads
        photos_dir = str(collect_uploads(form.uploaded_photos, uploads_dir / form.job_name.strip()))
    values.update(
        pretrained_model_name_or_path=base_model,
        instance_data_dir=photos_dir,
        instance_prompt=instance_prompt(token, class_word),
        class_prompt=class_prompt(class_word),
        model_name=form.job_name.strip(),
    )
    # The person chose the main fields and every advanced field they changed from the preset's value; the
    # preset's own values are its recipe, which memory_preset "auto" may run on a faster tier.
    starting_point = preset_overrides(form.preset) if form.preset in preset_names() else {}
    defaults = TrainConfig().to_dict()
    changed = [name for name, value in values.items() if name not in MAIN_FIELDS
               and value != starting_point.get(name, defaults[name])]
    values[CHOSEN_KEY] = [*MAIN_FIELDS.keys() & values.keys(), *changed]
    config = TrainConfig.from_dict(values, source="the DreamBooth tab")
    # output_dir is set by the job manager (the job's own folder); everything else is checked now.
    field_problems = [p for p in config.problems() if not p.startswith("output_dir")]
    if field_problems:
        raise ConfigError(field_problems)
    return config


def collect_uploads(paths: list[str], folder: Path) -> Path:
    """Copy uploaded photos (gradio's temporary files) into a new photo folder for the job, whole or not at all.

    A fresh folder per start (name + time), so a second start can never replace the photos of a job that is
    still queued or running.
    """
    target = folder.with_name(f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 1_000_000:06d}")
    with atomic_directory(target) as temporary:
        for index, source in enumerate(paths):
            source_path = Path(source)
            shutil.copyfile(source_path, temporary / f"{index:03d}-{source_path.name}")
    return target
