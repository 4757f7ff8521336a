"""The parts of a Stable Diffusion model as dreamcore passes them around."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ModelComponents:
    """A loaded model: diffusers/transformers modules plus what they are.

    ``family`` is "sd1", "sd2" (epsilon) or "sd2-v" (v-prediction). ``architecture`` holds the component
    configs (unet, vae, text_encoder, scheduler) when they differ from the shipped full-size ones (tiny
    models); it is None for the published architectures.
    """

    family: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    architecture: dict[str, dict[str, Any]] | None = None
