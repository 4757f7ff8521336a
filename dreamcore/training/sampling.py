"""Fixed-seed samples of the model being trained, saved at every checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

from dreamcore.fileio import atomic_path


def draw_in_batches(pipeline, prompt: str, negative_prompt: str, indices: list[int], seed: int,
                    guidance_scale: float, steps: int, resolution: int,
                    batch_size: int) -> Iterator[tuple[list[int], list[Image.Image]]]:
    """Image ``i`` of ``indices`` drawn from seed ``seed + i``, up to ``batch_size`` at once (one generator
    each, so image i starts from the same noise at any batch size); yields (indices, images) a batch at a time,
    drawing each batch only when asked for it (a caller can stop between batches)."""
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        generators = [torch.Generator(device="cpu").manual_seed(seed + i) for i in chunk]
        with torch.no_grad():
            images = pipeline(prompt=prompt, negative_prompt=negative_prompt or None, num_inference_steps=steps,
                              guidance_scale=guidance_scale, generator=generators, num_images_per_prompt=len(chunk),
                              height=resolution, width=resolution).images
        yield chunk, images


def generate_samples(pipeline, prompt: str, negative_prompt: str, indices: list[int], seed: int,
                     guidance_scale: float, steps: int, resolution: int,
                     batch_size: int = 1) -> list[tuple[int, Image.Image]]:
    """Sample ``i`` of ``indices`` from seed ``seed + i``: the same seeds at every checkpoint make samples
    comparable from step to step, and are the seeds to type into the WebUI to reproduce one. Drawn in batches
    (``draw_in_batches``): one at a time, a full-size model's UNet calls are launch-bound, so a batch of four
    costs little more than one sample."""
    samples = []
    for chunk, images in draw_in_batches(pipeline, prompt, negative_prompt, indices, seed, guidance_scale, steps,
                                         resolution, batch_size):
        samples.extend(zip(chunk, images))
    return samples


def write_samples(samples: list[tuple[int, Image.Image]], folder: Path, seed: int) -> list[Path]:
    paths = []
    for i, image in sorted(samples, key=lambda sample: sample[0]):
        path = folder / f"sample-{i:02d}-seed{seed + i}.png"
        with atomic_path(path) as temp:
            image.save(temp, format="PNG")
        paths.append(path)
    return paths


def save_samples(pipeline, folder: Path, prompt: str, negative_prompt: str, count: int, seed: int,
                 guidance_scale: float, steps: int, resolution: int, batch_size: int = 1) -> list[Path]:
    """Generate samples 0..count-1 in this process and write them into ``folder``."""
    samples = generate_samples(pipeline, prompt, negative_prompt, list(range(count)), seed, guidance_scale,
                               steps, resolution, batch_size)
    return write_samples(samples, folder, seed)
