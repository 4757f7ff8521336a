"""The side of the prepared photos: the resolution training will use, so that it takes the crops as they are."""

from __future__ import annotations

from dataclasses import dataclass

# The smallest side photos are cropped to and trained at: the VAE's 8-pixel cells leave an 8x8 latent, the least
# a UNet's three downsamplings divide evenly.
SMALLEST_SIZE = 64


@dataclass(frozen=True)
class CropSize:
    pixels: int
    reason: str  # for the summary: "SDXL's training resolution"


def crop_size(size: int | None, family_name: str | None, model: str | None) -> CropSize:
    """The crops' side: ``size`` when given, else the resolution training uses for the family named or read
    from ``model`` when no resolution is set, so the crops are used as they are (the default family's without
    either). Raises ModelLoadError when ``model`` cannot be read."""
    from dreamcore.families.registry import DEFAULT_FAMILY, get_family

    family = None
    if model is not None:
        from dreamcore.models import base_model_family

        family = base_model_family(model)
        why = f"{family.label}'s training resolution ({model} is an {family.label} model)"
    elif family_name is not None:
        family = get_family(family_name)
        why = f"{family.label}'s training resolution"
    else:
        why = f"{DEFAULT_FAMILY.label}'s training resolution (give --family or --model for another model family)"
    if size is None:
        return CropSize((family or DEFAULT_FAMILY).training_resolution, why)
    if family is not None and size != family.training_resolution:
        return CropSize(size, f"as --size asks ({family.label} trains at {family.training_resolution} px unless "
                              f"its resolution is set to {size})")
    return CropSize(size, "as --size asks")
