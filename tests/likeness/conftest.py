"""Real photographs that ship inside registry packages, and second views of them.

- astronaut: scikit-image's ``data.astronaut()`` (Eileen Collins, NASA photo, public domain).
- Grace Hopper: matplotlib's sample ``grace_hopper.jpg`` (US Navy photo, public domain).
No installed or installable package ships two different photographs of one person (imageio's standard
images and scipy.datasets download at run time, which is not allowed here), so the "second photo of the
same person" is a re-shot copy of the first: mirrored, cropped to a different framing, recoloured and
rescaled. That is a weak second view - same pose, same expression - and the tests say so.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.astronaut())


@pytest.fixture(scope="session")
def grace_hopper() -> Image.Image:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return image.convert("RGB")


def second_view(image: Image.Image) -> Image.Image:
    """A weak second photo of the same person: mirrored, tighter and off-centre, warmer and paler, smaller."""
    width, height = image.size
    view = ImageOps.mirror(image).crop((int(width * 0.12), 0, width, int(height * 0.85)))
    view = ImageEnhance.Color(view).enhance(0.6)
    view = ImageEnhance.Brightness(view).enhance(1.15)
    red, green, blue = view.split()
    view = Image.merge("RGB", (red.point(lambda v: min(255, v + 18)), green, blue))
    return view.resize((int(view.width * 0.7), int(view.height * 0.7)), Image.LANCZOS)


def portrait_crop(image: Image.Image, box: tuple[int, int, int, int], size: int = 512) -> Image.Image:
    """A head-and-shoulders square crop around a face box, padded where the photo is too tight.

    Stands in for dreamcore.prepare's crop (issue 4), which is not in the tree yet: the face is centred
    horizontally in the upper part of the square, which is 2.6 face widths wide.
    """
    left, top, right, bottom = box
    face = right - left
    side = int(face * 2.6)
    centre_x = (left + right) / 2
    crop_left = int(centre_x - side / 2)
    crop_top = int(top - face * 0.6)
    mean_colour = tuple(int(c) for c in np.asarray(image).reshape(-1, 3).mean(axis=0))
    canvas = Image.new("RGB", (side, side), mean_colour)
    canvas.paste(image, (-crop_left, -crop_top))
    return canvas.resize((size, size), Image.LANCZOS)


@pytest.fixture(name="second_view")
def second_view_fixture():
    return second_view


@pytest.fixture(name="portrait_crop")
def portrait_crop_fixture():
    return portrait_crop


@pytest.fixture()
def photo_folder(tmp_path: Path, astronaut: Image.Image) -> Path:
    """Training photos of the astronaut: the photo and its second view."""
    folder = tmp_path / "photos"
    folder.mkdir()
    astronaut.save(folder / "astronaut.png")
    second_view(astronaut).save(folder / "astronaut-view.jpg", quality=92)
    return folder


class FacePipeline:
    """Stands in for StableDiffusionPipeline: draws the user for the instance prompt, someone else otherwise."""

    def __init__(self, user: Image.Image, stranger: Image.Image):
        self.user, self.stranger, self.calls = user, stranger, []

    def __call__(self, prompt, num_images_per_prompt, generator, **options):
        self.calls.append(dict(prompt=prompt, count=num_images_per_prompt,
                               seeds=[g.initial_seed() for g in generator], **options))
        face = self.user if "sks" in prompt else self.stranger
        return SimpleNamespace(images=[face.rotate(3 * index) for index in range(num_images_per_prompt)])


@pytest.fixture(name="FacePipeline")
def face_pipeline_class():
    return FacePipeline
