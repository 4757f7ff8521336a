"""LoRA files: the WebUI's kohya ``.safetensors`` and diffusers' PEFT folder, read and written atomically.

Both hold the same thing, ``LoraWeights``: PEFT-named lora_A/lora_B weights of the UNet and the text
encoder(s) (SDXL: ``text_encoder`` and ``text_encoder_2``) plus each module's alpha. ``convert_lora`` goes
from either to the other.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dreamcore.convert.sdxl_keys import SDXL_FAMILY
from dreamcore.families.registry import (AUTO, DEFAULT_FAMILY, FAMILIES, family_of_cross_attention_width,
                                         family_of_kohya_version, family_of_text_width, get_family)
from dreamcore.lora.kohya import (KOHYA_PREFIXES, PEFT_A, SDXL_PARTS, LoraFormatError, is_kohya_state_dict,
                                  is_sdxl_kohya_state_dict, kohya_to_peft, module_ranks, peft_to_kohya)

PEFT_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' save/load_lora_weights use
FAMILY_KEY = "dreamcore.family"
# The WebUI tells SD1, SD2 and SDXL LoRAs apart by kohya's fields (and hides LoRAs of the other families):
# ss_base_model_version starting "sdxl_" is SDXL, else ss_v2 "True" is SD2 (ModelFamily.kohya_version).
SD2_KOHYA_VERSION = "sd_v2"
SD1_KOHYA_VERSION = "sd_v1"
DIFFUSERS_PARTS = tuple(SDXL_PARTS)  # the parts' prefixes in a diffusers LoRA file: unet, text_encoder, text_encoder_2


@dataclass
class LoraWeights:
    """PEFT-named LoRA weights per part ("unet", "text_encoder", SDXL's "text_encoder_2") and the alpha of each
    "<part>.<module>"."""

    parts: dict[str, dict[str, torch.Tensor]]
    alphas: dict[str, float]
    family: str
    metadata: dict[str, str] = field(default_factory=dict)

    def ranks(self) -> dict[str, int]:
        return module_ranks(self.parts)

    def lora_config(self, part: str) -> dict:
        """The PEFT LoraConfig (as a dict) of one part: its commonest rank and alpha, the rest as patterns."""
        from peft import LoraConfig

        prefix = part + "."
        # PEFT matches a target by the end of a module's name; without the "text_model." level the names
        # fit CLIPTextModel of transformers 4 (which has it) and 5 (which does not) alike.
        def target(key: str) -> str:
            return key[len(prefix):].removeprefix("text_model.")

        ranks = {target(k): r for k, r in self.ranks().items() if k.startswith(prefix)}
        alphas = {target(k): a for k, a in self.alphas.items() if k.startswith(prefix)}
        rank = Counter(ranks.values()).most_common(1)[0][0]
        alpha = Counter(alphas.values()).most_common(1)[0][0]
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted(ranks),
                            rank_pattern={m: r for m, r in ranks.items() if r != rank},
                            alpha_pattern={m: a for m, a in alphas.items() if a != alpha})
        return config.to_dict()


def kohya_metadata(weights: LoraWeights, base_model: str, trigger_words: str, extra: dict[str, str] | None = None
                   ) -> dict[str, str]:
    """The ``__metadata__`` the WebUI's Lora cards show (kohya ``ss_*`` and ModelSpec names) plus ours."""
    ranks = set(weights.ranks().values())
    alphas = set(weights.alphas.values())
    family = get_family(weights.family)
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(ranks.pop()) if len(ranks) == 1 else "Dynamic",
        "ss_network_alpha": _number(alphas.pop()) if len(alphas) == 1 else "Dynamic",
        "ss_base_model_version": family.kohya_version,
        "ss_v2": str(family.kohya_version == SD2_KOHYA_VERSION),
        "ss_sd_model_name": base_model,
        "ss_network_args": json.dumps({"text_encoder": any(part != "unet" for part in weights.parts)}),
        # The WebUI lists the words of ss_tag_frequency as the LoRA's trigger words.
        "ss_tag_frequency": json.dumps({"dreamcore": {w.strip(): 1 for w in trigger_words.split(",") if w.strip()}}),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": family.modelspec_architecture + "/lora",
        "modelspec.implementation": "https://github.com/huggingface/diffusers",
        "modelspec.title": base_model,
        "modelspec.trigger_phrase": trigger_words,
        FAMILY_KEY: weights.family,
    }
    metadata.update(extra or {})
    return metadata


