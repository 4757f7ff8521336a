"""``python -m dreamcore tiny-model DIR``: a tiny SD-layout model with random weights, for tests and demos."""

from __future__ import annotations

import argparse
import sys

from dreamcore.families.registry import DEFAULT_FAMILY, FAMILY_NAMES

HELP = "Write a tiny model with SD's or SDXL's block layout (random weights, real tokenizer) for tests and the demo."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="Output folder (diffusers) or file/folder for a single file.")
    parser.add_argument("--format", choices=("diffusers", "safetensors", "ckpt"), default=None,
                        help="diffusers (default) or a single file; --webui: safetensors (default) or ckpt")
    parser.add_argument("--family", choices=FAMILY_NAMES, default=DEFAULT_FAMILY.name,
                        help="the model family whose layout the tiny model has (sdxl: two text encoders)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--webui", action="store_true",
                        help="an SD1 model AUTOMATIC1111, Forge and SD.Next load: a single file with its .yaml "
                             "beside it, UNet and VAE of 32 channels, the full-size CLIP-L text encoder (~250 MB)")


def run(args: argparse.Namespace) -> int:
    from dreamcore.fileio import OutputWriteError
    from dreamcore.tiny import save_tiny_model

    fmt = args.format or ("safetensors" if args.webui else "diffusers")
    if args.webui and (fmt == "diffusers" or args.family != DEFAULT_FAMILY.name):
        print("tiny-model --webui writes an SD1 single file: leave out --family, and use --format safetensors "
              "(the default) or ckpt", file=sys.stderr)
        return 2
    try:
        path = save_tiny_model(args.directory, family=args.family, fmt=fmt, seed=args.seed, webui=args.webui)
    except OutputWriteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    what = "model for the WebUIs" if args.webui else "model"
    print(f"tiny {args.family} {what} written to {path}")
    if args.webui:
        print(f"its config: {path.with_suffix('.yaml')} (keep it beside the model: the WebUI reads it)")
    return 0
