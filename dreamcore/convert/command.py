"""``python -m dreamcore convert SRC DST``: single file <-> diffusers folder, whole models or VAEs alone."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dreamcore.families.registry import AUTO, FAMILY_CHOICES, get_family

HELP = "Convert a model between a diffusers folder and a single .safetensors/.ckpt file (VAE alone too)."
FORMATS = ("safetensors", "ckpt", "diffusers")

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="a diffusers folder, a .safetensors/.ckpt file, a VAE (folder "
                        "or file), or a hub id in the local Hugging Face cache")
    parser.add_argument("dst", metavar="DST", help="where to write: a .safetensors/.ckpt file or a folder")
    parser.add_argument("--to", choices=FORMATS, default=None,
                        help="output format (default: from DST's suffix; a folder means diffusers)")
    parser.add_argument("--half", action="store_true",
                        help="store weights as fp16 (half the size; the round trip is exact for fp16 inputs)")
    parser.add_argument("--use-ema", action="store_true", help="take the UNet's EMA weights from a single file")
    parser.add_argument("--family", choices=FAMILY_CHOICES, default=AUTO,
                        help="model type; 'auto' detects it (a .yaml beside the file is honoured)")
    parser.add_argument("--original-config", metavar="YAML", default=None,
                        help="the model's original .yaml config, when it is not beside SRC under SRC's name")
    parser.epilog = EPILOG


EPILOG = """Directions: single file -> diffusers folder, diffusers folder (or cached hub id) -> single file, and the
same for a VAE alone. The single file uses the WebUIs' key layout; .safetensors is the default, .ckpt is
written so that the WebUI's safe unpickler accepts it. An SD2 v-prediction model also gets DST.yaml
beside it (the WebUI needs it). --half stores fp16: half the size; converting an fp16 file with --half
reproduces it bit for bit, converting fp32 weights with --half rounds them. .ckpt input is read without
running any code stored in it.
"""


def run(args: argparse.Namespace) -> int:
    from dreamcore.convert.errors import ModelLoadError
    from dreamcore.fileio import OutputWriteError

    try:
        destination = convert(args.src, args.dst, to=args.to, half=args.half, use_ema=args.use_ema,
                              family=args.family, original_config=args.original_config)
    except (ModelLoadError, OutputWriteError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {destination}")
    return 0


def convert(src: str, dst: str, to: str | None = None, half: bool = False, use_ema: bool = False,
            family: str = "auto", original_config: str | None = None) -> Path:
    """Convert ``src`` to ``dst`` (format from ``to`` or DST's suffix); returns the path written."""
    fmt, destination = _output_format(Path(dst), to)
    src = str(_local_source(src))
    from dreamcore.lora.files import looks_like_lora

    if looks_like_lora(src):  # LoRA: the WebUI's kohya .safetensors <-> a diffusers LoRA folder (dreamcore.lora)
        if fmt == "ckpt" or use_ema:
            raise ValueError("a LoRA converts to a .safetensors file (the WebUI's layout) or a folder (diffusers); "
                             "--to ckpt and --use-ema do not apply")
        from dreamcore.lora.files import convert_lora

        return convert_lora(src, destination, family=family, half=half)
    if _is_vae(src):
        if use_ema:
            raise ValueError("--use-ema applies to full single-file models, not to a VAE")
        return _convert_vae(src, destination, fmt, half)
    from dreamcore.convert.single_file import load_single_file, save_single_file
    from dreamcore.models import load_base_model, save_diffusers_folder

    source = Path(src)
    if (use_ema or original_config) and not source.is_file():
        raise ValueError("--use-ema and --original-config need a single-file source (.ckpt/.safetensors)")
    components = (load_single_file(source, family=family, use_ema=use_ema, config_yaml=original_config)
                  if source.is_file() else load_base_model(src, family=family))
    if fmt == "diffusers":
        import torch

        return save_diffusers_folder(components, destination, torch.float16 if half else torch.float32)
    written = save_single_file(components, destination, half=half)
    if get_family(components.family).needs_original_config:
        log.info("wrote %s beside it: the WebUI needs it to know this is a v-prediction model",
                 written.with_suffix(".yaml").name)
    return written


def _output_format(dst: Path, to: str | None) -> tuple[str, Path]:
    suffix_format = {".safetensors": "safetensors", ".ckpt": "ckpt"}.get(dst.suffix)
    if to is None:
        return suffix_format or "diffusers", dst
    if to == "diffusers":
        if suffix_format:
            raise ValueError(f"--to diffusers writes a folder, but {dst} ends in {dst.suffix}; drop the suffix")
        return to, dst
    if suffix_format and suffix_format != to:
        raise ValueError(f"--to {to} but {dst} ends in {dst.suffix}; make them agree")
    return to, dst if suffix_format else dst.with_name(dst.name + "." + to)


def _local_source(src: str) -> Path:
    """SRC itself, or the snapshot folder of a hub id in the local Hugging Face cache."""
    from dreamcore.config import HUB_REPO_ID

    path = Path(src).expanduser()
    if path.exists() or not HUB_REPO_ID.match(src):
        return path
    from dreamcore.models import resolve_cached_repo

    return resolve_cached_repo(src)


def _is_vae(src: str) -> bool:
    """A diffusers VAE folder, or a single file whose keys are a VAE's alone."""
    path = Path(src)
    if path.is_dir():
        config = path / "config.json"
        return config.is_file() and '"AutoencoderKL"' in config.read_text(encoding="utf-8", errors="replace")
    if not path.is_file():
        return False
    from dreamcore.convert.family import VAE_ONLY_PROBE, UNET_INPUT_CONV

    keys = _single_file_keys(path)
    return VAE_ONLY_PROBE in keys and UNET_INPUT_CONV not in keys


def _single_file_keys(path: Path) -> set[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return set(handle.keys())
    except SafetensorError:
        from dreamcore.convert.checkpoint_files import read_state_dict

        return set(read_state_dict(path)[0])  # not safetensors: read it (safely) to see its keys


def _convert_vae(src: str, destination: Path, fmt: str, half: bool) -> Path:
    from dreamcore.convert.single_file import save_vae_file
    from dreamcore.fileio import atomic_directory
    from dreamcore.models import load_vae

    vae = load_vae(src)
    if fmt != "diffusers":
        return save_vae_file(vae, destination, half=half)
    if half:
        vae.half()
    with atomic_directory(destination, replaces="config.json") as temp:
        vae.save_pretrained(str(temp), safe_serialization=True)
    return destination
