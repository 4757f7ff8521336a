"""The parts of a Stable Diffusion model as dreamcore passes them around."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ModelComponents:
    """A loaded model: diffusers/transformers modules plus what they are.

    ``family`` is "sd1", "sd2" (epsilon) or "sd2-v" (v-prediction). ``architecture`` holds the component
    configs (unet, vae, text_encoder, scheduler) when they differ from the shipped full-size ones (tiny
    models); it is None for the published architectures. ``original_config_text``: see below.
    """

    family: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    architecture: dict[str, dict[str, Any]] | None = None
    # The WebUI/ldm .yaml the model was loaded with (beside its single file, or given), verbatim: every single
    # file made from it carries it, since the WebUI cannot load such a model without it.
    original_config_text: str | None = None