def write_kohya_file(path: str | Path, weights: LoraWeights, metadata: dict[str, str], half: bool = True,
                     user_metadata: dict | None = None) -> Path:
    """One ``.safetensors`` in the WebUI's layout (``half``: fp16, as LoRAs are shared); ``<name>.json`` beside
    it with ``user_metadata`` (activation text, preferred weight: what the WebUI's Lora card reads)."""
    from dreamcore.convert.checkpoint_files import write_safetensors
    from dreamcore.fileio import atomic_write_text

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a LoRA for the WebUI is written as .safetensors; give a name ending in it")
    state = peft_to_kohya(weights.parts, weights.alphas, weights.family)
    if half:
        state = {k: v.half() if k.endswith("weight") else v.float() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, state, {**metadata, FAMILY_KEY: weights.family})
    if user_metadata is not None:
        atomic_write_text(path.with_suffix(".json"), json.dumps(user_metadata, indent=4, ensure_ascii=False) + "\n")
    return path


def write_peft_folder(folder: str | Path, weights: LoraWeights) -> Path:
    """A diffusers LoRA folder: what diffusers' ``pipeline.load_lora_weights(folder)`` and its training
    scripts read and write.

    ``pytorch_lora_weights.safetensors`` holds "unet."/"text_encoder."-prefixed PEFT weights; its
    ``lora_adapter_metadata`` holds each part's LoraConfig flattened as "<part>.<field>", which is how
    diffusers keeps the alphas. Written here rather than by ``save_lora_weights`` because the diffusers of
    older WebUI venvs cannot store that metadata, and a LoRA without its alphas loads at the wrong strength.
    """
    from dreamcore.convert.checkpoint_files import write_safetensors
    from dreamcore.fileio import atomic_directory

    folder = Path(folder)
    tensors = {f"{part}.{key}": value for part, state in weights.parts.items() for key, value in state.items()}
    packed = {}
    for part in weights.parts:
        for name, value in weights.lora_config(part).items():
            packed[f"{part}.{name}"] = sorted(value) if isinstance(value, set) else value
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(packed, indent=2, sort_keys=True)}
    with atomic_directory(folder, replaces=PEFT_WEIGHTS_FILE) as temp:
        write_safetensors(temp / PEFT_WEIGHTS_FILE, tensors, metadata)
        (temp / "dreamcore_lora.json").write_text(json.dumps({"family": weights.family, **weights.metadata},
                                                             indent=2) + "\n")
    return folder


