"""Every model family dreamcore knows, by name, and how a model is told to be of one.

The rest of dreamcore asks here instead of naming families: ``get_family(name)``, ``FAMILY_NAMES`` (the
choices of the CLI and the tab), ``family_of_folder`` (a diffusers folder), ``family_of_key_layout``
(a single file, whose key tables dreamcore/convert reads) and the ``family_of_*`` look-ups of LoRA files.
``register_family`` adds one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Iterator, Mapping, overload

from dreamcore.families.base import ModelFamily
from dreamcore.families.sd1 import SD1
from dreamcore.families.sd2 import SD2, SD2_V
from dreamcore.families.sdxl import SDXL

AUTO = "auto"  # detect the family from the model itself
# In detection order: the most specific first (an SD2-v folder would otherwise pass for SD2).
FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (SD1, SD2, SD2_V, SDXL)}
DEFAULT_FAMILY = SD1  # what a model that says nothing about itself is taken for (tiny test models, bare LoRAs)


class UnknownFamilyError(ValueError):
    """A family name dreamcore does not know."""


class FamilyNames(Sequence):
    """The registered families' names (after ``leading`` ones such as "auto"), read at each use, so that the
    choices taken by the settings, the CLI and the tab at import include a family registered later."""

    def __init__(self, *leading: str) -> None:
        self._leading = leading

    def _names(self) -> tuple[str, ...]:
        return (*self._leading, *FAMILIES)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...
    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and self._names() == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._names())


FAMILY_NAMES = FamilyNames()
FAMILY_CHOICES = FamilyNames(AUTO)


def register_family(family: ModelFamily) -> ModelFamily:
    """Add ``family`` to the registry (after the built-in ones in detection order); its name must be new."""
    if family.name in FAMILIES or family.name == AUTO:
        raise ValueError(f"model family {family.name!r} is registered already; give the new family another name")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> ModelFamily:
    """The family called ``name``; an error naming the known ones otherwise."""
    if name not in FAMILIES:
        raise UnknownFamilyError(f"model family {name!r} is unknown; use one of {', '.join(FAMILY_NAMES)}")
    return FAMILIES[name]


def family_of_folder(model_index: Mapping[str, Any], text_encoder_config: Mapping[str, Any],
                     scheduler_config: Mapping[str, Any]) -> ModelFamily | None:
    """The family a diffusers folder with these configs holds, or None when no family recognises it."""
    for family in FAMILIES.values():
        if family.recognises_folder(model_index, text_encoder_config, scheduler_config):
            return family
    return None


def families_of_key_layout(key_layout: str) -> list[ModelFamily]:
    """The families whose single files share one key layout (SD2 and SD2-v: the keys cannot tell them apart)."""
    return [family for family in FAMILIES.values() if family.key_layout == key_layout]


def family_of_key_layout(key_layout: str, prediction_type: str = "epsilon") -> ModelFamily:
    """The family of a single file whose keys are of ``key_layout`` and whose UNet predicts ``prediction_type``."""
    for family in families_of_key_layout(key_layout):
        if family.prediction_type == prediction_type:
            return family
    raise UnknownFamilyError(f"no model family has the key layout {key_layout!r} with {prediction_type} prediction")


def key_layout_probes() -> dict[str, str]:
    """One key per single-file key layout that only a file of that layout holds (its text encoder's first
    weight): how a single file's family is told from its keys, as the WebUIs tell it."""
    probes: dict[str, str] = {}
    for family in FAMILIES.values():
        probes.setdefault(family.key_layout, family.single_file_probe)
    return probes


def family_of_kohya_version(version: str) -> ModelFamily | None:
    """The first family whose LoRAs carry this kohya ``ss_base_model_version`` (SD2's epsilon model for
    "sd_v2", which SD2-v shares); None when none does."""
    return next((family for family in FAMILIES.values() if family.kohya_version == version), None)


def family_of_text_width(width: int) -> ModelFamily | None:
    """The first family whose first text encoder is ``width`` wide (OpenAI CLIP 768: SD1), or None."""
    return next((family for family in FAMILIES.values() if family.text_encoder_widths[0] == width), None)


def family_of_cross_attention_width(width: int) -> ModelFamily | None:
    """The first family whose UNet attends to text ``width`` wide (SDXL: 768 + 1280), or None."""
    return next((family for family in FAMILIES.values() if family.cross_attention_width == width), None)
