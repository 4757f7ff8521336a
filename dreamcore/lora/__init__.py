"""DreamBooth-LoRA: PEFT adapters for training, the WebUI's kohya LoRA files, diffusers LoRA folders, merging.

``adapters`` adds PEFT LoRA layers to the UNet/text encoder; ``kohya`` is the pure key conversion between
PEFT's and the WebUI's layouts; ``files`` reads and writes both formats; ``export`` is what a LoRA run
saves; ``merge`` bakes a LoRA into a full model; ``command`` is ``python -m dreamcore merge-lora``.
Names load on first use so that importing this package stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LoraSettings": "dreamcore.lora.adapters",
    "LoraSetupError": "dreamcore.lora.adapters",
    "add_lora_adapters": "dreamcore.lora.adapters",
    "LoraFormatError": "dreamcore.lora.kohya",
    "LoraWeights": "dreamcore.lora.files",
    "read_lora": "dreamcore.lora.files",
    "convert_lora": "dreamcore.lora.files",
    "looks_like_lora": "dreamcore.lora.files",
    "write_kohya_file": "dreamcore.lora.files",
    "write_peft_folder": "dreamcore.lora.files",
    "webui_prompt_snippet": "dreamcore.lora.files",
    "lora_weights_from_models": "dreamcore.lora.export",
    "merge_lora": "dreamcore.lora.merge",
    "apply_lora": "dreamcore.lora.merge",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dreamcore.lora' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
