"""Every bad model file in the corpus gives one clear error naming the file, never a traceback of another
type, and no code in it runs: loaded as the base model (single file or diffusers folder) and as a VAE."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from dreamcore.convert import ModelLoadError, read_state_dict, save_single_file
from dreamcore.models import load_base_model, load_vae, save_diffusers_folder
from reliability_corpus import DIFFUSERS_DAMAGE, SINGLE_FILES, BadFile, diffusers_damage, no_pickle_ran


@pytest.fixture(scope="module")
def tiny_model():
    from dreamcore.tiny import build_tiny_model

    return build_tiny_model("sd1", seed=0)


@pytest.fixture(scope="module")
def good_file(tiny_model, tmp_path_factory) -> Path:
    return save_single_file(tiny_model, tmp_path_factory.mktemp("good") / "good.safetensors")


@pytest.fixture(scope="module")
def good_folder(tiny_model, tmp_path_factory) -> Path:
    return save_diffusers_folder(tiny_model, tmp_path_factory.mktemp("good") / "diffusers")


@pytest.mark.parametrize("case", SINGLE_FILES, ids=lambda case: case.name)
@pytest.mark.parametrize("load", [load_base_model, load_vae], ids=["base model", "VAE"])
def test_a_bad_single_file_is_named_with_what_is_wrong(case: BadFile, load, good_file, tmp_path) -> None:
    tensors, metadata = read_state_dict(good_file)
    path = case.make(tmp_path, tensors, metadata, good_file)
    with pytest.raises(ModelLoadError) as raised:
        load(str(path))
    message = str(raised.value)
    assert path.name in message
    if load is load_base_model or not re.search("shape|missing VAE|unknown architecture|LoRA", case.message):
        # (as a VAE, a full model's wrong UNet or missing VAE shows as "not a VAE" or a shape: named all the same)
        assert re.search(case.message, message), message
    assert "\n" not in message and "Traceback" not in message
    assert no_pickle_ran(tmp_path)


@pytest.mark.parametrize("case", sorted(DIFFUSERS_DAMAGE))
def test_a_damaged_diffusers_folder_is_named_with_what_is_wrong(case: str, good_folder, tmp_path) -> None:
    folder = shutil.copytree(good_folder, tmp_path / "damaged")
    diffusers_damage(folder, case)
    with pytest.raises(ModelLoadError, match=DIFFUSERS_DAMAGE[case]) as raised:
        load_base_model(str(folder))
    assert str(folder) in str(raised.value)


def test_the_good_files_still_load(good_file, good_folder) -> None:
    assert load_base_model(str(good_file)).family == "sd1"
    assert load_base_model(str(good_folder)).family == "sd1"
