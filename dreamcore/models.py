"""Loading a base model (diffusers folder, single file or cached hub id), saving a diffusers folder, and
building a sampling pipeline: the model plumbing the trainer and the generator use.

Nothing here downloads: a hub repo id is looked up in the local Hugging Face cache only, and the
tokenizer and configs come from ``dreamcore.assets`` when a model does not carry its own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from dreamcore.components import ModelComponents
from dreamcore.convert.architecture import differs_from_published
from dreamcore.convert.checkpoint_files import check_weights_file
from dreamcore.convert.errors import ModelLoadError
from dreamcore.convert.modules import diffusers_config, text_config_dict
from dreamcore.families.base import ModelFamily
from dreamcore.families.registry import (AUTO, FAMILIES, FAMILY_CHOICES, family_of_folder, family_of_key_layout,
                                         get_family)

log = logging.getLogger(__name__)

__all__ = ["ModelLoadError", "base_model_family", "load_base_model", "load_vae", "save_diffusers_folder", "build_pipeline",
           "resolve_cached_repo", "SAMPLERS"]

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# Sampler names (as the UI and CLI offer them) -> diffusers scheduler classes.
SAMPLERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def load_base_model(path: str, vae: str = "", revision: str = "", family: str = "auto",
                    tokenizer: str = "", variant: str = "") -> ModelComponents:
    """Load a Stable Diffusion model (a family of dreamcore/families) as fp32 CPU modules plus its training noise scheduler.

    ``path``: a diffusers folder, a single ``.safetensors``/``.ckpt`` file (``<name>.yaml`` beside it is
    honoured), or a hub repo id present in the local Hugging Face cache (``revision`` picks its branch).
    ``vae``: a replacement VAE (diffusers folder, single file or cached repo id). ``tokenizer``: a tokenizer
    folder or cached repo id to use instead of the model's. ``variant`` ("fp16"): a diffusers folder's weight
    files of that variant (``*.fp16.safetensors``). The scheduler returned is a ``DDPMScheduler``
    with the family's prediction type (epsilon, or v_prediction for SD2-v).
    """
    source = _base_model_source(path, revision, family)
    if source.is_file():
        from dreamcore.convert.single_file import load_single_file

        components = load_single_file(source, family=family)
    else:
        components = _load_diffusers_folder(source, family, variant)
    if vae:
        components.vae = load_vae(vae)
        components.architecture = _architecture(components)
    if tokenizer:
        components.tokenizer = _load_tokenizer(tokenizer, components.family)
    return components


def _base_model_source(path: str, revision: str, family: str) -> Path:
    """The base model's file or folder, the family asked for checked first."""
    if family not in FAMILY_CHOICES:
        raise ModelLoadError(f"model family {family!r} is unknown; use one of {', '.join(FAMILY_CHOICES)}")
    if not path:
        raise ModelLoadError("no base model given; pass a diffusers folder, a .safetensors/.ckpt file, or a hub "
                             "id that is in the local Hugging Face cache")
    return _resolve_source(path, revision, what="base model")


def base_model_family(path: str, revision: str = "", family: str = "auto") -> ModelFamily:
    """The family of a base model, told from its files without loading its weights: a diffusers folder's configs,
    a single file's key names and metadata. What training decides before the model loads (its resolution) asks
    here; an SDXL refiner is refused now, with the reason. SD2 and SD2-v single files without dreamcore's
    metadata are told apart only when loaded (the WebUI's test forward pass): SD2 is returned for both.
    """
    source = _base_model_source(path, revision, family)
    if source.is_dir():
        return _folder_family(source, family)
    from dreamcore.convert.family import detect_family
    from dreamcore.convert.layout import normalise_legacy_keys
    from dreamcore.convert.sdxl_keys import SDXL_FAMILY, check_sdxl_base, is_sdxl_state_dict
    from dreamcore.convert.single_file import FAMILY_KEY

    shapes, metadata = _single_file_shapes(source)
    try:
        if is_sdxl_state_dict(shapes):
            check_sdxl_base(shapes)
            key_layout = get_family(SDXL_FAMILY).key_layout
        else:
            key_layout = detect_family(normalise_legacy_keys(shapes))
    except ModelLoadError as error:
        raise ModelLoadError(f"{source}: {error}") from None
    named = family if family != AUTO else metadata.get(FAMILY_KEY)
    if named in FAMILIES and get_family(named).key_layout == key_layout:
        return get_family(named)
    return family_of_key_layout(key_layout)


