"""Single-file checkpoints (what the WebUIs load) to and from ``ModelComponents``; VAE files alone too."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from dreamcore.assets import load_tokenizer
from dreamcore.components import ModelComponents
from dreamcore.convert.architecture import (COMPONENTS, base_family, differs_from_published, prediction_type,
                                            published_configs)
from dreamcore.convert.checkpoint_files import metadata_json, read_state_dict, write_ckpt, write_safetensors
from dreamcore.convert.errors import ModelLoadError
from dreamcore.convert.family import detect_family, looks_v_prediction
from dreamcore.convert.layout import (SCHEDULE_KEYS, normalise_legacy_keys, split_single_file_layout,
                                      to_single_file_layout, vae_from_original, vae_to_original)
from dreamcore.convert.modules import (assign_weights, diffusers_config, empty_text_encoder, empty_unet, empty_vae,
                                       text_config_dict, text_encoder_state_dict)
from dreamcore.convert.original_config import original_config, original_config_yaml, read_original_config
from dreamcore.convert.sdxl_keys import SDXL_FAMILY, is_sdxl_state_dict
from dreamcore.convert.vae_keys import VAE_PREFIX
from dreamcore.families.registry import (DEFAULT_FAMILY, FAMILIES, families_of_key_layout, family_of_key_layout,
                                         get_family)
from dreamcore.fileio import atomic_write_text

log = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# Our keys in a file's metadata. Structured values are JSON strings (safetensors metadata is str -> str).
VERSION_KEY = "dreamcore.version"
FAMILY_KEY = "dreamcore.family"
PREDICTION_KEY = "dreamcore.prediction_type"
ARCHITECTURE_KEY = "dreamcore.architecture"  # the component configs of a custom (non-published) model
VAE_ARCHITECTURE_KEY = "dreamcore.vae_architecture"


def training_metadata(base_model: str, trigger_words: str | list[str], steps: int,
                      resolution: int) -> dict[str, str]:
    """The metadata a trained model's file should carry, under dreamcore's and ModelSpec's key names."""
    words = trigger_words if isinstance(trigger_words, str) else ", ".join(trigger_words)
    return {
        "dreamcore.base_model": str(base_model),
        "dreamcore.trigger_words": words,
        "dreamcore.training_steps": str(int(steps)),
        "dreamcore.resolution": str(int(resolution)),
        "modelspec.trigger_phrase": words,
        "modelspec.resolution": f"{int(resolution)}x{int(resolution)}",
    }


def save_single_file(components: ModelComponents, path: str | Path, half: bool = False,
                     metadata: dict[str, str] | None = None, user_metadata: dict | None = None) -> Path:
    """Write a WebUI single file (``.safetensors``, or ``.ckpt`` by suffix); returns its path.

    ``half`` stores floating tensors as fp16 (half the size; the WebUI does not mind). A model loaded with a
    ``.yaml`` gets a copy of it beside the file, and SD2 v-prediction models one in any case; ``user_metadata``
    (description, "activation text", ...) goes to ``<name>.json`` beside it, where the WebUI's model cards read
    it. Each file is atomic.
    """
    return single_file_writer(components, path, half, metadata, user_metadata, snapshot=False)()


def single_file_writer(components: ModelComponents, path: str | Path, half: bool = False,
                       metadata: dict[str, str] | None = None, user_metadata: dict | None = None,
                       snapshot: bool = True,
                       copy_to_host: Callable[[dict], dict] | None = None) -> Callable[[], Path]:
    """``save_single_file`` in two parts: the weights are copied to the host now (``snapshot``: a copy even of
    weights already there, which training may go on changing in place; ``copy_to_host``: how, when the caller
    has its own buffers for it), and the returned function writes the files, on any thread; it returns the model
    file's path."""
    if components.family == SDXL_FAMILY:
        from dreamcore.convert.sdxl_single_file import sdxl_single_file_writer

        return sdxl_single_file_writer(components, path, half, metadata, user_metadata, snapshot, copy_to_host)
    path = _single_file_path(path)
    family = components.family
    if family not in FAMILIES:
        raise ValueError(f"model family {family!r} is unknown; a single file holds one of {', '.join(FAMILIES)}")
    # On the host before any cast: a half copy made on the GPU would need another 2 GB of GPU memory at the end
    # of a training run, when the optimizer's state is still there.
    state_dict = _on_host(components_state_dict(components), snapshot, copy_to_host)
    file_metadata = _file_metadata(components, path)
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata {key!r}: keys and values must be strings (got {type(value).__name__}); "
                            "use training_metadata() or str()")
        file_metadata[key] = value
    yaml_text = components.original_config_text or ""  # the base's own .yaml travels with what is made from it
    if get_family(family).needs_original_config and not yaml_text:
        # The WebUI cannot tell v-prediction from SD2's keys; the yaml beside the file tells it.
        configs = _component_configs(components)
        yaml_text = original_config_yaml(original_config(family, configs["unet"], configs["vae"],
                                                         configs["scheduler"]))

    return _file_writer(path, state_dict, file_metadata, half, yaml_text, user_metadata)


