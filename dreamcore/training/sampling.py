"""Fixed-seed samples of the model being trained, saved at every checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from dreamcore.fileio import atomic_path


def save_samples(pipeline, folder: Path, prompt: str, negative_prompt: str, count: int, seed: int,
                 guidance_scale: float, steps: int, resolution: int) -> list[Path]:
    """Generate ``count`` images of ``prompt`` (image i from seed ``seed + i``) into ``folder``.

    The same seeds at every checkpoint make the samples comparable from step to step; they are also the
    seeds to type into the WebUI to reproduce a sample from the exported file.
    """
    paths = []
    for i in range(count):
        generator = torch.Generator(device="cpu").manual_seed(seed + i)
        with torch.no_grad():
            image = pipeline(prompt=prompt, negative_prompt=negative_prompt or None, num_inference_steps=steps,
                             guidance_scale=guidance_scale, generator=generator, height=resolution,
                             width=resolution).images[0]
        path = folder / f"sample-{i:02d}-seed{seed + i}.png"
        with atomic_path(path) as temp:
            image.save(temp, format="PNG")
        paths.append(path)
    return paths