def read_lora(path: str | Path, family: str = AUTO, default_family: str = DEFAULT_FAMILY.name) -> LoraWeights:
    """A kohya ``.safetensors`` or a diffusers/PEFT LoRA folder (or its weights file).

    ``family`` ("auto" or a registered family's name): which model the LoRA is for; "auto" reads it from the
    file's metadata (dreamcore's, or kohya's ss_base_model_version and ss_v2), else from the keys (SDXL's two
    text encoders or added conditioning) and shapes (SDXL's 2048-wide cross-attention, the text encoder's
    width), else (a UNet-only LoRA without metadata: SD1 and SD2 UNets share their layer names) takes
    ``default_family``.
    """
    from dreamcore.convert.checkpoint_files import read_state_dict

    path = Path(path)
    sidecar: dict = {}
    if path.is_dir():
        if not (path / PEFT_WEIGHTS_FILE).is_file():
            raise LoraFormatError(f"{path}: no {PEFT_WEIGHTS_FILE} in this folder; give a diffusers LoRA folder or "
                                  "a LoRA .safetensors file")
        if (path / "dreamcore_lora.json").is_file():
            sidecar = json.loads((path / "dreamcore_lora.json").read_text(encoding="utf-8"))
        path = path / PEFT_WEIGHTS_FILE
    state, metadata = read_state_dict(path)
    chosen = family if family != AUTO else (metadata.get(FAMILY_KEY) or sidecar.get("family")
                                              or _family_from_kohya_metadata(metadata, path))
    if is_kohya_state_dict(state):
        if chosen is None:
            chosen = _family_from_shapes(state) or default_family
        try:
            parts, alphas = kohya_to_peft(state, chosen)
        except LoraFormatError as error:
            raise LoraFormatError(f"{path}: {error}") from None
        return LoraWeights(parts, alphas, chosen, dict(metadata))
    return _read_diffusers_state(path, state, metadata, chosen, default_family)


def convert_lora(src: str | Path, dst: str | Path, family: str = AUTO, half: bool = True) -> Path:
    """kohya file -> diffusers/PEFT folder, or folder (or kohya file) -> kohya file, by DST: a ``.safetensors``
    name writes the WebUI's file, anything else a folder."""
    weights = read_lora(src, family)
    dst = Path(dst)
    if dst.suffix == ".safetensors":
        metadata = {k: v for k, v in weights.metadata.items()}
        if not any(k.startswith("ss_") for k in metadata):
            metadata = kohya_metadata(weights, metadata.get("dreamcore.base_model", ""),
                                      metadata.get("dreamcore.trigger_words", ""), metadata)
        return write_kohya_file(dst, weights, metadata, half=half)
    return write_peft_folder(dst, weights)


def looks_like_lora(path: str | Path) -> bool:
    """True for a LoRA file or folder (kohya or diffusers keys), without reading the tensors."""
    path = Path(path)
    if path.is_dir():
        return (path / PEFT_WEIGHTS_FILE).is_file()
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
    except SafetensorError:
        return False
    return bool(keys) and (all(k.startswith(KOHYA_PREFIXES) for k in keys)
                           or all(".lora_A." in k or ".lora_B." in k for k in keys))


def _read_diffusers_state(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str],
                          family: str | None, default_family: str) -> LoraWeights:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        part, _, rest = key.partition(".")
        if part not in DIFFUSERS_PARTS or not (rest.endswith(PEFT_A) or rest.endswith(".lora_B.weight")):
            raise LoraFormatError(f"{path}: {key} is neither a kohya (lora_unet_/lora_te_/lora_te1_/lora_te2_) nor "
                                  "a diffusers (unet./text_encoder./text_encoder_2. ... lora_A/lora_B) LoRA key")
        parts.setdefault(part, {})[rest] = value
    # diffusers stores each part's LoraConfig flattened: {"unet.lora_alpha": 8, "unet.alpha_pattern": {...}}.
    configs: dict[str, dict] = {}
    for key, value in json.loads((metadata or {}).get("lora_adapter_metadata", "{}")).items():
        part, _, name = key.partition(".")
        configs.setdefault(part, {})[name] = value
    alphas: dict[str, float] = {}
    for key, rank in module_ranks(parts).items():
        part, _, module = key.partition(".")
        config = configs.get(part) or {}
        alpha = config.get("lora_alpha", rank)
        for pattern, value in (config.get("alpha_pattern") or {}).items():
            if module == pattern or module.endswith("." + pattern):
                alpha = value
        alphas[key] = float(alpha)
    if family is None:
        family = _family_from_widths(_cross_attention_width(parts.get("unet", {})),
                                     _text_width(parts.get("text_encoder", {})), set(parts) - {"unet"},
                                     default_family)
    unknown_parts = sorted(set(parts) - {"unet", *get_family(family).text_encoder_names})
    if unknown_parts:
        raise LoraFormatError(f"{path}: it has {', '.join(unknown_parts)} weights, which a {family} model does not "
                              "have; use it with the model it was trained for")
    return LoraWeights(parts, alphas, family, {k: v for k, v in metadata.items() if k != "lora_adapter_metadata"})