def components_state_dict(components: ModelComponents) -> dict[str, torch.Tensor]:
    """All of a model's weights in the single-file (original) layout, as they would be written."""
    if components.family == SDXL_FAMILY:
        from dreamcore.convert.sdxl_single_file import components_to_sdxl_single_file

        return components_to_sdxl_single_file(components)
    text_config = components.text_encoder.config
    return to_single_file_layout(
        components.unet.state_dict(), components.vae.state_dict(), text_encoder_state_dict(components.text_encoder),
        base_family(components.family), components.unet.config, components.vae.config,
        text_layers=text_config.num_hidden_layers, max_positions=text_config.max_position_embeddings)


def load_single_file(path: str | Path, family: str = "auto", use_ema: bool = False,
                     config_yaml: str | Path | None = None) -> ModelComponents:
    """Load a single-file SD1.x/SD2.x checkpoint into fp32 modules on the CPU (an SDXL one: see
    ``sdxl_single_file.load_sdxl_single_file``).

    The family comes from ``family`` if given, else from ``config_yaml`` or ``<name>.yaml`` beside the file,
    else from dreamcore's metadata in the file, else from the keys (and, for SD2, the WebUI's test
    forward pass for v-prediction). ``use_ema`` takes the UNet's EMA weights stored in the file.
    """
    path = Path(path)
    state_dict, metadata = read_state_dict(path)
    if is_sdxl_state_dict(state_dict):
        from dreamcore.convert.sdxl_single_file import load_sdxl_single_file

        if config_yaml:
            raise ModelLoadError(f"{path} is an SDXL model; the WebUIs tell SDXL from its keys and dreamcore "
                                 "reads no .yaml for it: leave out the original config")
        return load_sdxl_single_file(path, family, use_ema, state_dict, metadata)
    try:
        state_dict = normalise_legacy_keys(state_dict)
        key_family = detect_family(state_dict)
    except ModelLoadError as error:
        raise ModelLoadError(f"{path}: {error}") from None
    yaml_path = Path(config_yaml) if config_yaml else path.with_suffix(".yaml")
    yaml_config = read_original_config(yaml_path) if (config_yaml or yaml_path.is_file()) else None
    chosen = _choose_family(path, key_family, family, yaml_config, metadata)
    configs, custom = _configs_for(path, metadata, chosen or key_family)
    if yaml_config is not None:
        _apply_original_config(configs, yaml_config)
    text_layers = int(configs["text_encoder"]["num_hidden_layers"])
    try:
        split = split_single_file_layout(state_dict, base_family(key_family), configs["unet"], configs["vae"],
                                         text_layers, use_ema=use_ema)
    except ModelLoadError as error:
        raise ModelLoadError(f"{path}: {error}") from None
    if split.has_ema and not use_ema:
        log.info("%s also holds EMA weights; they are not used (pass use_ema / --use-ema to use them)", path.name)
    name = family_of_key_layout(key_family).label
    unet = assign_weights(empty_unet(configs["unet"]), split.unet, "UNet", str(path), name)
    vae = assign_weights(empty_vae(configs["vae"]), split.vae, "VAE", str(path), name)
    text_encoder = assign_weights(empty_text_encoder(configs["text_encoder"]), split.text_encoder,
                                  "text encoder", str(path), name)
    if chosen is None:  # SD2 with nothing but its keys to go by: test it as the WebUI does
        v_prediction = not custom and looks_v_prediction(unet)
        chosen = family_of_key_layout(key_family, "v_prediction" if v_prediction else "epsilon").name
        if v_prediction:  # same weights as the epsilon model's layout; the v model's default image size
            v_configs = published_configs(chosen)
            unet.register_to_config(sample_size=v_configs["unet"]["sample_size"])
            vae.register_to_config(sample_size=v_configs["vae"]["sample_size"])
        log.info("%s: no .yaml beside it; detected %s from its weights", path.name, chosen)
    configs["scheduler"]["prediction_type"] = prediction_type(chosen)
    _check_noise_schedule(path, state_dict, configs["scheduler"])
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(diffusers_config(configs["scheduler"]))
    return ModelComponents(chosen, unet, vae, text_encoder, load_tokenizer(chosen), scheduler,
                           architecture=configs if custom else None,
                           original_config_text=yaml_path.read_text(encoding="utf-8") if yaml_config else None)


