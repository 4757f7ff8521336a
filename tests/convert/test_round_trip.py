"""Done-when of issue 3: single -> diffusers -> single is exact; the exported file renders the same image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamcore.convert import load_single_file, read_state_dict, save_single_file
from dreamcore.models import build_pipeline, load_base_model, save_diffusers_folder

from convert_helpers import FAMILIES, assert_same_tensors, module_state


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
def test_single_to_diffusers_to_single_is_bit_for_bit(family, half, tiny_models, tmp_path) -> None:
    first = save_single_file(tiny_models[family], tmp_path / "first.safetensors", half=half)
    folder = save_diffusers_folder(load_single_file(first), tmp_path / "diffusers")
    second = save_single_file(load_base_model(str(folder)), tmp_path / "second.safetensors", half=half)
    first_tensors, first_metadata = read_state_dict(first)
    second_tensors, second_metadata = read_state_dict(second)
    assert_same_tensors(first_tensors, second_tensors)
    expected_dtype = torch.float16 if half else torch.float32
    assert {t.dtype for t in first_tensors.values() if t.is_floating_point()} == {expected_dtype}
    assert first_metadata["dreamcore.family"] == second_metadata["dreamcore.family"] == family


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_reloads_every_weight_exactly(family, tiny_models, tiny_files) -> None:
    for suffix in (".safetensors", ".ckpt"):
        reloaded = load_single_file(tiny_files[(family, suffix)])
        assert reloaded.family == family
        assert_same_tensors(module_state(tiny_models[family]), module_state(reloaded))
        expected = "v_prediction" if family == "sd2-v" else "epsilon"
        assert reloaded.scheduler.config.prediction_type == expected
        assert type(reloaded.scheduler).__name__ == "DDPMScheduler"


def _render(components, seed: int = 1337) -> np.ndarray:
    """The guide's generate step, small: prompt, negative prompt, CFG, a fixed seed."""
    pipeline = build_pipeline(components, scheduler="ddim")
    return pipeline("photo of ukj person", negative_prompt="blurry", num_inference_steps=2, guidance_scale=7.5,
                    height=64, width=64, generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


@pytest.mark.parametrize("family", ["sd1", "sd2-v"])
def test_exported_file_renders_the_same_image_as_its_pipeline(family, tiny_models, tmp_path) -> None:
    """What the WebUI shows from the file must match the training samples: same seed, same image."""
    source = tiny_models[family]
    expected = _render(source)
    assert expected.std() > 0.01  # a real picture of noise-shaped structure, not a constant
    exact = load_single_file(save_single_file(source, tmp_path / "model.safetensors"))
    # fp32 export: identical weights, so identical arithmetic; allow only float noise.
    np.testing.assert_allclose(_render(exact), expected, atol=1e-6, rtol=0)
    halved = load_single_file(save_single_file(source, tmp_path / "half.safetensors", half=True))
    # fp16 export (--half): weights rounded to 11 significant bits; pixels (0..1) stay within 0.02.
    assert np.abs(_render(halved) - expected).max() < 0.02
