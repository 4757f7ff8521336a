"""The tiny SDXL base of the conversion and LoRA tests: ``dreamcore.tiny``'s, under the names these tests use."""

from __future__ import annotations

from dreamcore.components import ModelComponents
from dreamcore.tiny import SDXL_POOLED_WIDTH as POOLED_WIDTH
from dreamcore.tiny import SDXL_TEXT_WIDTHS as TEXT_WIDTHS
from dreamcore.tiny import SDXL_TIME_ID_WIDTH as TIME_ID_WIDTH
from dreamcore.tiny import TINY_RESOLUTION as RESOLUTION
from dreamcore.tiny import tiny_sdxl_configs

__all__ = ["POOLED_WIDTH", "RESOLUTION", "TEXT_WIDTHS", "TIME_ID_WIDTH", "build_tiny_sdxl", "tiny_sdxl_configs"]


def build_tiny_sdxl(seed: int = 0) -> ModelComponents:
    from dreamcore.tiny import build_tiny_sdxl as build

    return build(seed=seed)
