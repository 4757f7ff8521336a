"""The kohya LoRA key layout (what the WebUI's built-in Lora support reads) <-> PEFT's, as pure functions.

kohya names a LoRA after the diffusers/transformers module it changes, dots turned into underscores:
``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`` and
``lora_te_text_model_encoder_layers_0_self_attn_q_proj``, each with ``.lora_down.weight`` (PEFT's lora_A),
``.lora_up.weight`` (lora_B) and ``.alpha`` (a scalar; the update is scaled by alpha / rank, as in PEFT).
The WebUI turns these names into its own (LDM) module names itself, for SD1 and for SD2's OpenCLIP text
encoder alike, so the same rule serves both families (tests/lora check the names against the WebUI's rules).

SDXL LoRAs are named as kohya's sd-scripts names them: the UNet's modules by the original (LDM) layout the
WebUIs hold (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``; the SDXL key table of
dreamcore/convert gives each diffusers module its LDM name), the two text encoders as ``lora_te1_`` (CLIP
ViT-L) and ``lora_te2_`` (OpenCLIP ViT-bigG), both with transformers' names.

The way back (underscores -> dots) is ambiguous in general (``transformer_blocks``, ``to_out_0``), so it
looks each name up among the module names of the family's published architecture (for SDXL's UNet both
the LDM names and diffusers' own, which some tools write).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from dreamcore.convert.sdxl_keys import SDXL_FAMILY
from dreamcore.families.registry import DEFAULT_FAMILY

UNET_PREFIX = "lora_unet_"
TEXT_PREFIX = "lora_te_"
DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
PEFT_A, PEFT_B = ".lora_A.weight", ".lora_B.weight"
# Our own name for each model's part of a LoRA (as diffusers' LoRA files prefix them) -> kohya's prefix.
PARTS = {"unet": UNET_PREFIX, "text_encoder": TEXT_PREFIX}
SDXL_PARTS = {"unet": UNET_PREFIX, "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
KOHYA_PREFIXES = tuple(sorted({*PARTS.values(), *SDXL_PARTS.values()}))


class LoraFormatError(ValueError):
    """A LoRA state dict that is not in the expected layout; the message names the key."""


def canonical_module_path(part: str, module_path: str) -> str:
    """The module path every LoRA tool uses: transformers 5 dropped the ``text_model.`` level of
    CLIPTextModel, but the WebUI (and kohya, and diffusers' loader) expect ``text_model.encoder...``."""
    if part == "text_encoder" and not module_path.startswith("text_model."):
        return "text_model." + module_path
    return module_path


def kohya_parts(family: str) -> dict[str, str]:
    """The parts a LoRA of ``family`` may have, each with its kohya prefix."""
    return SDXL_PARTS if family == SDXL_FAMILY else PARTS


def kohya_name(part: str, module_path: str, family: str = DEFAULT_FAMILY.name) -> str:
    """``("unet", "down_blocks.0.attentions.0.proj_in")`` -> ``"lora_unet_down_blocks_0_attentions_0_proj_in"``;
    an SDXL UNet module gets its LDM name (``down_blocks.1.attentions.0.proj_in`` ->
    ``lora_unet_input_blocks_4_1_proj_in``)."""
    prefixes = kohya_parts(family)
    if part not in prefixes:
        raise LoraFormatError(f"a {family} model has no {part}; its LoRA parts are {', '.join(prefixes)}")
    if family == SDXL_FAMILY and part == "unet":
        module_path = _sdxl_unet_ldm_name(module_path)
    return prefixes[part] + module_path.replace(".", "_")


def peft_to_kohya(parts: dict[str, dict[str, torch.Tensor]], alphas: dict[str, float],
                  family: str = DEFAULT_FAMILY.name) -> dict[str, torch.Tensor]:
    """PEFT LoRA weights per part ({"unet": {"<module>.lora_A.weight": ...}, "text_encoder": ...}) -> kohya.

    ``alphas`` maps "<part>.<module>" to its alpha. Every module needs its A, its B and its alpha. ``family``
    decides the names (SDXL's differ, see the module docstring).
    """
    result: dict[str, torch.Tensor] = {}
    for part, state in parts.items():
        modules = _peft_modules(state, part)
        for module in modules:
            name = kohya_name(part, module, family)
            alpha = alphas.get(f"{part}.{module}")
            if alpha is None:
                raise LoraFormatError(f"no alpha for {part}.{module}; every LoRA module needs one")
            result[name + DOWN] = state[module + PEFT_A]
            result[name + UP] = state[module + PEFT_B]
            result[name + ALPHA] = torch.tensor(float(alpha))
    return result


def kohya_to_peft(state: dict[str, torch.Tensor], family: str
                  ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
    """kohya keys -> (PEFT weights per part, alphas per "<part>.<module>"), module names from ``family``.

    A module without an alpha gets alpha = its rank (scale 1), which is how the WebUI and diffusers read it.
    """
    prefixes = kohya_parts(family)
    names = {part: (_sdxl_flat_module_names(part) if family == SDXL_FAMILY else _flat_module_names(part, family))
             for part in prefixes}
    parts: dict[str, dict[str, torch.Tensor]] = {part: {} for part in prefixes}
    alphas: dict[str, float] = {}
    for key in sorted(state):
        if not key.endswith(DOWN):
            if not key.endswith((UP, ALPHA)):
                raise LoraFormatError(f"{key}: not a kohya LoRA key (expected <name>{DOWN}, {UP} or {ALPHA}); "
                                      "LyCORIS/LoCon variants other than plain LoRA are not supported")
            continue
        flat = key[:-len(DOWN)]
        # the longest prefix first: "lora_te1_" before a shorter one that would also match
        part = next((p for p, prefix in sorted(prefixes.items(), key=lambda item: -len(item[1]))
                     if flat.startswith(prefix)), None)
        if part is None:
            other = "an SDXL LoRA (lora_te1_/lora_te2_)" if flat.startswith(("lora_te1_", "lora_te2_")) else (
                "an SD1/SD2 LoRA (lora_te_)" if flat.startswith(TEXT_PREFIX) else "not a LoRA of this layout")
            raise LoraFormatError(f"{key}: no part of a {family} model has this prefix ({', '.join(prefixes.values())}"
                                  f"); it is {other} - use it with a model of its own family")
        module = names[part].get(flat[len(prefixes[part]):])
        if module is None:
            raise LoraFormatError(f"{key}: no {part} module of a {family} model is named like this; is the LoRA "
                                  "for another model family, or in the LDM naming (lora_unet_input_blocks_...)?")
        if flat + UP not in state:
            raise LoraFormatError(f"{key} has no matching {flat + UP}")
        parts[part][module + PEFT_A] = state[key]
        parts[part][module + PEFT_B] = state[flat + UP]
        alpha = state.get(flat + ALPHA)
        alphas[f"{part}.{module}"] = float(alpha.item()) if alpha is not None else float(state[key].shape[0])
    orphans = [k for k in state if k.endswith(UP) and k[:-len(UP)] + DOWN not in state]
    if orphans:
        raise LoraFormatError(f"{orphans[0]} has no matching lora_down weight")
    return {part: weights for part, weights in parts.items() if weights}, alphas


def is_kohya_state_dict(state: dict[str, torch.Tensor]) -> bool:
    return bool(state) and all(key.startswith(KOHYA_PREFIXES) for key in state)


def is_sdxl_kohya_state_dict(state: dict[str, torch.Tensor]) -> bool:
    """True when the keys alone say SDXL: its text encoders' prefixes, or its UNet's added-conditioning MLP."""
    return any(key.startswith(("lora_te1_", "lora_te2_", "lora_unet_label_emb_", "lora_unet_add_embedding_"))
               for key in state)


def module_ranks(parts: dict[str, dict[str, torch.Tensor]]) -> dict[str, int]:
    """"<part>.<module>" -> rank (the number of rows of its lora_A)."""
    return {f"{part}.{key[:-len(PEFT_A)]}": int(value.shape[0])
            for part, state in parts.items() for key, value in state.items() if key.endswith(PEFT_A)}


def _peft_modules(state: dict[str, torch.Tensor], part: str) -> list[str]:
    modules = []
    for key in state:
        if key.endswith(PEFT_A):
            module = key[:-len(PEFT_A)]
            if module + PEFT_B not in state:
                raise LoraFormatError(f"{part}: {key} has no matching {module + PEFT_B}")
            modules.append(module)
        elif not key.endswith(PEFT_B):
            raise LoraFormatError(f"{part}: {key} is not a LoRA weight (expected <module>{PEFT_A} or {PEFT_B}); "
                                  "only plain LoRA (no DoRA, no bias) can be exported for the WebUI")
    return sorted(modules)


@lru_cache(maxsize=None)
def _sdxl_unet_table():
    from dreamcore.convert.sdxl_keys import sdxl_unet_key_table
    from dreamcore.convert.sdxl_single_file import published_sdxl_configs

    return sdxl_unet_key_table(published_sdxl_configs()["unet"])


def _sdxl_unet_ldm_name(module_path: str) -> str:
    """``down_blocks.1.attentions.0.proj_in`` -> ``input_blocks.4.1.proj_in``: where the WebUI holds the module."""
    from dreamcore.convert.errors import ModelLoadError

    try:
        original, _ = _sdxl_unet_table().to_original(module_path + ".weight")
    except ModelLoadError as error:
        raise LoraFormatError(f"SDXL UNet module {module_path!r} has no place in the WebUI's layout: {error}") from None
    return original[:-len(".weight")]


@lru_cache(maxsize=None)
def _sdxl_flat_module_names(part: str) -> dict[str, str]:
    """Flat kohya names (without prefix) -> module paths of SDXL base's ``part``; for the UNet both the LDM and
    the diffusers names."""
    from dreamcore.convert.modules import empty_text_encoder, empty_unet
    from dreamcore.convert.sdxl_single_file import empty_projection_text_encoder, published_sdxl_configs

    config = published_sdxl_configs()[part]
    if part == "unet":
        model = empty_unet(config)
        paths = [name for name, module in model.named_modules() if name and "weight" in module._parameters]
        names = {path.replace(".", "_"): path for path in paths}
        names.update({_sdxl_unet_ldm_name(path).replace(".", "_"): path for path in paths})
        return names
    model = empty_text_encoder(config) if part == "text_encoder" else empty_projection_text_encoder(config)
    paths = (canonical_module_path(part, name) for name, _ in model.named_modules() if name)
    return {path.replace(".", "_"): path for path in paths}


@lru_cache(maxsize=None)
def _flat_module_names(part: str, family: str) -> dict[str, str]:
    """{"down_blocks_0_attentions_0_proj_in": "down_blocks.0.attentions.0.proj_in", ...} of a family's model."""
    from dreamcore.convert.architecture import published_configs
    from dreamcore.convert.modules import empty_text_encoder, empty_unet

    configs = published_configs(family)
    model = empty_unet(configs["unet"]) if part == "unet" else empty_text_encoder(configs["text_encoder"])
    paths = (canonical_module_path(part, name) for name, _ in model.named_modules() if name)
    return {path.replace(".", "_"): path for path in paths}
