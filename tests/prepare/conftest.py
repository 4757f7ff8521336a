"""Real portraits that ship inside registry packages, and photo folders built from them."""

from __future__ import annotations


import pytest
from PIL import Image


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    """scikit-image's astronaut (Eileen Collins), 512x512: head and shoulders, face about 90 px wide."""
    data = pytest.importorskip("skimage.data")
    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="session")
def grace_hopper() -> Image.Image:
    """matplotlib's sample grace_hopper.jpg, 512x600: head and shoulders, face about 215 px wide."""
    cbook = pytest.importorskip("matplotlib.cbook")
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return Image.open(handle).convert("RGB")


@pytest.fixture(scope="session")
def no_face() -> Image.Image:
    """scikit-image's coffee cup: a real photo without a face."""
    data = pytest.importorskip("skimage.data")
    return Image.fromarray(data.coffee())