def save_vae_file(vae: Any, path: str | Path, half: bool = False) -> Path:
    """Write a VAE alone as the WebUIs keep it in ``models/VAE`` (original keys, no prefix)."""
    path = _single_file_path(path)
    state_dict = vae_to_original(vae.state_dict(), vae.config)
    if half:
        state_dict = {key: t.half() if t.is_floating_point() else t for key, t in state_dict.items()}
    import dreamcore

    metadata = {VERSION_KEY: dreamcore.__version__}
    vae_config = diffusers_config(vae.config)
    if differs_from_published({**published_configs(DEFAULT_FAMILY.name), "vae": vae_config}, DEFAULT_FAMILY.name):
        metadata[VAE_ARCHITECTURE_KEY] = metadata_json(vae_config)
    if path.suffix == ".ckpt":
        return write_ckpt(path, state_dict, metadata)
    return write_safetensors(path, state_dict, metadata)


def load_vae_file(path: str | Path) -> Any:
    """Load a single-file VAE (bare original keys, or the VAE inside a full checkpoint) as AutoencoderKL."""
    path = Path(path)
    state_dict, metadata = read_state_dict(path)
    if any(key.startswith(VAE_PREFIX) for key in state_dict):
        log.info("%s is a full checkpoint; using the VAE inside it", path.name)
        state_dict = {key[len(VAE_PREFIX):]: t for key, t in state_dict.items() if key.startswith(VAE_PREFIX)}
    # A VAE's own training loss and EMA counters ride along in some files; they are not VAE weights.
    state_dict = {key: t for key, t in state_dict.items()
                  if not key.startswith("loss.") and key not in SCHEDULE_KEYS}
    if "decoder.conv_in.weight" not in state_dict:
        raise ModelLoadError(f"{path} is not a VAE (no decoder.conv_in.weight); choose a VAE file such as "
                             "vae-ft-mse-840000-ema-pruned.safetensors, or a diffusers VAE folder")
    if VAE_ARCHITECTURE_KEY in metadata:
        config = _json_metadata(path, metadata, VAE_ARCHITECTURE_KEY)
    else:
        config = published_configs(DEFAULT_FAMILY.name)["vae"]
    try:
        converted = vae_from_original(state_dict, config)
    except ModelLoadError as error:
        raise ModelLoadError(f"{path}: {error}") from None
    return assign_weights(empty_vae(config), converted, "VAE", str(path), "Stable Diffusion")


def _single_file_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix == "":
        return path.with_name(path.name + ".safetensors")
    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise ValueError(f"{path}: a single-file model ends in .safetensors or .ckpt (got {path.suffix!r})")
    return path


def _component_configs(components: ModelComponents) -> dict[str, dict[str, Any]]:
    return {"unet": diffusers_config(components.unet.config), "vae": diffusers_config(components.vae.config),
            "text_encoder": text_config_dict(components.text_encoder.config),
            "scheduler": diffusers_config(components.scheduler.config)}


def _file_metadata(components: ModelComponents, path: Path) -> dict[str, str]:
    import dreamcore

    metadata = {VERSION_KEY: dreamcore.__version__, FAMILY_KEY: components.family,
                PREDICTION_KEY: prediction_type(components.family), "modelspec.sai_model_spec": "1.0.0",
                "modelspec.title": path.stem}
    if components.architecture is not None:
        configs = _component_configs(components)
        configs["scheduler"]["prediction_type"] = prediction_type(components.family)
        metadata[ARCHITECTURE_KEY] = metadata_json(configs)
    else:
        metadata["modelspec.architecture"] = get_family(components.family).modelspec_architecture
    return metadata


