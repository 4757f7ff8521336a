"""Checkpoint conversion: diffusers components <-> the single files AUTOMATIC1111, Forge and SD.Next load.

Conversion is pure functions over state dicts with explicit key tables (``unet_keys``, ``vae_keys``,
``text_keys``, assembled by ``layout``); file reading and writing is separate (``checkpoint_files``,
``safe_pickle`` for ``.ckpt`` input). ``single_file`` ties them to ``ModelComponents``.

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
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dreamcore.convert' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
