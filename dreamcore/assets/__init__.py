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

# Model families dreamcore knows, named as the WebUI users know them.
FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl")
COMPONENT_CONFIG_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "text_encoder_2": "text_encoder_2/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}
PAD_TOKEN = {"sd1": "<|endoftext|>", "sd2": "!", "sd2-v": "!"}
# SDXL's two tokenizers: CLIP ViT-L's (as SD1's) and OpenCLIP ViT-bigG's (as SD2's); same vocabulary.
SDXL_PAD_TOKENS = ("<|endoftext|>", "!")


def family_config_dir(family: str) -> Path:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; dreamcore knows {', '.join(FAMILIES)}")
    return CONFIGS_DIR / family


def load_component_config(family: str, component: str) -> dict[str, Any]:
    """The shipped diffusers config of one component ("unet", "vae", "text_encoder", "scheduler")."""
    path = family_config_dir(family) / COMPONENT_CONFIG_FILES[component]
    return json.loads(path.read_text())


def load_sdxl_tokenizers() -> tuple[Any, Any]:
    """SDXL's two shipped CLIP tokenizers (first and second text encoder), loaded from disk only."""
    from transformers import CLIPTokenizer

    return tuple(CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token=pad, local_files_only=True)
                 for pad in SDXL_PAD_TOKENS)


def tokenizer_family(family: str) -> str:
    """SD1 and SD2 share the BPE vocabulary; only the padding token differs."""
    return "sd1" if family == "sd1" else "sd2"


def load_tokenizer(family: str = "sd1"):
    """The shipped CLIP tokenizer for a family, loaded from disk only."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token=PAD_TOKEN[family], local_files_only=True)
