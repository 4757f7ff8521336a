"""Files dreamcore ships so that nothing is ever fetched from a model hub.

- ``configs/<family>/{unet,vae,text_encoder,scheduler}``: diffusers configs of the published Stable
  Diffusion architectures (``dev/build_model_configs.py`` writes them); SDXL adds ``text_encoder_2``.
- ``tokenizers/clip``: the CLIP BPE tokenizer shared by SD1, SD2 and both of SDXL's text encoders
  (``dev/build_tokenizers.py`` rebuilds it from the BPE file in the open_clip_torch wheel). SD2 and SDXL's
  second tokenizer pad with "!" instead of <|endoftext|>.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ASSETS_DIR = Path(__file__).resolve().parent
CONFIGS_DIR = ASSETS_DIR / "configs"
TOKENIZER_DIR = ASSETS_DIR / "tokenizers" / "clip"

COMPONENT_CONFIG_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "text_encoder_2": "text_encoder_2/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}


def family_config_dir(assets_name: str) -> Path:
    """The shipped configs of one family (its ``ModelFamily.assets_name``)."""
    folder = CONFIGS_DIR / assets_name
    if not folder.is_dir():
        known = sorted(p.name for p in CONFIGS_DIR.iterdir() if p.is_dir())
        raise ValueError(f"no shipped configs for model family {assets_name!r} in {CONFIGS_DIR}; dreamcore ships "
                         f"{', '.join(known)}")
    return folder


def load_component_config(assets_name: str, component: str) -> dict[str, Any]:
    """The shipped diffusers config of one component ("unet", "vae", "text_encoder", "scheduler") of a family."""
    path = family_config_dir(assets_name) / COMPONENT_CONFIG_FILES[component]
    return json.loads(path.read_text())


def load_sdxl_tokenizers() -> tuple[Any, Any]:
    """SDXL's two shipped CLIP tokenizers (first and second text encoder), loaded from disk only."""
    from dreamcore.families.sdxl import SDXL

    return load_tokenizers(SDXL.name)


def load_tokenizers(family: str) -> tuple[Any, ...]:
    """A family's shipped CLIP tokenizers, one per text encoder, loaded from disk only."""
    from dreamcore.families.registry import get_family

    chosen = get_family(family)
    return tuple(chosen.shipped_tokenizer(index) for index in range(len(chosen.tokenizer_names)))


def load_tokenizer(family: str | None = None) -> Any:
    """The shipped CLIP tokenizer of a family's (first) text encoder, loaded from disk only; the default
    family's when none is given."""
    from dreamcore.families.registry import DEFAULT_FAMILY, get_family

    return get_family(family or DEFAULT_FAMILY.name).shipped_tokenizer(0)
