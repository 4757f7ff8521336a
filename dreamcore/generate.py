"""Generate images from a model: prompt, negative prompt, seed, guidance scale, steps."""

from __future__ import annotations

from pathlib import Path

import torch

from dreamcore.fileio import atomic_path


class GenerateError(ValueError):
    pass


def generate(model: str | Path | object, prompt: str, *, negative_prompt: str = "", seed: int = 1337,
             guidance_scale: float = 7.5, num_inference_steps: int = 30, num_images: int = 1,
             resolution: int | None = None, out: str | Path | None = "generated") -> list:
    """Generate ``num_images`` images; image i uses seed ``seed + i`` (as the WebUI's batch does).

    ``model`` is a diffusers folder, a single file, or loaded ModelComponents. Returns the written paths,
    or the PIL images when ``out`` is None.
    """
    from dreamcore.components import ModelComponents
    from dreamcore.models import build_pipeline, load_base_model

    if num_images < 1 or num_inference_steps < 1:
        raise GenerateError("num_images and num_inference_steps must be at least 1.")
    if resolution is not None and (resolution <= 0 or resolution % 8):
        raise GenerateError(f"resolution {resolution} must be a positive multiple of 8.")
    components = model if isinstance(model, ModelComponents) else load_base_model(str(model))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = build_pipeline(components).to(device)
    size = resolution or components.unet.config.sample_size * 8
    images = []
    for i in range(num_images):
        generator = torch.Generator(device="cpu").manual_seed(seed + i)
        with torch.no_grad():
            images.append(pipeline(prompt=prompt, negative_prompt=negative_prompt or None,
                                   guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                                   generator=generator, height=size, width=size).images[0])
    if out is None:
        return images
    out = Path(out)
    paths = []
    for i, image in enumerate(images):
        path = out / f"{seed + i}.png"
        with atomic_path(path) as temp:
            image.save(temp, format="PNG")
        paths.append(path)
    return paths
