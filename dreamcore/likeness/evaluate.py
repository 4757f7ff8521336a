"""Generate a checkpoint's fixed-seed sample sets with its pipeline, save them, and score them.

The same seeds are used at every checkpoint, so the scores of two checkpoints differ only because the
weights do. Samples are saved under ``out_dir`` with a ``samples.json`` manifest, which
``python -m dreamcore score OUT_DIR --photos ...`` reads to score them again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from dreamcore.fileio import atomic_path, atomic_write_text
from dreamcore.likeness.scores import CheckpointScore, LikenessError, PhotoReference, embed_photos, \
    score_loaded_images

DEFAULT_PROMPT_VARIATIONS = ("{}, smiling", "{}, outdoors")
MANIFEST_NAME = "samples.json"


def expand_prompts(instance_prompt: str, prompt_variations: Sequence[str]) -> list[str]:
    """The instance prompt followed by each variation, ``{}`` in a variation standing for the prompt."""
    if not instance_prompt.strip():
        raise LikenessError("instance_prompt is empty; give the prompt that names the person, "
                            "e.g. 'photo of sks person'")
    prompts = [instance_prompt]
    for variation in prompt_variations:
        if "{}" not in variation:
            raise LikenessError(f"prompt variation {variation!r} has no '{{}}' where the instance prompt goes, "
                                "e.g. '{}, smiling'")
        prompt = variation.replace("{}", instance_prompt)
        if prompt not in prompts:
            prompts.append(prompt)
    return prompts


def evaluate_pipeline(pipeline: Any, photo_paths: Sequence[str | Path], instance_prompt: str, class_prompt: str,
                      step: int | None, seed: int = 1337, num_samples: int = 4, num_inference_steps: int = 30,
                      guidance_scale: float = 7.5, prompt_variations: Sequence[str] = DEFAULT_PROMPT_VARIATIONS,
                      out_dir: str | Path | None = None, negative_prompt: str = "", label: str = "",
                      reference: PhotoReference | None = None, height: int | None = None,
                      width: int | None = None) -> CheckpointScore:
    """Generate ``num_samples`` images (seeds ``seed``.. ``seed + num_samples - 1``) of the instance prompt,
    each variation and the class prompt (skipped when empty), save them under ``out_dir`` (if given) and
    score them against the training photos (or ``reference``, embedded once by the caller)."""
    if num_samples < 1:
        raise LikenessError(f"num_samples: must be at least 1 (got {num_samples})")
    if num_inference_steps < 1:
        raise LikenessError(f"num_inference_steps: must be at least 1 (got {num_inference_steps})")
    prompts = expand_prompts(instance_prompt, prompt_variations)
    reference = reference or embed_photos(photo_paths)  # before generating: fail fast on photos without faces
    options = dict(seed=seed, num_samples=num_samples, num_inference_steps=num_inference_steps,
                   guidance_scale=guidance_scale, negative_prompt=negative_prompt, height=height, width=width)
    samples = {prompt: generate_samples(pipeline, prompt, **options) for prompt in prompts}
    class_samples = generate_samples(pipeline, class_prompt, **options) if class_prompt.strip() else []
    if out_dir is not None:
        save_samples(Path(out_dir), samples, class_prompt, class_samples, seed=seed, step=step)
    return score_loaded_images(samples, class_samples, reference, step=step, label=label)


def generate_samples(pipeline: Any, prompt: str, seed: int, num_samples: int, num_inference_steps: int,
                     guidance_scale: float, negative_prompt: str = "", height: int | None = None,
                     width: int | None = None) -> list[Image.Image]:
    """``num_samples`` images of ``prompt``, image i from seed ``seed + i`` whatever the batch size."""
    import torch

    # CPU generators: the starting noise is then the same on every device, so a checkpoint scored on a
    # GPU during training and again on a CPU later is scored on the same pictures' seeds.
    generators = [torch.Generator("cpu").manual_seed(seed + index) for index in range(num_samples)]
    if hasattr(pipeline, "set_progress_bar_config"):
        pipeline.set_progress_bar_config(disable=True)
    with torch.no_grad():
        result = pipeline(prompt, negative_prompt=negative_prompt or None, num_images_per_prompt=num_samples,
                          generator=generators, num_inference_steps=num_inference_steps,
                          guidance_scale=guidance_scale, height=height, width=width, output_type="pil")
    return list(result.images)


def save_samples(out_dir: Path, samples: dict[str, list[Image.Image]], class_prompt: str,
                 class_samples: list[Image.Image], seed: int, step: int | None) -> Path:
    """Write each prompt's samples into its own folder and a ``samples.json`` manifest; returns its path."""
    manifest: dict[str, Any] = {"step": step, "seed": seed, "instance": {}, "class_prompt": class_prompt,
                                "class": []}
    for index, (prompt, images) in enumerate(samples.items()):
        manifest["instance"][prompt] = _save_images(out_dir, f"{index:02d}-{slug(prompt)}", images, seed)
    if class_samples:
        manifest["class"] = _save_images(out_dir, f"class-{slug(class_prompt)}", class_samples, seed)
    return atomic_write_text(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


def read_manifest(folder: Path) -> tuple[dict[str, list[Path]], list[Path], int | None]:
    """The sample files a ``samples.json`` lists: ``({prompt: paths}, class paths, step)``."""
    path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        instance = {str(prompt): [folder / name for name in names] for prompt, names in manifest["instance"].items()}
        class_paths = [folder / name for name in manifest.get("class", [])]
        step = manifest.get("step")
        return instance, class_paths, None if step is None else int(step)
    except OSError as error:
        raise LikenessError(f"cannot read {path} ({error.strerror})") from error
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, ValueError) as error:
        raise LikenessError(f"{path} is not a samples manifest written by dreamcore ({error}); delete it to "
                            "score the folder's images as they are") from error


def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def _save_images(out_dir: Path, folder_name: str, images: list[Image.Image], seed: int) -> list[str]:
    names = []
    for index, image in enumerate(images):
        name = f"{folder_name}/seed-{seed + index}.png"
        with atomic_path(out_dir / name) as temp:
            image.save(temp, format="PNG")
        names.append(name)
    return names
