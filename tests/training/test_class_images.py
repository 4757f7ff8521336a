"""Class-image generation: batches drawn on the main thread, written by a writer thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PIL import Image

from dreamcore.training.class_images import class_image_name, generate_class_images


class FakePipeline:
    """Returns one small image an image asked for, coloured by call and position; can return an unwritable one."""

    def __init__(self, broken_at_call: int | None = None):
        self.calls = 0
        self.broken_at_call = broken_at_call

    def __call__(self, prompt, negative_prompt, num_inference_steps, guidance_scale, generator,
                 num_images_per_prompt, height, width):
        assert len(generator) == num_images_per_prompt  # one generator an image
        self.calls += 1
        images = [Image.new("RGB", (width, height), (self.calls, i, 0)) for i in range(num_images_per_prompt)]
        if self.calls == self.broken_at_call:
            images[0] = UnwritableImage()
        return type("Output", (), {"images": images})()


class UnwritableImage:
    def save(self, path, format):
        Path(path).write_bytes(b"half")  # a partial write, then the failure
        raise OSError("disk full")


def generate(folder: Path, pipeline, indices: list[int], stop=None, on_batch=None) -> list[int]:
    counts: list[int] = []

    def record(count: int) -> None:
        # progress is reported once the batch is on disk, on the calling thread
        assert threading.current_thread() is threading.main_thread()
        assert len(list(folder.glob("class-*.png"))) == sum(counts) + count
        counts.append(count)
        if on_batch is not None:
            on_batch(count)

    generate_class_images(pipeline, folder, "photo of a person", "", indices, batch_size=2, seed=0,
                          guidance_scale=7.5, steps=1, resolution=8, on_batch=record, stop=stop)
    return counts


def test_every_batch_is_written_and_reported(tmp_path: Path) -> None:
    counts = generate(tmp_path, FakePipeline(), [0, 1, 2, 5, 7])
    assert counts == [2, 2, 1]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(class_image_name("photo of a person", i) for i in (0, 1, 2, 5, 7))
    with Image.open(tmp_path / class_image_name("photo of a person", 5)) as image:
        assert image.getpixel((0, 0)) == (2, 1, 0)  # second call, second image


def test_a_failed_write_stops_generation_and_leaves_no_partial_file(tmp_path: Path) -> None:
    pipeline = FakePipeline(broken_at_call=2)
    with pytest.raises(OSError, match="disk full"):
        generate(tmp_path, pipeline, list(range(8)))
    names = sorted(p.name for p in tmp_path.iterdir())
    # the first batch is kept; the broken image (the second batch's first) left no file, not even a temporary
    assert names == sorted(class_image_name("photo of a person", i) for i in (0, 1))
    assert pipeline.calls <= 3  # the error surfaced at the next batch at the latest


def test_a_stop_keeps_the_batch_already_drawn(tmp_path: Path) -> None:
    stop = threading.Event()
    counts = generate(tmp_path, FakePipeline(), list(range(6)), stop=stop, on_batch=lambda count: stop.set())
    assert counts == [2, 2]  # the first batch reported sets the stop while the second is drawn
    assert len(list(tmp_path.glob("class-*.png"))) == 4


def test_a_stop_before_the_first_batch_draws_nothing(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    pipeline = FakePipeline()
    assert generate(tmp_path, pipeline, list(range(4)), stop=stop) == []
    assert pipeline.calls == 0 and not list(tmp_path.glob("class-*.png"))
