"""Benchmark: `python -m dreamcore prepare` on 20 photos of 12 MP (4000x3000 JPEG).

Usage: .venv/bin/python dev/bench_prepare.py [--photos 20] [--keep WORKDIR]

The photos are built from the two real portraits that ship in registry packages (scikit-image's astronaut,
matplotlib's grace_hopper), each enlarged to 12 MP and placed at a different position, size and rotation
(EXIF tags) on a different background, then saved as JPEG quality 92 - the size and format of a phone photo.
The timed part is prepare_photos alone (decode, EXIF, detection, crop, checks, contact sheet, writes).
Target (issue 4): under 30 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def portraits() -> list[Image.Image]:
    import matplotlib.cbook
    from skimage import data

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        grace = Image.open(handle).convert("RGB")
    return [Image.fromarray(data.astronaut()), grace]


def build_photo(portrait: Image.Image, index: int, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """A 4000x3000 (or 3000x4000) photo with the portrait on a textured background, and its EXIF tag."""
    width, height = (3000, 4000) if index % 2 else (4000, 3000)
    background = rng.integers(0, 256, size=(height // 50, width // 50, 3), dtype=np.uint8)
    canvas = Image.fromarray(background).resize((width, height), Image.Resampling.BICUBIC)
    scale = rng.uniform(0.6, 0.9) * min(width, height) / portrait.width
    person = portrait.resize((round(portrait.width * scale), round(portrait.height * scale)),
                             Image.Resampling.BICUBIC)
    left = int(rng.integers(0, width - person.width))
    top = int(rng.integers(0, height - person.height))
    canvas.paste(person, (left, top))
    orientation = [1, 3, 6, 8][index % 4]
    stored = {1: canvas, 3: canvas.transpose(Image.Transpose.ROTATE_180),
              6: canvas.transpose(Image.Transpose.ROTATE_90), 8: canvas.transpose(Image.Transpose.ROTATE_270)}
    return stored[orientation], orientation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--keep", type=Path, default=None, help="build the photos here and keep them")
    parser.add_argument("--workers", type=int, default=None, help="photos at once (default: one per core, <= 4)")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing
    from dreamcore.prepare import prepare_photos

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    in_dir, out_dir = work / "photos", work / "prepared"
    in_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1337)
    sources = portraits()
    build_start = time.perf_counter()
    for index in range(args.photos):
        photo, orientation = build_photo(sources[index % len(sources)], index, rng)
        exif = Image.Exif()
        exif[0x0112] = orientation
        photo.save(in_dir / f"IMG_{index:04d}.jpg", quality=92, exif=exif)
    print(f"built {args.photos} photos of 12 MP in {time.perf_counter() - build_start:.1f} s "
          f"({sum(p.stat().st_size for p in in_dir.iterdir()) / 1e6:.0f} MB)")

    start, cpu_start = time.perf_counter(), time.process_time()
    report = prepare_photos(in_dir, out_dir, size=512, workers=args.workers)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(report.format_table())
    print(f"\nprepare: {args.photos} photos of 12 MP in {elapsed:.1f} s "
          f"({elapsed / args.photos:.2f} s/photo) on {os.cpu_count()} CPU cores, "
          f"{args.workers or min(4, os.cpu_count() or 1)} worker(s); "
          f"{cpu:.1f} s CPU time; {len(report.kept)} kept; target < 30 s")
    if args.keep is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