def _choose_family(path: Path, key_family: str, requested: str, yaml_config, metadata: Mapping[str, str]
                   ) -> str | None:
    """The family by precedence (argument, yaml, metadata); None for SD2 when only a forward pass can tell."""
    sources = [("the family given (--family, model_family)", requested if requested != "auto" else None),
               (f"{path.with_suffix('.yaml').name}", yaml_config.family if yaml_config else None),
               (f"{path.name}'s metadata", metadata.get(FAMILY_KEY))]
    for source, family in sources:
        if family is None:
            continue
        if family not in FAMILIES:
            raise ModelLoadError(f"{path}: {source} names family {family!r}; use one of {', '.join(FAMILIES)}")
        if base_family(family) != key_family:
            raise ModelLoadError(f"{path}: {source} says {family} but the weights are {key_family} "
                                 f"({family_of_key_layout(key_family).text_encoder_label} text encoder); "
                                 "fix or remove the wrong one")
        return family
    # one family to a key layout: the keys say it all; several (SD2 and SD2-v): only a forward pass can tell
    sharing = families_of_key_layout(key_family)
    return sharing[0].name if len(sharing) == 1 else None


def _configs_for(path: Path, metadata: Mapping[str, str], family: str) -> tuple[dict[str, dict[str, Any]], bool]:
    """Component configs (copied) and whether they are a custom architecture recorded in the file."""
    if ARCHITECTURE_KEY not in metadata:
        return published_configs(family), False
    configs = _json_metadata(path, metadata, ARCHITECTURE_KEY)
    if not isinstance(configs, dict) or any(not isinstance(configs.get(c), dict) for c in COMPONENTS):
        raise ModelLoadError(f"{path}: its {ARCHITECTURE_KEY} metadata lacks one of {', '.join(COMPONENTS)}; "
                             "the file is damaged - export it again")
    return configs, True


def _json_metadata(path: Path, metadata: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path}: its {key} metadata is not valid JSON ({error}); the file is damaged - "
                             "export it again") from None


def _apply_original_config(configs: dict[str, dict[str, Any]], yaml_config) -> None:
    if yaml_config.scale_factor is not None:
        configs["vae"]["scaling_factor"] = yaml_config.scale_factor
    if yaml_config.beta_start is not None:
        configs["scheduler"]["beta_start"] = yaml_config.beta_start
    if yaml_config.beta_end is not None:
        configs["scheduler"]["beta_end"] = yaml_config.beta_end
    if yaml_config.num_train_timesteps is not None:
        configs["scheduler"]["num_train_timesteps"] = yaml_config.num_train_timesteps


def _check_noise_schedule(path: Path, state_dict: Mapping[str, torch.Tensor], scheduler: Mapping[str, Any]) -> None:
    """A file's stored noise schedule must be the one training will use; otherwise say so, do not guess."""
    stored = state_dict.get("alphas_cumprod")
    if stored is None:
        return
    from diffusers import DDPMScheduler

    expected = DDPMScheduler.from_config(diffusers_config(scheduler)).alphas_cumprod
    if stored.shape != expected.shape or not torch.allclose(stored.float(), expected.float(), atol=2e-3):
        raise ModelLoadError(f"{path}: its noise schedule (alphas_cumprod) is not the standard scaled-linear "
                             f"{scheduler['beta_start']}..{scheduler['beta_end']} schedule; put the model's .yaml "
                             "config beside it (linear_start/linear_end) so dreamcore trains with its schedule")


def _on_host(state_dict: dict[str, torch.Tensor], snapshot: bool,
             copy_to_host: Callable[[dict], dict] | None) -> dict[str, torch.Tensor]:
    """The weights on the host: through the caller's ``copy_to_host``, else one copy a tensor."""
    detached = {key: t.detach() for key, t in state_dict.items()}
    if copy_to_host is not None:
        return copy_to_host(detached)
    return {key: t.to("cpu", copy=snapshot) for key, t in detached.items()}


def _file_writer(path: Path, state_dict: dict, file_metadata: dict[str, str], half: bool, yaml_text: str,
                 user_metadata: Any) -> Callable[[], Path]:
    """The write of a single file (fp16 when ``half``), its .yaml when given and its .json card when given."""

    def write() -> Path:
        tensors = {key: t.half() if half and t.is_floating_point() else t for key, t in state_dict.items()}
        if path.suffix == ".ckpt":
            write_ckpt(path, tensors, file_metadata)
        else:
            write_safetensors(path, tensors, file_metadata)
        if yaml_text:
            atomic_write_text(path.with_suffix(".yaml"), yaml_text)
        if user_metadata is not None:
            atomic_write_text(path.with_suffix(".json"),
                              json.dumps(user_metadata, indent=4, ensure_ascii=False) + "\n")
        return path

    return write
