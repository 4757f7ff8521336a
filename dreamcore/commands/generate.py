"""``python -m dreamcore generate``: the guide's last step, images from a trained model.

Each PNG carries its settings in the WebUI's "parameters" text (PNG Info reads it) and is numbered
``NNNNN-<seed>.png`` in the output folder, never written over another.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dreamcore.generate import ModelSource

HELP = "Generate images from a model (diffusers folder or single file); the same seed gives the same image."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dreamcore.generate import DEFAULT_SAMPLER, SAMPLERS

    parser.add_argument("--model", required=True,
                        help="Diffusers folder, .safetensors/.ckpt file, or a training run's output_dir (its final "
                             "model; for a LoRA run, its LoRA on the run's base model).")
    parser.add_argument("--lora", default=None,
                        help="A LoRA file (.safetensors; the WebUI's or diffusers' layout) fused into --model at "
                             "weight 1.")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative_prompt", default="")
    parser.add_argument("--seed", type=_seed, default=1337,
                        help="A number, or 'random' (drawn once and written into each image's parameters); "
                             "image i of a batch uses seed + i.")
    # the WebUI's names ("CFG scale", "Steps") as the second spelling
    parser.add_argument("--guidance_scale", "--cfg_scale", dest="guidance_scale", type=float, default=7.5,
                        help="CFG scale.")
    parser.add_argument("--num_inference_steps", "--steps", dest="num_inference_steps", type=int, default=30,
                        help="Sampling steps.")
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
    from dreamcore.grid import GridError
    from dreamcore.models import ModelLoadError

    settings = GenerationSettings(prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed,
                                  guidance_scale=args.guidance_scale, num_inference_steps=args.num_inference_steps,
                                  sampler=args.sampler, width=args.width or args.resolution,
                                  height=args.height or args.resolution, batch_count=args.batch_count)
    try:
        images = generate_images(model_source(args.model, args.lora), settings, out=args.out)
    except GridError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
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


def model_source(model: str, lora: str | None = None) -> "ModelSource":
    """What ``--model`` and ``--lora`` name: a model (with a LoRA fused in), or a training run's output folder,
    whose final model is drawn (a LoRA run's LoRA on the run's base model), as ``dreamcore grid`` draws it."""
    from pathlib import Path

    from dreamcore.config import CONFIG_FILE_NAME
    from dreamcore.generate import ModelSource
    from dreamcore.grid import run_models

    path = Path(model)
    is_run_folder = (path / CONFIG_FILE_NAME).is_file() and not (path / "model_index.json").is_file()
    if is_run_folder and lora is None:
        return run_models(path).checkpoints[-1].source
    return ModelSource(path, lora=Path(lora) if lora else None)
