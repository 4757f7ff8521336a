"""SDXL single files (what the WebUIs load) to and from ``ModelComponents``.

``components_to_sdxl_single_file`` and ``sdxl_single_file_to_components`` convert between loaded modules and a
file's state dict (the key layout is ``sdxl_layout``/``sdxl_keys``); ``load_sdxl_single_file`` and
``save_sdxl_single_file`` add the file, its metadata and the checks. ``single_file`` sends SDXL files here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from dreamcore.assets import load_component_config, load_sdxl_tokenizers
from dreamcore.components import ModelComponents
from dreamcore.convert.checkpoint_files import metadata_json, read_state_dict
from dreamcore.convert.errors import ModelLoadError
from dreamcore.convert.modules import (TEXT_MODEL_PREFIX, assign_weights, diffusers_config, empty_unet, empty_vae,
                                       empty_text_encoder, text_config_dict, text_encoder_state_dict)
from dreamcore.convert.sdxl_keys import SDXL_FAMILY, check_sdxl_base, is_sdxl_state_dict
from dreamcore.convert.sdxl_layout import split_sdxl_single_file_layout, to_sdxl_single_file_layout
from dreamcore.convert.single_file import (ARCHITECTURE_KEY, FAMILY_KEY, PREDICTION_KEY, VERSION_KEY,
                                           _check_noise_schedule, _file_writer, _json_metadata, _on_host,
                                           _single_file_path)
from dreamcore.families.registry import get_family

log = logging.getLogger(__name__)

SDXL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")
MODEL_NAME = "SDXL"  # in error messages
# Config fields that decide the shape of the weights or the numbers they produce: a model that differs from the
# published SDXL base in any of them records its configs in the file (tiny test models do).
STRUCTURAL_FIELDS = {
    "unet": ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
             "layers_per_block", "transformer_layers_per_block", "cross_attention_dim", "attention_head_dim",
             "use_linear_projection", "norm_num_groups", "addition_embed_type", "addition_time_embed_dim",
             "projection_class_embeddings_input_dim"),
    "vae": ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels",
            "norm_num_groups", "scaling_factor"),
    "text_encoder": ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings", "hidden_act"),
    "text_encoder_2": ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "max_position_embeddings", "hidden_act", "projection_dim"),
    "scheduler": ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule"),
}


def published_sdxl_configs() -> dict[str, dict[str, Any]]:
    """The shipped diffusers configs of SDXL base 1.0, one per component."""
    return {component: load_component_config(SDXL_FAMILY, component) for component in SDXL_COMPONENTS}


def sdxl_component_configs(components: ModelComponents) -> dict[str, dict[str, Any]]:
    """The configs of a loaded SDXL model's components (diffusers and transformers fields, no bookkeeping)."""
    _require_sdxl(components)
    return {"unet": diffusers_config(components.unet.config), "vae": diffusers_config(components.vae.config),
            "text_encoder": text_config_dict(components.text_encoder.config),
            "text_encoder_2": text_config_dict(components.text_encoder_2.config),
            "scheduler": diffusers_config(components.scheduler.config)}


def differs_from_published_sdxl(configs: Mapping[str, Mapping[str, Any]]) -> bool:
    """True when any structural field differs from SDXL base 1.0's."""
    published = published_sdxl_configs()
    return any(_normalise(configs[component].get(name)) != _normalise(published[component].get(name))
               for component, names in STRUCTURAL_FIELDS.items() for name in names)


def components_to_sdxl_single_file(components: ModelComponents) -> dict[str, torch.Tensor]:
    """All of an SDXL model's weights in the single-file layout, as they would be written (tensors shared)."""
    _require_sdxl(components)
    text_config = components.text_encoder.config
    return to_sdxl_single_file_layout(
        components.unet.state_dict(), components.vae.state_dict(), text_encoder_state_dict(components.text_encoder),
        projection_text_encoder_state_dict(components.text_encoder_2), components.unet.config,
        components.vae.config, text_layers_2=components.text_encoder_2.config.num_hidden_layers,
        max_positions=text_config.max_position_embeddings)


