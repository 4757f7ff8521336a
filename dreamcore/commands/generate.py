"""``python -m dreamcore generate``: the guide's last step, images from a trained model.

Each PNG carries its settings in the WebUI's "parameters" text (PNG Info reads it) and is numbered
``NNNNN-<seed>.png`` in the output folder, never written over another.
"""

from __future__ import annotations

import argparse
import sys

HELP = "Generate images from a model (diffusers folder or single file); the same seed gives the same image."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dreamcore.generate import DEFAULT_SAMPLER, SAMPLERS

    parser.add_argument("--model", required=True, help="Diffusers folder or .safetensors/.ckpt file.")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative_prompt", default="")
    parser.add_argument("--seed", type=_seed, default=1337,
                        help="A number, or 'random' (drawn once and written into each image's parameters); "
                             "image i of a batch uses seed + i.")
    parser.add_argument("--guidance_scale", type=float, default=7.5, help="CFG scale.")
    parser.add_argument("--num_inference_steps", type=int, default=30, help="Sampling steps.")
    parser.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=list(SAMPLERS),
                        help="The WebUI's sampler of that name.")
    parser.add_argument("--batch_count", "--num_images", dest="batch_count", type=int, default=1,
                        help="How many images (seeds seed, seed+1, ...).")
    parser.add_argument("--width", type=int, default=None, help="Width in pixels (default: the model's size).")
    parser.add_argument("--height", type=int, default=None, help="Height in pixels (default: the model's size).")
    parser.add_argument("--resolution", type=int, default=None, help="Width and height at once.")
    parser.add_argument("--out", default="generated", help="Output folder.")


def _seed(text: str) -> int | None:
    if text.strip().lower() in ("random", "-1"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a whole number nor 'random'") from None


def run(args: argparse.Namespace) -> int:
    from dreamcore.fileio import OutputWriteError
    from dreamcore.generate import GenerateError, GenerationSettings, generate_images
    from dreamcore.models import ModelLoadError

    settings = GenerationSettings(prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed,
                                  guidance_scale=args.guidance_scale, num_inference_steps=args.num_inference_steps,
                                  sampler=args.sampler, width=args.width or args.resolution,
                                  height=args.height or args.resolution, batch_count=args.batch_count)
    try:
        images = generate_images(args.model, settings, out=args.out)
    except GenerateError as error:
        print("error: the settings have problems:\n" + "\n".join(f"  - {p}" for p in error.problems), file=sys.stderr)
        return 1
    except (ModelLoadError, OutputWriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for image in images:
        print(image.path)
    if args.seed is None:
        print(f"seed: {images[0].seed} (random)", file=sys.stderr)
    return 0
