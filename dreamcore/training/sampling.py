"""Fixed-seed samples of the model being trained, saved at every checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from dreamcore.fileio import atomic_path


def generate_samples(pipeline, prompt: str, negative_prompt: str, indices: list[int], seed: int,
                     guidance_scale: float, steps: int, resolution: int) -> list[tuple[int, Image.Image]]:
    """Sample ``i`` of ``indices`` from seed ``seed + i``: the same seeds at every checkpoint make samples
    comparable from step to step, and are the seeds to type into the WebUI to reproduce one."""
    samples = []
    for i in indices:
        generator = torch.Generator(device="cpu").manual_seed(seed + i)
        with torch.no_grad():
            image = pipeline(prompt=prompt, negative_prompt=negative_prompt or None, num_inference_steps=steps,
                             guidance_scale=guidance_scale, generator=generator, height=resolution,
                             width=resolution).images[0]
        samples.append((i, image))
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
                 guidance_scale: float, steps: int, resolution: int) -> list[Path]:
    """Generate samples 0..count-1 in this process and write them into ``folder``."""
    samples = generate_samples(pipeline, prompt, negative_prompt, list(range(count)), seed, guidance_scale,
                               steps, resolution)
    return write_samples(samples, folder, seed)