def _family_from_kohya_metadata(metadata: dict[str, str], path: Path) -> str | None:
    version = metadata.get("ss_base_model_version", "")
    family = family_of_kohya_version(version) if version else None
    if family is not None:
        return family.name
    if version.startswith("sdxl_"):
        raise LoraFormatError(f"{path}: a LoRA for {version} (ss_base_model_version); dreamcore handles LoRAs of "
                              "SDXL base models, not of the refiner: use one trained on SDXL base 1.0 or a fine-tune")
    if metadata.get("ss_v2") in ("True", "False"):
        by_v2 = family_of_kohya_version(SD2_KOHYA_VERSION if metadata["ss_v2"] == "True" else SD1_KOHYA_VERSION)
        return None if by_v2 is None else by_v2.name
    return None


def _family_from_shapes(state: dict[str, torch.Tensor]) -> str | None:
    if is_sdxl_kohya_state_dict(state):
        return SDXL_FAMILY
    cross = [v for k, v in state.items() if "attn2_to_k" in k and k.endswith(".lora_down.weight")]
    text = {k: v for k, v in state.items() if k.startswith("lora_te_") and k.endswith(".lora_down.weight")}
    text_width = next((int(v.shape[1]) for k, v in text.items() if "q_proj" in k), None)
    return _family_from_widths(int(cross[0].shape[1]) if cross else None, text_width, set(), None)


def _family_from_widths(cross_width: int | None, text_width: int | None, text_parts: set[str],
                        default_family: str | None) -> str | None:
    """The family told by the text encoders a LoRA has (only SDXL has a text_encoder_2), else by the width its
    UNet attends to text (SD1 768, SD2 1024, SDXL 768 + 1280 = 2048), else by its text encoder's width (OpenAI
    CLIP 768: SD1, OpenCLIP ViT-H 1024: SD2); a UNet-only LoRA whose modules show neither says nothing:
    ``default_family``."""
    if text_parts - {"text_encoder"}:
        by_parts = next((f for f in FAMILIES.values() if text_parts <= set(f.text_encoder_names)), None)
        if by_parts is not None:
            return by_parts.name
    by_width = ((None if cross_width is None else family_of_cross_attention_width(cross_width))
                or (None if text_width is None else family_of_text_width(text_width)))
    return by_width.name if by_width is not None else default_family


def _cross_attention_width(state: dict[str, torch.Tensor]) -> int | None:
    return next((int(v.shape[1]) for k, v in state.items() if "attn2.to_k" in k and k.endswith(PEFT_A)), None)


def _text_width(state: dict[str, torch.Tensor]) -> int | None:
    return next((int(v.shape[1]) for k, v in state.items() if "q_proj" in k and k.endswith(PEFT_A)), None)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def lora_family(path: str | Path) -> str | None:
    """The family a LoRA ``.safetensors`` says it is for (dreamcore's or kohya's metadata), without reading its
    tensors; None when its metadata does not say."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
    return metadata.get(FAMILY_KEY) or _family_from_kohya_metadata(metadata, Path(path))


def webui_prompt_snippet(path: str | Path, weight: float | None = None) -> str:
    """What to paste into a WebUI prompt for the LoRA at ``path``: ``<lora:NAME:W> ACTIVATION TEXT``.

    NAME is the file's name without suffix (how the WebUI lists it in models/Lora); the weight and the
    activation text come from the card ``<name>.json`` beside it when there is one.
    """
    path = Path(path)
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
    chosen = weight if weight is not None else float(card.get("preferred weight") or 1)
    text = str(card.get("activation text", "")).strip()
    return f"<lora:{path.stem}:{_number(chosen)}>" + (f" {text}" if text else "")
