"""The path real SD1.5/SD2 files take (no recorded architecture; shipped configs), run on tiny weights.

Full-size weights are too slow for CI, so the shipped configs are swapped for the tiny ones here: the
code under test cannot tell, and takes exactly the branch a published checkpoint takes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dreamcore.convert import load_single_file, read_state_dict, save_single_file
from dreamcore.convert.checkpoint_files import write_safetensors
from dreamcore.tiny import tiny_component_configs

from convert_helpers import module_state


@pytest.fixture
def tiny_is_published(monkeypatch):
    import dreamcore.convert.architecture as architecture
    import dreamcore.convert.single_file as single_file

    monkeypatch.setattr(architecture, "published_configs", tiny_component_configs)
    monkeypatch.setattr(single_file, "published_configs", tiny_component_configs)


@pytest.mark.parametrize("family", ["sd1", "sd2-v"])
def test_published_architecture_round_trip(family, tiny_models, tiny_is_published, tmp_path) -> None:
    published = dataclasses.replace(tiny_models[family], architecture=None)
    path = save_single_file(published, tmp_path / "published.safetensors")
    _, metadata = read_state_dict(path)
    assert "dreamcore.architecture" not in metadata
    assert metadata["modelspec.architecture"] == {"sd1": "stable-diffusion-v1",
                                                  "sd2-v": "stable-diffusion-v2-768-v"}[family]
    loaded = load_single_file(path)
    assert loaded.architecture is None and loaded.family == family
    assert all(torch.equal(a, b) for a, b in zip(module_state(loaded).values(), module_state(published).values()))


@pytest.mark.parametrize("looks_v", [True, False])
def test_bare_sd2_file_is_tested_for_v_prediction(looks_v, tiny_models, tiny_is_published, tmp_path,
                                                  monkeypatch) -> None:
    """No yaml, no metadata: the forward-pass test decides, as in the WebUI."""
    import dreamcore.convert.single_file as single_file

    monkeypatch.setattr(single_file, "looks_v_prediction", lambda unet: looks_v)
    published = dataclasses.replace(tiny_models["sd2"], architecture=None)
    tensors, _ = read_state_dict(save_single_file(published, tmp_path / "with-metadata.safetensors"))
    loaded = load_single_file(write_safetensors(tmp_path / "bare.safetensors", tensors, {}))
    assert loaded.family == ("sd2-v" if looks_v else "sd2")
    assert loaded.scheduler.config.prediction_type == ("v_prediction" if looks_v else "epsilon")
    assert loaded.architecture is None
