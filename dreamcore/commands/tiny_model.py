"""``python -m dreamcore tiny-model DIR``: a tiny SD-layout model with random weights, for tests and demos."""

from __future__ import annotations

import argparse

HELP = "Write a tiny model with SD's block layout (random weights, real tokenizer) for tests and the demo."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="Output folder (diffusers) or file/folder for a single file.")
    parser.add_argument("--format", choices=("diffusers", "safetensors", "ckpt"), default="diffusers")
    from dreamcore.families.registry import DEFAULT_FAMILY, FAMILY_NAMES

    parser.add_argument("--family", choices=FAMILY_NAMES, default=DEFAULT_FAMILY.name)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from dreamcore.tiny import save_tiny_model

    path = save_tiny_model(args.directory, family=args.family, fmt=args.format, seed=args.seed)
    print(f"tiny {args.family} model written to {path}")
    return 0