def _single_file_shapes(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A single file's tensors as shapes only (meta tensors; a .ckpt's memory-mapped) and its metadata."""
    import torch

    from dreamcore.convert.checkpoint_files import read_state_dict

    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                return ({key: torch.empty(handle.get_slice(key).get_shape(), device="meta") for key in handle.keys()},
                        dict(handle.metadata() or {}))
        except SafetensorError:
            pass  # read_state_dict below reads the file whole and says what is wrong with it
    # a .ckpt is a pickle: its key names are known only once read (read_state_dict refuses an unsafe one)
    return read_state_dict(path)


def load_vae(source: str, revision: str = "") -> Any:
    """A VAE from a diffusers VAE folder (or a model folder's ``vae/``), a single file, or a cached repo id."""
    path = _resolve_source(source, revision, what="VAE")
    if path.is_file():
        from dreamcore.convert.single_file import load_vae_file

        return load_vae_file(path)
    if (path / "config.json").is_file():
        return _from_pretrained("AutoencoderKL", path, None, "VAE")
    if (path / "vae" / "config.json").is_file():
        return _from_pretrained("AutoencoderKL", path, "vae", "VAE")
    raise ModelLoadError(f"{path} is not a VAE: no config.json (diffusers VAE folder) or vae/config.json (model "
                         "folder) in it; give a diffusers VAE folder or a single-file VAE (.safetensors/.ckpt)")


def save_diffusers_folder(components: ModelComponents, directory: str | Path, dtype: Any = None) -> Path:
    """Write the model as a diffusers folder, atomically (a complete folder or none under that name), with every
    weight in one dtype: ``dtype``, fp32 by default.

    ``diffusers.StableDiffusionPipeline.from_pretrained(directory)`` loads it offline (no safety checker) and
    generates at its defaults: a folder mixing dtypes (bf16 trained weights beside an fp32 VAE) would load
    as saved and fail at the first matrix product.
    """
    import torch

    from dreamcore.fileio import atomic_directory

    dtype = dtype or torch.float32
    same = dataclasses.replace(components, unet=weights_in(components.unet, dtype),
                               vae=weights_in(components.vae, dtype),
                               **{name: weights_in(module, dtype) for name, module in components.text_encoders().items()})
    directory = Path(directory)
    with atomic_directory(directory, replaces="model_index.json") as temp:
        _pipeline(same, same.scheduler).save_pretrained(str(temp), safe_serialization=True)
        for name in get_family(same.family).tokenizer_names:
            _add_slow_tokenizer_files(getattr(same, name), temp / name)
    return directory


def weights_in(module: Any, dtype: Any) -> Any:
    """``module`` itself when its floating-point weights are all ``dtype``, else a copy on the CPU in ``dtype``
    (the module is left as it is: training may still hold it)."""
    import copy

    import torch

    tensors = [*module.parameters(), *module.buffers()]
    if all(t.dtype == dtype for t in tensors if t.is_floating_point()):
        return module

    def converted(tensor: torch.Tensor) -> torch.Tensor:
        moved = tensor.detach().to("cpu", dtype if tensor.is_floating_point() else tensor.dtype)
        return moved.contiguous()

    # deepcopy with every tensor already replaced in its memo: the copy is made on the CPU in the new dtype,
    # without first duplicating the module where it lives (on the GPU after training).
    memo: dict[int, Any] = {id(p): torch.nn.Parameter(converted(p), requires_grad=False) for p in module.parameters()}
    memo.update({id(b): converted(b) for b in module.buffers()})
    return copy.deepcopy(module, memo)


def _add_slow_tokenizer_files(tokenizer: Any, folder: Path) -> None:
    """transformers 5 saves only tokenizer.json; the WebUIs' transformers 4.x CLIPTokenizer needs vocab.json
    and merges.txt. When the tokenizer is the standard CLIP one, add dreamcore's shipped copies of both."""
    import shutil

    from dreamcore.assets import TOKENIZER_DIR

    if (folder / "vocab.json").is_file() or not folder.is_dir():
        return
    shipped_vocab = json.loads((TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    if tokenizer.get_vocab() != shipped_vocab:
        log.warning("%s: the tokenizer is not the standard CLIP one; its folder works with transformers 5 only",
                    folder)
        return
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(TOKENIZER_DIR / name, folder / name)


def build_pipeline(components: ModelComponents, scheduler: str = "ddim") -> Any:
    """A ``StableDiffusionPipeline`` over the given modules (shared, not copied) for sampling.

    ``scheduler`` names the sampler (see ``SAMPLERS``); it inherits the model's noise schedule and
    prediction type. No safety checker; the progress bar is off (callers report progress themselves).
    """
    import diffusers

    if scheduler not in SAMPLERS:
        raise ValueError(f"unknown sampler {scheduler!r}; use one of {', '.join(SAMPLERS)}")
    sampler = getattr(diffusers, SAMPLERS[scheduler]).from_config(components.scheduler.config)
    pipeline = _pipeline(components, sampler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def resolve_cached_repo(repo_id: str, revision: str = "") -> Path:
    """The snapshot folder of a hub repo in the local Hugging Face cache; reads the cache's layout on disk
    (models--owner--name/refs/<branch> -> snapshots/<commit>) and never calls anything that could download."""
    cache_dir = hub_cache_dir()
    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    ref_file = repo_dir / "refs" / (revision or "main")
    commit = ref_file.read_text(encoding="utf-8").strip() if ref_file.is_file() else (revision or "")
    snapshot = repo_dir / "snapshots" / commit if commit else None
    if snapshot is not None and snapshot.is_dir():
        return snapshot
    at = f" at revision {revision!r}" if revision else ""
    raise ModelLoadError(
        f"{repo_id}{at} is not in the local Hugging Face cache ({cache_dir}), and dreamcore never downloads. "
        f"On a machine with internet run `hf download {repo_id}{f' --revision {revision}' if revision else ''}`"
        f" and copy the cache folder models--{repo_id.replace('/', '--')} into {cache_dir} (or set "
        "HF_HUB_CACHE), or pass a local diffusers folder or .safetensors file instead. (If "
        f"{repo_id!r} was meant as a local path: it does not exist.)")


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps its cache, read from the environment now (HF_HUB_CACHE, HF_HOME)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _resolve_source(name: str, revision: str, what: str) -> Path:
    from dreamcore.config import HUB_REPO_ID

    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(f"{path}: a {what} file must be .safetensors or .ckpt (got {path.suffix!r})")
        return path
    if HUB_REPO_ID.match(name) and not name.startswith((".", "/", "~")):
        return resolve_cached_repo(name, revision)
    raise ModelLoadError(f"{what} {name!r} not found: it is neither an existing file or folder nor a hub id "
                         "(owner/name); check the path")


def _load_diffusers_folder(folder: Path, family: str, variant: str = "") -> ModelComponents:
    chosen = _folder_family(folder, family)
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = _read_json(scheduler_file) if scheduler_file.is_file() else None
    names = ("unet", "vae", *chosen.text_encoder_names)
    if variant and not any(_has_variant(folder / component, variant) for component in names):
        raise ModelLoadError(f"{folder}: no weights of the variant {variant!r} (*.{variant}.safetensors) in it; leave "
                             "variant empty to read its plain weights")
    unet = _from_pretrained("UNet2DConditionModel", folder, "unet", "UNet", variant)
    vae = _from_pretrained("AutoencoderKL", folder, "vae", "VAE", variant)
    text_encoders = [_from_pretrained(class_name, folder, name, name.replace("_", " "), variant).float().eval()
                     for name, class_name in zip(chosen.text_encoder_names, chosen.text_encoder_classes)]
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config({**diffusers_config(scheduler_config or chosen.shipped_config("scheduler")),
                                           "prediction_type": chosen.prediction_type})
    tokenizers = [_load_tokenizer(str(folder / name), chosen.name) if (folder / name).is_dir()
                  else _shipped_tokenizer(folder, chosen.name, index)
                  for index, name in enumerate(chosen.tokenizer_names)]
    components = ModelComponents(chosen.name, unet.float().eval(), vae.float().eval(), text_encoders[0],
                                 tokenizers[0], scheduler,
                                 text_encoder_2=text_encoders[1] if len(text_encoders) > 1 else None,
                                 tokenizer_2=tokenizers[1] if len(tokenizers) > 1 else None)
    components.architecture = _architecture(components)
    return components


def _folder_family(folder: Path, family: str) -> ModelFamily:
    """The family of a diffusers folder (``family``, when given, checked against it); an incomplete folder or an
    SDXL refiner is refused with the reason."""
    if not (folder / "model_index.json").is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise ModelLoadError(f"{folder} is not a diffusers model folder (no model_index.json; found {found}); give "
                             "a diffusers folder or the .safetensors/.ckpt file itself")
    model_index = _read_json(folder / "model_index.json")
    clip_l = model_index.get("text_encoder")
    if "text_encoder_2" in model_index and not (isinstance(clip_l, list) and clip_l and clip_l[0]):
        raise ModelLoadError(f"{folder} is an SDXL refiner (its model_index.json has text_encoder_2 but no "
                             "text_encoder, CLIP ViT-L); the refiner only polishes the base model's images. Use SDXL "
                             "base 1.0 or a fine-tune of it as the base model")
    for component in ("unet", "vae", "text_encoder", *(["text_encoder_2"] if "text_encoder_2" in model_index else [])):
        if not (folder / component / "config.json").is_file():
            raise ModelLoadError(f"{folder} lacks its {component} (no {component}/config.json); the folder is "
                                 "incomplete - copy or download the whole model again")
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = _read_json(scheduler_file) if scheduler_file.is_file() else {}
    detected = family_of_folder(model_index, _read_json(folder / "text_encoder" / "config.json"), scheduler_config)
    if detected is None:
        raise ModelLoadError(f"{folder}: its model_index.json and text_encoder/config.json match no model family "
                             f"dreamcore knows ({', '.join(f.label for f in FAMILIES.values())}); give a Stable "
                             "Diffusion model folder")
    chosen = detected if family == AUTO else get_family(family)
    if not chosen.same_weights_as(detected):
        raise ModelLoadError(f"{folder}: family {chosen.name} was asked for but its text encoder is "
                             f"{detected.text_encoder_label} ({detected.label}); pick the right family or 'auto'")
    if chosen is not detected:
        log.warning("%s: its scheduler says %s; using %s as asked", folder, detected.name, chosen.name)
    return chosen


def _read_json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path} could not be read ({error}); the folder is damaged - fix the file or copy the "
                             "model again") from None
    if not isinstance(values, dict):
        raise ModelLoadError(f"{path} holds no JSON object; the folder is damaged - copy the model again")
    return values


def _architecture(components: ModelComponents) -> dict[str, dict[str, Any]] | None:
    configs = {"unet": diffusers_config(components.unet.config), "vae": diffusers_config(components.vae.config),
               "text_encoder": text_config_dict(components.text_encoder.config),
               "scheduler": diffusers_config(components.scheduler.config)}
    return configs if differs_from_published(configs, components.family) else None


def _from_pretrained(class_name: str, folder: Path, subfolder: str | None, what: str, variant: str = "") -> Any:
    from safetensors import SafetensorError

    if class_name.startswith("CLIP"):
        import transformers as library
    else:
        import diffusers as library
    location = folder / subfolder if subfolder else folder
    kwargs: dict[str, Any] = {"local_files_only": True}
    if subfolder:
        kwargs["subfolder"] = subfolder
    # as diffusers does, a component without files of the variant asked for is read from its plain files
    variant = variant if variant and _has_variant(location, variant) else _only_variant(location)
    if variant:
        kwargs["variant"] = variant
    try:
        for weights_file in sorted(location.glob("*.safetensors")):
            check_weights_file(weights_file)
    except ModelLoadError as error:
        raise ModelLoadError(f"{location}: could not load the {what}: {error}") from None
    try:
        model, loading = getattr(library, class_name).from_pretrained(str(folder), output_loading_info=True,
                                                                      **kwargs)
    except (OSError, ValueError, SafetensorError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{location}: could not load the {what} ({error}); the folder is incomplete or "
                             "damaged - copy or download it again") from None
    # The libraries fill weights missing from the file with random values and only warn: refused here.
    missing = [key for key in loading.get("missing_keys", ()) if not key.endswith("position_ids")]
    mismatched = loading.get("mismatched_keys", ())
    if missing or mismatched:
        detail = f"no weight {missing[0]!r}" if missing else f"weight {mismatched[0][0]!r} has the wrong shape"
        raise ModelLoadError(f"{location}: the {what}'s weights do not fit its config.json: {detail} "
                             f"({len(missing)} missing, {len(mismatched)} of the wrong shape); the folder is damaged "
                             "or mixes models - copy or download it again")
    return model


def _has_variant(location: Path, variant: str) -> bool:
    return any(location.glob(f"*.{variant}.safetensors")) or any(location.glob(f"*.{variant}.bin"))


def _only_variant(location: Path) -> str | None:
    """"fp16" when a component folder holds only fp16-variant weights (as the guide's --revision fp16 gives)."""
    names = [p.name for p in location.glob("*") if p.suffix in (".safetensors", ".bin")]
    plain = [n for n in names if n.count(".") == 1]
    fp16 = [n for n in names if ".fp16." in n]
    return "fp16" if fp16 and not plain else None


def _load_tokenizer(source: str, family: str) -> Any:
    from transformers import CLIPTokenizer

    path = Path(source).expanduser()
    if not path.exists():
        path = _resolve_source(source, "", what="tokenizer")
        if (path / "tokenizer").is_dir():
            path = path / "tokenizer"
    # transformers 5 builds an empty tokenizer from a folder without vocabulary, which fails at the first prompt
    if path.is_dir() and not ((path / "tokenizer.json").is_file() or
                              ((path / "vocab.json").is_file() and (path / "merges.txt").is_file())):
        raise ModelLoadError(f"{path}: no tokenizer in this folder (neither vocab.json with merges.txt nor "
                             "tokenizer.json); copy the model's folder again, or delete this folder to use dreamcore's "
                             "shipped CLIP tokenizer")
    try:
        return CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path}: could not load the tokenizer ({error}); give a folder with vocab.json and "
                             "merges.txt") from None


def _shipped_tokenizer(folder: Path, family: str, index: int = 0) -> Any:
    log.info("%s has no %s/; using dreamcore's shipped CLIP tokenizer", folder,
             get_family(family).tokenizer_names[index])
    return get_family(family).shipped_tokenizer(index)


def _pipeline(components: ModelComponents, scheduler: Any) -> Any:
    return get_family(components.family).pipeline(components, scheduler)
