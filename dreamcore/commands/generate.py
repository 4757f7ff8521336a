"""``python -m dreamcore generate``: the guide's last step, images from a trained model."""

from __future__ import annotations

import argparse
import sys

HELP = "Generate images from a model (diffusers folder or single file); the same seed gives the same image."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Diffusers folder or .safetensors/.ckpt file.")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative_prompt", default="")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--guidance_scale", type=float, default=7.5)
    parser.add_argument("--num_inference_steps", type=int, default=30)
    parser.add_argument("--num_images", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=None,
                        help="Width and height in pixels (default: the model's native size).")
    parser.add_argument("--out", default="generated", help="Output folder.")


def run(args: argparse.Namespace) -> int:
    from dreamcore.generate import GenerateError, generate
    from dreamcore.models import ModelLoadError

    try:
        paths = generate(args.model, args.prompt, negative_prompt=args.negative_prompt, seed=args.seed,
                         guidance_scale=args.guidance_scale, num_inference_steps=args.num_inference_steps,
                         num_images=args.num_images, resolution=args.resolution, out=args.out)
    except (GenerateError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0
