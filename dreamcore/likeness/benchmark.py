"""What likeness scoring costs at each save: ``python -m dreamcore.likeness.benchmark [--generation]``.

Two parts, timed separately because they run on different hardware:
- face scoring (CPU, dlib): embedding the training photos once and each 512px sample; real photos from
  scikit-image and matplotlib stand in for samples (needs the dev extra).
- generation (``--generation``; GPU if there is one): the fixed-seed likeness set - the instance prompt, its
  default variations and the class prompt, 4 samples each at 512px - from an SD1.5-shaped model with random
  weights built from the shipped configs, next to the training loop's own 4 samples for comparison.
Prints one JSON object. A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any


def time_face_scoring(repeats: int = 5) -> dict[str, Any]:
    import numpy as np
    import skimage.data
    from matplotlib import cbook
    from PIL import Image

    from dreamcore.likeness.faces import _load_models, embed_faces

    start = time.perf_counter()
    _load_models()
    results: dict[str, Any] = {"model_load_s": round(time.perf_counter() - start, 2)}
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as hopper:
        images = {"portrait_512": Image.fromarray(skimage.data.astronaut()),
                  "portrait_600x512": hopper.convert("RGB"),
                  "no_face_512": Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3),
                                                                                   dtype=np.uint8))}
    for name, image in images.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            embed_faces(image)
            times.append(time.perf_counter() - start)
        results[f"embed_{name}_median_ms"] = round(statistics.median(times) * 1000)
    return results


def time_generation(num_inference_steps: int = 30) -> dict[str, Any]:
    import torch
    from diffusers import StableDiffusionPipeline

    from dreamcore.families.registry import DEFAULT_FAMILY
    from dreamcore.likeness.evaluate import DEFAULT_PROMPT_VARIATIONS, expand_prompts, generate_samples
    from dreamcore.tiny import build_components

    family = DEFAULT_FAMILY  # SD1.5's shapes: the model the timing is quoted for
    configs = {name: family.shipped_config(name) for name in ("unet", "vae", "text_encoder", "scheduler")}
    model = build_components(configs, family.name, seed=0)
    device, dtype = ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)
    pipeline = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                       unet=model.unet, scheduler=model.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False).to(device, dtype)
    prompts = [*expand_prompts("photo of sks person", DEFAULT_PROMPT_VARIATIONS), "photo of a person"]

    def timed(work) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        work()
        if device == "cuda":
            torch.cuda.synchronize()
        return round(time.perf_counter() - start, 2)

    timed(lambda: generate_samples(pipeline, prompts[0], 1337, 4, 3, 7.5, height=512, width=512))  # warm-up
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                               "torch": torch.__version__}
    results[f"likeness_set_{4 * len(prompts)}_images_{num_inference_steps}_steps_s"] = timed(
        lambda: [generate_samples(pipeline, prompt, 1337, 4, num_inference_steps, 7.5, height=512, width=512)
                 for prompt in prompts])
    results["training_samples_4_images_50_steps_one_at_a_time_s"] = timed(
        lambda: [generate_samples(pipeline, prompts[0], 1337 + i, 1, 50, 7.5, height=512, width=512)
                 for i in range(4)])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generation", action="store_true", help="also time generation (meant for a GPU)")
    parser.add_argument("--no-faces", action="store_true", help="skip the CPU face-scoring timings")
    parser.add_argument("--steps", type=int, default=30, help="sampling steps of the likeness set")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    if not args.no_faces:
        results["face_scoring"] = time_face_scoring()
    if args.generation:
        results["generation"] = time_generation(args.steps)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
