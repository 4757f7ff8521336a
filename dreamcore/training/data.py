"""Training examples: photos (and class images) turned into tensors, in an order fixed by the seed.

The order of examples is a pure function of (seed, step), not of a DataLoader's internal state, so a run
resumed at step N sees exactly the batches an uninterrupted run would have seen, and several processes can
each take their share of the same global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Example:
    """One training image with the prompt it is trained under."""

    path: Path
    prompt: str


@dataclass(frozen=True)
class ConceptExamples:
    instances: tuple[Example, ...]
    classes: tuple[Example, ...]  # empty without prior preservation


def image_to_tensor(image: Image.Image, resolution: int, center_crop: bool, flip: bool,
                    generator: torch.Generator) -> torch.Tensor:
    """Resize the shorter side to ``resolution``, crop a square, optionally mirror; values in [-1, 1]."""
    width, height = image.size
    scale = resolution / min(width, height)
    if scale != 1:
        image = image.resize((max(resolution, round(width * scale)), max(resolution, round(height * scale))),
                             Image.Resampling.BICUBIC)
    width, height = image.size
    if center_crop:
        left, top = (width - resolution) // 2, (height - resolution) // 2
    else:
        left = int(torch.randint(0, width - resolution + 1, (1,), generator=generator))
        top = int(torch.randint(0, height - resolution + 1, (1,), generator=generator))
    image = image.crop((left, top, left + resolution, top + resolution))
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def needs_random_augmentation(paths: list[Path], resolution: int, center_crop: bool, hflip: bool) -> bool:
    """True when the same photo can give different tensors from step to step (then latents cannot be cached)."""
    if hflip:
        return True
    if center_crop:
        return False
    for path in paths:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF rotation by 90 degrees swaps the sides
                width, height = height, width
        if width != height:
            return True  # a non-square photo is randomly cropped
    return False


class ExampleSchedule:
    """Which examples make up micro-batch ``index`` of the run, for every process.

    Epoch ``e`` visits the instance photos in a permutation drawn from ``seed + e``. Each instance example
    is paired with the next class image of its concept (cycling), as prior preservation trains on both.
    """

    def __init__(self, concepts: list[ConceptExamples], batch_size: int, seed: int,
                 num_processes: int = 1, process_index: int = 0):
        self.instances = [(c, e) for c, concept in enumerate(concepts) for e in concept.instances]
        self.classes = [concept.classes for concept in concepts]
        self.batch_size = batch_size
        self.global_batch = batch_size * num_processes
        self.process_index = process_index
        self.seed = seed

    @property
    def batches_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.instances) / self.global_batch))

    def epoch_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.instances), generator=generator).tolist()

    def batch(self, index: int) -> tuple[list[Example], list[Example]]:
        """(instance examples, class examples) of this process for micro-batch ``index`` (0-based)."""
        epoch, position = divmod(index, self.batches_per_epoch)
        order = self.epoch_order(epoch)
        start = position * self.global_batch + self.process_index * self.batch_size
        instances, classes = [], []
        for offset in range(self.batch_size):
            slot = start + offset
            # A short last batch wraps around to the start of the epoch's order, keeping batches full.
            concept_index, example = self.instances[order[slot % len(order)]]
            instances.append(example)
            concept_classes = self.classes[concept_index]
            if concept_classes:
                classes.append(concept_classes[(epoch * len(order) + slot) % len(concept_classes)])
        return instances, classes


def example_generator(seed: int, index: int, example_slot: int) -> torch.Generator:
    """A generator for one example's augmentation, fixed by (seed, micro-batch, slot)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index * 1_009 + example_slot) % (2**63))
