"""``python -m dreamcore grid OUTPUT_DIR``: every saved checkpoint of a run against a few prompts, one picture.

Columns are the run's checkpoints in step order with the final model last; rows are the prompts (by default
the instance prompt, a scene, a style and the class prompt); every cell is drawn from the same seed, so what
differs between columns is the weights. The grid is written, numbered, into ``OUTPUT_DIR/grids/``.
"""

from __future__ import annotations

import argparse
import sys

HELP = "Compare a run's checkpoints side by side: checkpoints (columns) x prompts (rows) at one seed, one PNG."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dreamcore.generate import DEFAULT_SAMPLER, SAMPLERS
    from dreamcore.grid import DEFAULT_EXTRA_PROMPTS

    parser.add_argument("output_dir", metavar="OUTPUT_DIR",
                        help="A training run's output folder (train_config.json, checkpoints/, the final model).")
    parser.add_argument("--prompt", action="append", default=None,
                        help="A row (repeatable; {} stands for the instance prompt). Default: the instance prompt, "
                             f"{' | '.join(DEFAULT_EXTRA_PROMPTS)}, and the class prompt.")
    parser.add_argument("--seed", type=int, default=None, help="The seed of every cell (default: the run's seed).")
    parser.add_argument("--negative_prompt", default="")
    parser.add_argument("--guidance_scale", "--cfg_scale", dest="guidance_scale", type=float, default=7.5,
                        help="CFG scale.")
    parser.add_argument("--num_inference_steps", "--steps", dest="num_inference_steps", type=int, default=30,
                        help="Sampling steps.")
    parser.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=list(SAMPLERS))
    parser.add_argument("--resolution", type=int, default=None,
                        help="Cell size in pixels (default: the run's training resolution).")
    parser.add_argument("--out", default=None, help="Folder for the grid (default: OUTPUT_DIR/grids).")


def run(args: argparse.Namespace) -> int:
    from dreamcore.fileio import OutputWriteError
    from dreamcore.generate import GenerateError
    from dreamcore.models import ModelLoadError

    try:
        path = make_grid(args)
    except GenerateError as error:
        print("error: the settings have problems:\n" + "\n".join(f"  - {p}" for p in error.problems), file=sys.stderr)
        return 1
    except (ValueError, ModelLoadError, OutputWriteError) as error:  # GridError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


def make_grid(args: argparse.Namespace):
    from pathlib import Path

    from dreamcore.generate import GenerationSettings, parameters_text, save_png
    from dreamcore.grid import default_prompts, expand_prompts, render_grid, run_models

    models = run_models(args.output_dir)
    prompts = (expand_prompts(args.prompt, models.instance_prompt) if args.prompt
               else default_prompts(models.instance_prompt, models.class_prompt))
    size = args.resolution or models.resolution
    settings = GenerationSettings(prompt=prompts[0] if prompts else "", negative_prompt=args.negative_prompt,
                                  seed=models.seed if args.seed is None else args.seed,
                                  guidance_scale=args.guidance_scale, num_inference_steps=args.num_inference_steps,
                                  sampler=args.sampler, width=size, height=size)
    grid = render_grid(models.checkpoints, prompts, settings, class_prompt=models.class_prompt, photos_dir=models.photos_dir,
                       progress=lambda message: print(message, file=sys.stderr))
    if grid.note:
        print(grid.note, file=sys.stderr)
    for checkpoint, score in zip(grid.checkpoints, grid.likeness):
        print(f"{checkpoint.label}: likeness {score:.3f}" if score is not None else f"{checkpoint.label}: -",
              file=sys.stderr)
    out = Path(args.out) if args.out else models.output_dir / "grids"
    # The first cell's parameters, as the WebUI's grids carry: PNG Info then shows how the cells were drawn.
    first = grid.checkpoints[0].source
    text = parameters_text(settings, settings.seed, size, size, first.name, lora_name=first.lora_name)
    return save_png(grid.image, out, settings.seed, text)
