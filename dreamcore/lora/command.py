"""``python -m dreamcore merge-lora BASE LORA OUT [--weight W]``: bake a LoRA into a full single file."""

from __future__ import annotations

import argparse
import sys

from dreamcore.families.registry import AUTO, FAMILY_CHOICES

HELP = "Bake a LoRA (WebUI .safetensors or diffusers LoRA folder) into a base model, written as one single file."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", metavar="BASE", help="base model: a diffusers folder, a .safetensors/.ckpt file, or "
                        "a hub id in the local Hugging Face cache")
    parser.add_argument("lora", metavar="LORA", help="the LoRA: a kohya/WebUI .safetensors or a diffusers LoRA folder")
    parser.add_argument("out", metavar="OUT", help="the merged model to write (.safetensors or .ckpt)")
    parser.add_argument("--weight", type=float, default=1.0,
                        help="strength of the LoRA, as in <lora:name:W> (default: 1.0)")
    parser.add_argument("--full-precision", action="store_true",
                        help="write fp32 weights (default: fp16, half the size, as the WebUI uses them)")
    parser.add_argument("--family", choices=FAMILY_CHOICES, default=AUTO,
                        help="base model type; 'auto' detects it")


def run(args: argparse.Namespace) -> int:
    from dreamcore.convert.errors import ModelLoadError
    from dreamcore.fileio import OutputWriteError
    from dreamcore.lora.kohya import LoraFormatError
    from dreamcore.lora.merge import merge_lora

    try:
        written = merge_lora(args.base, args.lora, args.out, weight=args.weight, half=not args.full_precision,
                             family=args.family)
    except (ModelLoadError, LoraFormatError, OutputWriteError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {written} ({args.lora} at weight {args.weight})")
    return 0
