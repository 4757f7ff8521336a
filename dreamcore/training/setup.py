"""Everything decided before the first step: the resolved plan of a run, the device, the models.

``plan_run`` reads the photo folders and fills the settings left to dreamcore (steps from the photo count,
default class-image folders); nothing here changes the user's TrainConfig, it returns a resolved copy.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dreamcore.config import Concept, ConfigError, TrainConfig, plausibility_warnings
from dreamcore.fileio import remove_leftovers
from dreamcore.images import scan_images

STEPS_PER_PHOTO = 100  # the guide's rule: ~100 steps per photo


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


@dataclass(frozen=True)
class ConceptPlan:
    concept: Concept
    photos: tuple[Path, ...]
    class_dir: Path | None  # None without prior preservation
    num_class_images: int = 0  # class images this concept trains with (its own count, or the run's)


@dataclass(frozen=True)
class RunPlan:
    config: TrainConfig  # resolved: max_train_steps filled in
    concepts: tuple[ConceptPlan, ...]
    output_dir: Path
    model_name: str
    resume_folder: Path | None = None  # the saved state this run continues from

    @property
    def total_steps(self) -> int:
        return int(self.config.max_train_steps)

    @property
    def photo_count(self) -> int:
        return sum(len(c.photos) for c in self.concepts)


def slug(text: str) -> str:
    return re.sub(r"[^\w]+", "_", text.strip().lower()).strip("_")[:60] or "class"


def plan_run(config: TrainConfig, warn: Callable[[str], None]) -> RunPlan:
    """Check every photo (skipping unusable ones with a warning) and resolve the settings left open."""
    config.validate()
    output_dir = Path(config.output_dir)
    for line in plausibility_warnings(config) + remove_leftovers(output_dir):  # before a resume reads state/
        warn(line)
    problems: list[str] = []
    concepts = []
    for index, concept in enumerate(config.concepts()):
        photos = usable_photos(Path(concept.instance_data_dir), warn)
        if photos and config.prepare_photos and not all_square_at(photos, config.resolution):
            photos = prepared_photos(Path(concept.instance_data_dir),
                                     output_dir / "prepared" / f"{index + 1}-{slug(concept.instance_prompt)}",
                                     config.resolution, warn, instance_prompt=concept.instance_prompt,
                                     class_prompt=concept.class_prompt)
        if not photos:
            problems.append(f"concept {index + 1}: no usable photos in {concept.instance_data_dir} (see the "
                            "skipped files above); add readable JPEG or PNG photos of the subject.")
        class_dir, class_count = None, 0
        if config.with_prior_preservation:
            class_dir = Path(concept.class_data_dir) if concept.class_data_dir else \
                output_dir / "class_images" / slug(concept.class_prompt)
            class_count = config.num_class_images if concept.num_class_images is None else concept.num_class_images
        concepts.append(ConceptPlan(concept, tuple(photos), class_dir, class_count))
    counts = {c.num_class_images for c in concepts if c.class_dir is not None}
    if 0 in counts and len(counts) > 1 and config.train_batch_size > 1:
        problems.append("concepts_list: with train_batch_size above 1 a batch mixes concepts, so either every "
                        "concept has class images or none has; give each concept a num_class_images of 1 or more, "
                        "or set train_batch_size 1.")
    if problems:
        raise ConfigError(problems)
    photo_count = sum(len(c.photos) for c in concepts)
    steps = config.max_train_steps
    if steps is None:
        if config.num_train_epochs is not None:
            batches = -(-photo_count // config.train_batch_size)
            steps = max(1, config.num_train_epochs * batches // config.gradient_accumulation_steps)
        else:
            steps = STEPS_PER_PHOTO * photo_count
    resolved = dataclasses.replace(config, max_train_steps=steps)
    model_name = config.model_name or output_dir.resolve().name or "dreamcore"
    return RunPlan(resolved, tuple(concepts), output_dir, model_name)


def all_square_at(photos: list[Path], resolution: int) -> bool:
    """True when every photo is already a square of the training size (prepared by hand or by dreamcore)."""
    from PIL import Image

    for path in photos:
        with Image.open(path) as image:
            if image.size != (resolution, resolution) or image.getexif().get(0x0112, 1) not in (1, 2, 3, 4):
                return False
    return True


def prepared_photos(folder: Path, out_dir: Path, resolution: int, warn: Callable[[str], None], *,
                    instance_prompt: str = "", class_prompt: str = "") -> list[Path]:
    """Square crops of a raw photo folder (dreamcore.prepare), with every rejected photo named.

    The prompts say what the photos show: a person's photos are cropped around the face (a photo in which
    none is found is kept, cropped around its salient region, with a warning); any other subject's around
    the salient region. Only unusable photos (unreadable, blank, several people in a person's set) are left
    out; a folder with none usable stops the run before the models load.
    """
    from dreamcore.prepare import OptionHints, PrepareError, prepare_for_training, subject_from_prompts
    from dreamcore.prepare.faces import DetectorUnavailableError

    subject = subject_from_prompts(instance_prompt, class_prompt)
    # The way out a rejection names must be one of train's options; train has only the switch for all photos.
    hints = OptionHints(keep_several_faces="or pass --no-prepare_photos to train on every photo as it is")
    try:
        report = prepare_for_training(folder, out_dir, size=resolution, subject=subject, hints=hints)
    except DetectorUnavailableError as error:
        raise ConfigError([f"prepare_photos: {folder} holds photos of {subject.name} that are not "
                           f"{resolution}x{resolution} squares and need cropping around the face, but {error}. "
                           "Install it (pip install 'dreamcore[prepare]'), crop them yourself, or pass "
                           "--no-prepare_photos."]) from error
    except PrepareError as error:
        raise ConfigError([f"prepare_photos: {error}"]) from error
    for result in report.rejected:
        warn(f"skipping {result.source}: {result.verdict} (see {report.contact_sheet_path})")
    if subject.is_person:
        for result in report.kept:
            if result.cropped_around != "face":
                warn(f"{result.source}: {result.verdict}; check that it shows the person "
                     f"(see {report.contact_sheet_path})")
    for message in report.warnings:
        warn(f"photo set: {message}")
    return [result.output for result in report.kept]


def usable_photos(folder: Path, warn: Callable[[str], None], what: str = "photo") -> list[Path]:
    """Images in ``folder`` that decode (``scan_images`` reads each once); every other one is named in a
    warning and left in place (skipping a bad image is safe; deleting the user's file is not)."""
    if not folder.is_dir():
        return []
    images, skipped = scan_images(folder)
    for path, reason in skipped:
        warn(f"skipping {what} {path}: {reason}")
    return images


def weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def effective_precision(mixed_precision: str, emit) -> str:
    """The precision this machine runs: fp16 without a CUDA GPU runs in fp32, with one warning.

    fp16 autocast on a CPU is slow and has no loss scaling; fp32 computes the same step more exactly, so the
    guide's command (which asks for fp16) still runs unchanged on a machine without a GPU.
    """
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        emit.log("mixed_precision fp16 needs a CUDA GPU; without one this run computes in fp32 "
                 "(slower, not less exact).", "warning")
        return "no"
    return mixed_precision


def check_precision_supported(mixed_precision: str, device: torch.device) -> None:
    if mixed_precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError("mixed_precision bf16 is not supported by this GPU; use 'fp16'.")


def is_full_size(unet: torch.nn.Module) -> bool:
    return sum(p.numel() for p in unet.parameters()) > 100_000_000


def use_expandable_segments(config: TrainConfig, log: Callable[[str], None]) -> None:
    """Let PyTorch's CUDA allocator grow segments in place for the tightest tiers (optimizer_in_backward).

    There, gradients of ~900 sizes are allocated and freed in every backward; with fixed segments the freed
    blocks fragment, and the device total ran 1.4 GiB above the tensors actually held (BENCHMARKS.md, 8GB).
    Memory layout only: results are unchanged. A PYTORCH_CUDA_ALLOC_CONF the user set is left alone.
    """
    import os

    if not (config.optimizer_in_backward and torch.cuda.is_available()) or os.environ.get("PYTORCH_CUDA_ALLOC_CONF"):
        return
    # The setter is private and has moved between torch versions; without one the run keeps fixed segments.
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or \
        getattr(torch._C, "_cuda_cudaCachingAllocator_set_allocator_settings", None)
    if setter is None:
        log("this torch cannot switch the CUDA allocator to expandable segments at run time; set "
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before starting to save ~1 GB.")
        return
    setter("expandable_segments:True")