def sdxl_single_file_to_components(state_dict: Mapping[str, torch.Tensor], configs: Mapping[str, Mapping[str, Any]]
                                   | None = None, source: str = "SDXL state dict", use_ema: bool = False
                                   ) -> ModelComponents:
    """An SDXL base file's state dict -> fp32 modules on the CPU, with the shipped tokenizers and a DDPM scheduler.

    ``configs`` (unet, vae, text_encoder, text_encoder_2, scheduler) describe a custom architecture; None means
    the published SDXL base. ``source`` names the file in errors.
    """
    try:
        check_sdxl_base(state_dict)
    except ModelLoadError as error:
        raise ModelLoadError(f"{source}: {error}") from None
    custom = configs is not None
    configs = {name: dict(config) for name, config in (configs or published_sdxl_configs()).items()}
    try:
        split = split_sdxl_single_file_layout(state_dict, configs["unet"], configs["vae"],
                                              int(configs["text_encoder_2"]["num_hidden_layers"]), use_ema=use_ema)
    except ModelLoadError as error:
        raise ModelLoadError(f"{source}: {error}") from None
    if split.ignored:
        log.info("%s: left out %d key%s no SDXL pipeline reads (e.g. %s)", source, len(split.ignored),
                 "" if len(split.ignored) == 1 else "s", split.ignored[0])
    unet = assign_weights(empty_unet(configs["unet"]), split.unet, "UNet", source, MODEL_NAME)
    vae = assign_weights(empty_vae(configs["vae"]), split.vae, "VAE", source, MODEL_NAME)
    text_encoder = assign_weights(empty_text_encoder(configs["text_encoder"]), split.text_encoder, "text encoder",
                                  source, MODEL_NAME)
    text_encoder_2 = assign_weights(empty_projection_text_encoder(configs["text_encoder_2"]), split.text_encoder_2,
                                    "text encoder 2", source, MODEL_NAME)
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config({**diffusers_config(configs["scheduler"]), "prediction_type": "epsilon"})
    tokenizer, tokenizer_2 = load_sdxl_tokenizers()
    return ModelComponents(SDXL_FAMILY, unet, vae, text_encoder, tokenizer, scheduler,
                           architecture=configs if custom else None, text_encoder_2=text_encoder_2,
                           tokenizer_2=tokenizer_2)


def load_sdxl_single_file(path: str | Path, family: str = "auto", use_ema: bool = False,
                          state_dict: Mapping[str, torch.Tensor] | None = None,
                          metadata: Mapping[str, str] | None = None) -> ModelComponents:
    """Load an SDXL base (or fine-tune) ``.safetensors``/``.ckpt`` into fp32 modules on the CPU.

    A refiner, an inpainting model or anything not SDXL is refused with the reason. ``state_dict`` and
    ``metadata``: the file's, when the caller has read it already. A ``.yaml`` beside the file travels on to
    files made from the model, unread: the WebUIs tell SDXL from its keys.
    """
    path = Path(path)
    if state_dict is None:
        state_dict, metadata = read_state_dict(path)
    metadata = metadata or {}
    if not is_sdxl_state_dict(state_dict):
        raise ModelLoadError(f"{path} is not an SDXL model (no conditioner.embedders.* keys); load it as SD1/SD2")
    for source, named in (("the family given (--family, model_family)", family if family != "auto" else None),
                          (f"{path.name}'s metadata", metadata.get(FAMILY_KEY))):
        if named is not None and named != SDXL_FAMILY:
            raise ModelLoadError(f"{path}: {source} says {named} but the weights are SDXL (two text encoders under "
                                 "conditioner.embedders.*); fix or remove the wrong one")
    configs = None
    if ARCHITECTURE_KEY in metadata:
        configs = _json_metadata(path, metadata, ARCHITECTURE_KEY)
        if not isinstance(configs, dict) or any(not isinstance(configs.get(c), dict) for c in SDXL_COMPONENTS):
            raise ModelLoadError(f"{path}: its {ARCHITECTURE_KEY} metadata lacks one of {', '.join(SDXL_COMPONENTS)}; "
                                 "the file is damaged - export it again")
    components = sdxl_single_file_to_components(state_dict, configs, str(path), use_ema=use_ema)
    _check_noise_schedule(path, state_dict, diffusers_config(components.scheduler.config))
    yaml_path = path.with_suffix(".yaml")
    if yaml_path.is_file():
        components.original_config_text = yaml_path.read_text(encoding="utf-8")
    return components


