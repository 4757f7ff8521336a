"""``python -m dreamcore demo``: the whole flow on an embedded tiny model, in a few minutes on a CPU.

Makes a tiny model and a few synthetic photos, generates class images, trains with the guide's flags
(made small), saves samples and checkpoints, exports the single file, reloads that file and generates
from it. Images from a tiny random model are abstract: the demo shows the flow, not quality.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "Run the whole flow on an embedded tiny model (a few minutes on a CPU) and print where everything is."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-output", help="Folder for everything the demo makes.")
    parser.add_argument("--steps", type=int, default=60, help="Training steps.")


def make_demo_photos(folder: Path, count: int = 6, size: int = 96) -> list[Path]:
    """Synthetic 'photos': one face-like figure on varied backgrounds and clothes."""
    from PIL import Image, ImageDraw

    from dreamcore.fileio import atomic_path

    backgrounds = [(70, 110, 160), (200, 180, 150), (60, 140, 80), (180, 70, 70), (40, 40, 60), (220, 220, 220)]
    clothes = [(30, 30, 30), (200, 40, 40), (40, 80, 200), (240, 240, 240), (90, 60, 30), (20, 120, 120)]
    paths = []
    for i in range(count):
        image = Image.new("RGB", (size, size), backgrounds[i % len(backgrounds)])
        draw = ImageDraw.Draw(image)
        draw.rectangle((size * 0.2, size * 0.7, size * 0.8, size), fill=clothes[i % len(clothes)])  # shoulders
        draw.ellipse((size * 0.33, size * 0.2, size * 0.67, size * 0.65), fill=(224, 172, 140))  # face
        draw.ellipse((size * 0.30, size * 0.12, size * 0.70, size * 0.35), fill=(60, 40, 20))  # hair
        for x in (0.43, 0.57):
            draw.ellipse((size * (x - 0.03), size * 0.4, size * (x + 0.03), size * 0.46), fill=(30, 30, 30))
        path = folder / f"photo-{i:02d}.png"
        with atomic_path(path) as temp:
            image.save(temp, format="PNG")
        paths.append(path)
    return paths


def run(args: argparse.Namespace) -> int:
    from dreamcore import TrainConfig, generate, train
    from dreamcore.commands.train import TrainingProgressPrinter
    from dreamcore.families.registry import DEFAULT_FAMILY
    from dreamcore.tiny import TINY_RESOLUTION, save_tiny_model

    started = time.perf_counter()
    out = Path(args.out).resolve()
    print(f"== dreamcore demo in {out}")
    base = save_tiny_model(out / "base", family=DEFAULT_FAMILY.name, fmt="safetensors")
    print(f"tiny base model (single file, SD1 layout): {base}")
    photos = make_demo_photos(out / "photos", size=TINY_RESOLUTION)  # already square: trained as they are
    print(f"{len(photos)} demo photos: {photos[0].parent}")
    config = TrainConfig(
        pretrained_model_name_or_path=str(base), instance_data_dir=str(photos[0].parent),
        instance_prompt="photo of sks person", class_prompt="photo of a person", with_prior_preservation=True,
        num_class_images=4, sample_batch_size=4, class_infer_steps=8, output_dir=str(out / "training"),
        resolution=TINY_RESOLUTION, train_text_encoder=True, learning_rate=2e-4, lr_warmup_steps=0,
        max_train_steps=args.steps, save_interval=args.steps // 2, checkpointing_steps=args.steps // 2,
        save_sample_prompt="portrait photo of sks person", n_save_sample=2, save_infer_steps=10,
        model_name="demo-sks", seed=1337)
    printer = TrainingProgressPrinter()
    try:
        result = train(config, callbacks=[printer])
    finally:
        printer.close()
    single_file = result.outputs["single_file"]
    images = generate(single_file, "portrait photo of sks person wearing a fancy suit", seed=1337,
                      num_inference_steps=10, num_images=2, out=out / "generated")
    print(f"\nreloaded {single_file} and generated: {', '.join(str(p) for p in images)}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s. Everything is under {out}")
    return 0
