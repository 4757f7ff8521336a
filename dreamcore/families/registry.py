"""Every model family dreamcore knows, by name, and how a model is told to be of one.

The rest of dreamcore asks here instead of naming families: ``get_family(name)``, ``FAMILY_NAMES`` (the
choices of the CLI and the tab), ``family_of_folder`` (a diffusers folder) and ``family_of_key_layout``
(a single file, whose key tables dreamcore/convert reads).
"""

from __future__ import annotations

from typing import Any, Mapping

from dreamcore.families.base import ModelFamily
from dreamcore.families.sd1 import SD1
from dreamcore.families.sd2 import SD2, SD2_V
from dreamcore.families.sdxl import SDXL

AUTO = "auto"  # detect the family from the model itself
# In detection order: the most specific first (an SD2-v folder would otherwise pass for SD2).
FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (SD1, SD2, SD2_V, SDXL)}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)
FAMILY_CHOICES: tuple[str, ...] = (AUTO, *FAMILY_NAMES)
DEFAULT_FAMILY = SD1  # what a model that says nothing about itself is taken for (tiny test models, bare LoRAs)


class UnknownFamilyError(ValueError):
    """A family name dreamcore does not know."""


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