def save_sdxl_single_file(components: ModelComponents, path: str | Path, half: bool = False,
                          metadata: dict[str, str] | None = None, user_metadata: dict | None = None) -> Path:
    """Write an SDXL model as a WebUI single file (``.safetensors``, or ``.ckpt`` by suffix); see
    ``single_file.save_single_file`` for ``half``, ``metadata`` and ``user_metadata``."""
    return sdxl_single_file_writer(components, path, half, metadata, user_metadata, snapshot=False)()


def sdxl_single_file_writer(components: ModelComponents, path: str | Path, half: bool = False,
                            metadata: dict[str, str] | None = None, user_metadata: dict | None = None,
                            snapshot: bool = True,
                            copy_to_host: Callable[[dict], dict] | None = None) -> Callable[[], Path]:
    """``save_sdxl_single_file`` in two parts, as ``single_file.single_file_writer``: the weights are copied to
    the host now, the returned function writes the files (on any thread) and returns the model file's path."""
    path = _single_file_path(path)
    state_dict = _on_host(components_to_sdxl_single_file(components), snapshot, copy_to_host)
    file_metadata = _file_metadata(components, path)
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata {key!r}: keys and values must be strings (got {type(value).__name__}); "
                            "use training_metadata() or str()")
        file_metadata[key] = value
    yaml_text = components.original_config_text or ""

    return _file_writer(path, state_dict, file_metadata, half, yaml_text, user_metadata)


def empty_projection_text_encoder(config: Mapping[str, Any]) -> Any:
    """SDXL's second text encoder (``CLIPTextModelWithProjection``) without initialised weights."""
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with init_empty_weights():
        return CLIPTextModelWithProjection(CLIPTextConfig(**text_config_dict(config)))


def projection_text_encoder_state_dict(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``CLIPTextModelWithProjection``'s weights under ``text_model.*`` names plus ``text_projection.weight``,
    whatever the transformers version (see ``modules.text_encoder_state_dict``)."""
    state_dict = text_encoder.state_dict()
    if any(key.startswith(TEXT_MODEL_PREFIX) for key in state_dict):
        return dict(state_dict)
    return {key if key.startswith("text_projection.") else TEXT_MODEL_PREFIX + key: tensor
            for key, tensor in state_dict.items()}


def _file_metadata(components: ModelComponents, path: Path) -> dict[str, str]:
    import dreamcore

    metadata = {VERSION_KEY: dreamcore.__version__, FAMILY_KEY: SDXL_FAMILY, PREDICTION_KEY: "epsilon",
                "modelspec.sai_model_spec": "1.0.0", "modelspec.title": path.stem}
    configs = sdxl_component_configs(components)
    if components.architecture is not None or differs_from_published_sdxl(configs):
        configs["scheduler"]["prediction_type"] = "epsilon"
        metadata[ARCHITECTURE_KEY] = metadata_json(configs)
    else:
        metadata["modelspec.architecture"] = get_family(SDXL_FAMILY).modelspec_architecture
    return metadata


def _require_sdxl(components: ModelComponents) -> None:
    if components.family != SDXL_FAMILY or components.text_encoder_2 is None:
        raise ValueError(f"this model is {components.family} with text encoders "
                         f"{', '.join(components.text_encoders())}; an SDXL single file needs an SDXL model (family "
                         f"{SDXL_FAMILY!r}, text_encoder and text_encoder_2)")


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
