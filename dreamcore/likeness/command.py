"""``python -m dreamcore score``: how much each checkpoint's samples look like the person in the photos.

Each MODEL_OR_SAMPLES is one of:
- a model (a diffusers folder or a .safetensors/.ckpt file): fixed-seed samples of --instance_prompt, its
  variations and --class_prompt are generated, saved under --out and scored;
- a folder of samples written by a previous score run or training (``samples.json`` inside), or any
  folder of images (all one prompt; --class_samples adds class-prompt images);
- a folder of such folders, e.g. training's ``samples/`` with one ``step-NNNNNN`` folder per checkpoint;
- a folder of models, e.g. training's ``checkpoints/`` (each file or diffusers folder one checkpoint).
Several checkpoints give a table with the best one marked, a plot over steps and ``scores.json``.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

HELP = "Score checkpoints (or folders of samples) for likeness to your photos, class drift and variety."

MODEL_SUFFIXES = (".safetensors", ".ckpt")
STEP_IN_NAME = re.compile(r"(\d+)(?!.*\d)")  # the last number in a name: 'model-step-000500' -> 500


@dataclass
class Checkpoint:
    """One thing to score, as found on disk."""

    label: str
    step: int | None
    model: Path | None = None
    samples: dict[str, list[Path]] = field(default_factory=dict)
    class_samples: list[Path] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dreamcore.likeness.evaluate import DEFAULT_PROMPT_VARIATIONS
    from dreamcore.likeness.selection import DEFAULT_DRIFT_BOUND, DEFAULT_VARIETY_BOUND

    parser.add_argument("targets", nargs="+", metavar="MODEL_OR_SAMPLES",
                        help="Model file/folder, folder of checkpoints, folder of samples, or folder of "
                             "per-checkpoint sample folders.")
    parser.add_argument("--photos", required=True, help="Folder of the training photos of the person.")
    parser.add_argument("--instance_prompt", default="", help="Prompt naming the person (needed for models), "
                        "e.g. 'photo of sks person'.")
    parser.add_argument("--class_prompt", default="", help="Class prompt, e.g. 'photo of a person'; "
                        "empty = no class drift.")
    parser.add_argument("--class_samples", default="", help="Folder of class-prompt images, for sample folders.")
    parser.add_argument("--prompt_variation", action="append", default=None,
                        help=f"A variation of the instance prompt with {{}} where it goes (repeatable; default: "
                             f"{' | '.join(DEFAULT_PROMPT_VARIATIONS)}).")
    parser.add_argument("--num_samples", type=int, default=4, help="Samples per prompt (seeds seed, seed+1, ...).")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--num_inference_steps", type=int, default=30)
    parser.add_argument("--guidance_scale", type=float, default=7.5)
    parser.add_argument("--negative_prompt", default="")
    parser.add_argument("--resolution", type=int, default=None, help="Sample size in pixels (default: the model's).")
    parser.add_argument("--drift_bound", type=float, default=DEFAULT_DRIFT_BOUND,
                        help="Highest class drift a best checkpoint may have (0.5 = dlib's same-person line).")
    parser.add_argument("--variety_bound", type=float, default=DEFAULT_VARIETY_BOUND,
                        help="Lowest variety (mean pixel difference of a prompt's samples) a best checkpoint "
                             "may have.")
    parser.add_argument("--out", default="likeness-scores",
                        help="Folder for generated samples, scores.json and likeness.png.")


def run(args: argparse.Namespace) -> int:
    from dreamcore.images import ImageLoadError
    from dreamcore.likeness.faces import ScoringUnavailableError, scoring_available
    from dreamcore.likeness.scores import LikenessError

    available, message = scoring_available()
    if not available:
        print(f"error: {message}", file=sys.stderr)
        return 1
    try:
        return _score(args)
    except (LikenessError, ImageLoadError, ScoringUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _score(args: argparse.Namespace) -> int:
    from dreamcore.images import scan_images
    from dreamcore.likeness.evaluate import DEFAULT_PROMPT_VARIATIONS, evaluate_pipeline
    from dreamcore.likeness.report import format_table, plot_scores, save_report
    from dreamcore.likeness.scores import LikenessError, embed_photos, score_images
    from dreamcore.likeness.selection import select_best

    photos, skipped = scan_images(args.photos)
    for path, reason in skipped:
        print(f"skipped photo {path}: {reason}", file=sys.stderr)
    if not photos:
        raise LikenessError(f"--photos {args.photos}: no usable photos in this folder")
    checkpoints = [checkpoint for target in args.targets for checkpoint in find_checkpoints(Path(target))]
    if any(c.model is not None for c in checkpoints) and not args.instance_prompt.strip():
        raise LikenessError("--instance_prompt is needed to generate samples from a model, "
                            "e.g. --instance_prompt 'photo of sks person'")
    class_samples = _class_samples(args.class_samples)
    reference = embed_photos(photos)
    out = Path(args.out)
    variations = args.prompt_variation if args.prompt_variation is not None else DEFAULT_PROMPT_VARIATIONS

    scores = []
    for checkpoint in checkpoints:
        print(f"scoring {checkpoint.label} ...", file=sys.stderr)
        if checkpoint.model is not None:
            pipeline = _load_pipeline(checkpoint.model)
            score = evaluate_pipeline(pipeline, photos, args.instance_prompt, args.class_prompt, checkpoint.step,
                                      seed=args.seed, num_samples=args.num_samples,
                                      num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                                      prompt_variations=variations, out_dir=out / "samples" / _folder_name(checkpoint),
                                      negative_prompt=args.negative_prompt, label=checkpoint.label, reference=reference,
                                      height=args.resolution, width=args.resolution)
            del pipeline
        else:
            score = score_images(checkpoint.samples, checkpoint.class_samples or class_samples, photos,
                                 step=checkpoint.step, label=checkpoint.label, reference=reference)
        scores.append(score)

    order = sorted(range(len(scores)), key=lambda i: (scores[i].step is None, scores[i].step or 0))
    scores = [scores[i] for i in order]
    best = select_best(scores, args.drift_bound, args.variety_bound)
    print(format_table(scores, best, args.drift_bound, args.variety_bound))
    report = save_report(out / "scores.json", scores, args.drift_bound, args.variety_bound)
    plot = plot_scores(scores, out / "likeness.png", best, args.drift_bound, args.variety_bound)
    print(f"scores: {report}\nplot: {plot}")
    if best is not None:
        print(f"best: {scores[best].label} (step {scores[best].step})")
    return 0


def find_checkpoints(target: Path) -> list[Checkpoint]:
    """What ``target`` holds to score: a model, one folder of samples, or one sample folder per checkpoint."""
    from dreamcore.likeness.evaluate import MANIFEST_NAME
    from dreamcore.likeness.scores import LikenessError

    if not target.exists():
        raise LikenessError(f"{target} does not exist; give a model file/folder or a folder of samples")
    if target.is_file():
        if target.suffix.lower() in MODEL_SUFFIXES:
            return [Checkpoint(target.name, _step_in(target.stem), model=target)]
        raise LikenessError(f"{target} is neither a model (.safetensors, .ckpt) nor a folder of samples")
    if (target / "model_index.json").is_file():
        return [Checkpoint(target.name, _step_in(target.name), model=target)]
    if (target / MANIFEST_NAME).is_file() or _images_in(target):
        return [_sample_folder(target)]
    entries = sorted(p for p in target.iterdir() if not p.name.startswith("."))
    # A folder of checkpoints (training's checkpoints/: single files, or diffusers folders) ...
    models = [Checkpoint(p.name, _step_in(p.stem), model=p) for p in entries
              if (p.is_file() and p.suffix.lower() in MODEL_SUFFIXES) or (p / "model_index.json").is_file()]
    # ... or a folder of sample folders (training's samples/, one step-NNNNNN folder per checkpoint).
    sample_folders = [_sample_folder(p) for p in entries
                      if p.is_dir() and ((p / MANIFEST_NAME).is_file() or _images_in(p))]
    if not models and not sample_folders:
        raise LikenessError(f"{target} holds no images, no samples.json, no models and no folders of samples; "
                            "give a model, a folder of checkpoints, a folder of generated images, or "
                            "training's samples/ folder")
    return models + sample_folders


def _sample_folder(folder: Path) -> Checkpoint:
    from dreamcore.likeness.evaluate import MANIFEST_NAME, read_manifest

    if (folder / MANIFEST_NAME).is_file():
        samples, class_samples, step = read_manifest(folder)
        return Checkpoint(folder.name, step if step is not None else _step_in(folder.name), samples=samples,
                          class_samples=class_samples)
    return Checkpoint(folder.name, _step_in(folder.name), samples={folder.name: _images_in(folder)})


def _images_in(folder: Path) -> list[Path]:
    from dreamcore.images import IMAGE_SUFFIXES

    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_samples(folder: str) -> list[Path]:
    from dreamcore.likeness.scores import LikenessError

    if not folder:
        return []
    path = Path(folder)
    if not path.is_dir():
        raise LikenessError(f"--class_samples {folder}: not a folder of class-prompt images")
    images = _images_in(path)
    if not images:
        raise LikenessError(f"--class_samples {folder}: holds no images")
    return images


def _load_pipeline(model: Path):
    from dreamcore.likeness.scores import LikenessError
    from dreamcore.models import ModelLoadError, build_pipeline, load_base_model

    import torch

    try:
        components = load_base_model(str(model))
    except ModelLoadError as error:
        raise LikenessError(f"cannot load the model to score: {error}") from error
    # The device and precision of 'dreamcore generate', so a sample here is the image generate gives.
    return build_pipeline(components).to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def _step_in(name: str) -> int | None:
    match = STEP_IN_NAME.search(name)
    return int(match.group(1)) if match else None


def _folder_name(checkpoint: Checkpoint) -> str:
    from dreamcore.likeness.evaluate import slug

    return slug(checkpoint.label, limit=80)
