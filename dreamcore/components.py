"""The parts of a Stable Diffusion model as dreamcore passes them around."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")
TOKENIZER_NAMES = ("tokenizer", "tokenizer_2")


@dataclass
class ModelComponents:
    """A loaded model: diffusers/transformers modules plus what they are.

    ``family`` names its model family (dreamcore/families: "sd1", "sd2", "sd2-v", ...). ``architecture`` holds
    the component configs (unet, vae, text_encoder, scheduler, ...) when they differ from the shipped
    full-size ones (tiny models); it is None for the published architectures. ``text_encoder_2`` and
    ``tokenizer_2``: the second text encoder of families that have one (SDXL), else None.
    ``original_config_text``: see below.
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
    text_encoder_2: Any = None
    tokenizer_2: Any = None

    def text_encoders(self) -> dict[str, Any]:
        """The text encoders the model has, by field name, in order."""
        return {name: getattr(self, name) for name in TEXT_ENCODER_NAMES if getattr(self, name) is not None}
