"""Checkpoint conversion: diffusers components <-> the single files AUTOMATIC1111, Forge and SD.Next load.

Conversion is pure functions over state dicts with explicit key tables (``unet_keys``, ``vae_keys``,
``text_keys``, assembled by ``layout``; SDXL's in ``sdxl_keys`` and ``sdxl_layout``); file reading and writing
is separate (``checkpoint_files``, ``safe_pickle`` for ``.ckpt`` input). ``single_file`` ties them to
``ModelComponents`` (and sends SDXL files to ``sdxl_single_file``).

The names below load on first use, so that ``python -m dreamcore convert --help`` imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelLoadError": "dreamcore.convert.errors",
    "WEBUI_ZIP_MEMBER": "dreamcore.convert.checkpoint_files",
    "read_state_dict": "dreamcore.convert.checkpoint_files",
    "detect_family": "dreamcore.convert.family",
    "components_state_dict": "dreamcore.convert.single_file",
    "load_single_file": "dreamcore.convert.single_file",
    "load_vae_file": "dreamcore.convert.single_file",
    "save_single_file": "dreamcore.convert.single_file",
    "save_vae_file": "dreamcore.convert.single_file",
    "training_metadata": "dreamcore.convert.single_file",
    "convert": "dreamcore.convert.command",
    # SDXL (sdxl_keys, sdxl_layout, sdxl_single_file)
    "SDXL_FAMILY": "dreamcore.convert.sdxl_keys",
    "is_sdxl_state_dict": "dreamcore.convert.sdxl_keys",
    "detect_sdxl_kind": "dreamcore.convert.sdxl_keys",
    "check_sdxl_base": "dreamcore.convert.sdxl_keys",
    "components_to_sdxl_single_file": "dreamcore.convert.sdxl_single_file",
    "sdxl_single_file_to_components": "dreamcore.convert.sdxl_single_file",
    "load_sdxl_single_file": "dreamcore.convert.sdxl_single_file",
    "save_sdxl_single_file": "dreamcore.convert.sdxl_single_file",
    "published_sdxl_configs": "dreamcore.convert.sdxl_single_file",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dreamcore.convert' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
