"""Model families (SD1, SD2, SD2-v, ...): what each kind of Stable Diffusion loads, how its prompts condition
the UNet, its configs, tokenizers, resolution and single-file key tables. See ``base.py``."""

from dreamcore.families.base import ModelFamily, UnetConditioning
from dreamcore.families.registry import (AUTO, DEFAULT_FAMILY, FAMILIES, FAMILY_CHOICES, FAMILY_NAMES,
                                         UnknownFamilyError, families_of_key_layout, family_of_cross_attention_width,
                                         family_of_folder, family_of_key_layout, family_of_kohya_version,
                                         family_of_text_width, get_family, key_layout_probes, register_family)

__all__ = ["AUTO", "DEFAULT_FAMILY", "FAMILIES", "FAMILY_CHOICES", "FAMILY_NAMES", "ModelFamily", "UnetConditioning",
           "UnknownFamilyError", "families_of_key_layout", "family_of_cross_attention_width", "family_of_folder",
           "family_of_key_layout", "family_of_kohya_version", "family_of_text_width", "get_family",
           "key_layout_probes", "register_family"]
