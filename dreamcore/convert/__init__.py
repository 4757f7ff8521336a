"""Checkpoint conversion: diffusers components <-> the single files AUTOMATIC1111, Forge and SD.Next load.

Conversion is pure functions over state dicts with explicit key tables (``unet_keys``, ``vae_keys``,
``text_keys``, assembled by ``layout``); file reading and writing is separate (``checkpoint_files``,
``safe_pickle`` for ``.ckpt`` input). ``single_file`` ties them to ``ModelComponents``.
"""

from __future__ import annotations

from dreamcore.convert.checkpoint_files import WEBUI_ZIP_MEMBER, read_state_dict
from dreamcore.convert.errors import ModelLoadError
from dreamcore.convert.family import detect_family
from dreamcore.convert.single_file import (components_state_dict, load_single_file, load_vae_file,
                                           save_single_file, save_vae_file, training_metadata)

__all__ = [
    "ModelLoadError", "WEBUI_ZIP_MEMBER", "components_state_dict", "detect_family", "load_single_file",
    "load_vae_file", "read_state_dict", "save_single_file", "save_vae_file", "training_metadata",
]
