"""`python -m dreamcore generate`: samplers, batch count, seeds, and PNGs the WebUI's PNG Info reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamcore.cli import main
from dreamcore.generate import SAMPLERS, GenerationSettings, PipelineCache, generate_images, settings_from_dict
from dreamcore.tiny import save_tiny_model

# The WebUI's reading of a parameters text, written from its documented grammar: the last line holds
# "Key: value" pairs (a value is a JSON string when it holds a comma, a colon or a line break); the lines
# before it are the prompt, then "Negative prompt: ..." to the end.
PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def webui_reading(text: str) -> dict[str, str]:
    *lines, last = text.strip().split("\n")
    if len(PAIR.findall(last)) < 3:
        lines, last = [*lines, last], ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    fields = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in PAIR.findall(last):
        fields[key] = json.loads(value) if value.startswith('"') else value
    return fields


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "anna-v1.safetensors", fmt="safetensors")


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_each_png_carries_parameters_the_webui_reads(tiny_file: Path, tmp_path: Path, capsys) -> None:
    code = main(["generate", "--model", str(tiny_file), "--prompt", "photo of sks person, smiling: happy",
                 "--negative_prompt", "blurry", "--seed", "41", "--num_inference_steps", "3", "--guidance_scale", "6.5",
                 "--sampler", "Euler a", "--batch_count", "2", "--width", "64", "--height", "72",
                 "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    paths = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in paths] == ["00000-41.png", "00001-42.png"]
    for path, seed in zip(paths, (41, 42)):
        image = Image.open(path)
        assert image.size == (64, 72)
        fields = webui_reading(image.info["parameters"])
        assert fields["Prompt"] == "photo of sks person, smiling: happy"
        assert fields["Negative prompt"] == "blurry"
        assert fields["Steps"] == "3" and fields["Sampler"] == "Euler a" and fields["CFG scale"] == "6.5"
        assert fields["Seed"] == str(seed) and fields["Size"] == "64x72" and fields["Model"] == "anna-v1"
        assert re.fullmatch(r"[0-9a-f]{10}", fields["Model hash"])


def test_karras_sampler_is_written_as_the_webui_splits_it(tiny_file: Path, tmp_path: Path) -> None:
    image = generate_images(tiny_file, GenerationSettings("photo of sks person", seed=3, num_inference_steps=2),
                            out=tmp_path)[0]
    fields = webui_reading(Image.open(image.path).info["parameters"])
    assert (fields["Sampler"], fields["Schedule type"]) == ("DPM++ 2M", "Karras")
    assert "Negative prompt" not in image.parameters


def test_same_seed_same_image_and_samplers_differ(tiny_file: Path, tmp_path: Path) -> None:
    cache = PipelineCache()
    drawn = {}
    for sampler in SAMPLERS:
        settings = GenerationSettings("photo of sks person", seed=9, num_inference_steps=3, sampler=sampler)
        first = generate_images(tiny_file, settings, out=tmp_path / "a", cache=cache)[0]
        again = generate_images(tiny_file, settings, out=tmp_path / "b", cache=cache)[0]
        assert np.array_equal(pixels(first.path), pixels(again.path)), sampler
        drawn[sampler] = pixels(first.path)
    names = list(drawn)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(drawn[a] - drawn[b]).max() > 0, f"{a} and {b} drew the same picture"


def test_files_are_numbered_never_overwritten(tiny_file: Path, tmp_path: Path) -> None:
    for _ in range(2):
        assert main(["generate", "--model", str(tiny_file), "--prompt", "photo of sks person", "--seed", "5",
                     "--num_inference_steps", "2", "--out", str(tmp_path)]) == 0
    first, second = sorted(tmp_path.glob("*.png"))
    assert (first.name, second.name) == ("00000-5.png", "00001-5.png")
    assert not list(tmp_path.glob(".tmp-*"))


def test_random_seed_is_drawn_recorded_and_reproduces(tiny_file: Path, tmp_path: Path) -> None:
    cache = PipelineCache()
    settings = GenerationSettings("photo of sks person", seed=None, num_inference_steps=2)
    drawn = generate_images(tiny_file, settings, out=tmp_path / "random", cache=cache)[0]
    recorded = int(webui_reading(drawn.parameters)["Seed"])
    assert recorded == drawn.seed and drawn.path.name == f"00000-{recorded}.png"
    again = generate_images(tiny_file, GenerationSettings("photo of sks person", seed=recorded, num_inference_steps=2),
                            out=tmp_path / "again", cache=cache)[0]
    assert np.array_equal(pixels(drawn.path), pixels(again.path))


def test_the_model_stays_loaded_until_released(tiny_file: Path, tmp_path: Path, monkeypatch) -> None:
    import importlib

    # the module, not the package's generate() function of the same name
    generate_module = importlib.import_module("dreamcore.generate")

    loads = []
    real_load = generate_module._load
    monkeypatch.setattr(generate_module, "_load", lambda source, device: loads.append(source) or real_load(source, device))
    cache = PipelineCache()
    settings = GenerationSettings("photo of sks person", seed=1, num_inference_steps=1)
    generate_images(tiny_file, settings, cache=cache)
    generate_images(tiny_file, settings, cache=cache)
    assert len(loads) == 1 and [s.path for s in cache.loaded()] == [tiny_file]
    assert cache.release() == ["anna-v1"] and cache.loaded() == []
    generate_images(tiny_file, settings, cache=cache)
    assert len(loads) == 2


def test_bad_settings_name_every_field(tiny_file: Path, tmp_path: Path, capsys) -> None:
    code = main(["generate", "--model", str(tiny_file), "--prompt", " ", "--num_inference_steps", "0",
                 "--width", "100", "--batch_count", "0", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    for field in ("prompt:", "num_inference_steps:", "width:", "batch_count:"):
        assert field in err
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_a_missing_model_is_named(tmp_path: Path, capsys) -> None:
    assert main(["generate", "--model", str(tmp_path / "gone.safetensors"), "--prompt", "x", "--out",
                 str(tmp_path / "out")]) == 1
    assert "gone.safetensors" in capsys.readouterr().err


def test_settings_from_a_dict_list_every_problem() -> None:
    with pytest.raises(ValueError) as caught:
        settings_from_dict({"negative_prompt": 3, "seed": "lucky", "sampler": "Heun", "colour": "red",
                            "guidance_scale": True})
    problems = caught.value.problems
    assert any("'colour'" in p for p in problems) and any(p.startswith("prompt: missing") for p in problems)
    for field in ("negative_prompt:", "seed:", "sampler:", "guidance_scale:"):
        assert any(p.startswith(field) for p in problems), field
    assert settings_from_dict({"prompt": "x", "seed": "random"}).seed is None
    assert settings_from_dict({"prompt": "x", "seed": -1}).seed is None


def test_a_lora_that_does_not_fit_is_an_error_naming_it(tiny_file: Path, tmp_path: Path, capsys) -> None:
    # a model file given as the LoRA: read as neither layout, reported as one line, not a traceback
    code = main(["generate", "--model", str(tiny_file), "--lora", str(tiny_file), "--prompt", "x",
                 "--num_inference_steps", "2", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines()[-1].startswith(f"error: {tiny_file}: ") and "LoRA key" in err
    assert not (tmp_path / "out").exists()


def test_a_lora_is_written_as_the_webui_draws_it_on_its_base_model(tiny_file: Path, tmp_path: Path,
                                                                    capsys) -> None:
    """Model and Model hash name the base; the LoRA goes into the prompt as <lora:name:1>, so the WebUI's
    "Send to txt2img" picks the base checkpoint by its hash and applies the LoRA from its Lora folder."""
    from dreamcore.lora.export import lora_weights_from_models
    from dreamcore.lora.files import kohya_metadata, write_kohya_file
    from dreamcore.tiny import build_tiny_model
    from lora_adapters import with_adapters

    # text-encoder adapters without out_proj, which diffusers' kohya reader cannot place
    model = with_adapters(build_tiny_model("sd1"), ["to_q", "to_v"], ["q_proj", "v_proj"])
    lora = lora_weights_from_models(model)
    lora_file = write_kohya_file(tmp_path / "anna-face.safetensors", lora, kohya_metadata(lora, "anna-v1", "sks"))
    plain = main(["generate", "--model", str(tiny_file), "--prompt", "photo of sks person", "--seed", "5",
                  "--num_inference_steps", "2", "--out", str(tmp_path / "plain")])
    code = main(["generate", "--model", str(tiny_file), "--lora", str(lora_file), "--prompt", "photo of sks person",
                 "--seed", "5", "--num_inference_steps", "2", "--out", str(tmp_path / "lora")])
    assert plain == code == 0, capsys.readouterr().err
    base_fields = webui_reading(Image.open(next((tmp_path / "plain").glob("*.png"))).info["parameters"])
    fields = webui_reading(Image.open(next((tmp_path / "lora").glob("*.png"))).info["parameters"])
    assert fields["Prompt"] == "photo of sks person <lora:anna-face:1>"
    assert fields["Model"] == "anna-v1" and fields["Model hash"] == base_fields["Model hash"]


def test_the_webuis_names_for_steps_and_cfg_scale_are_understood(tiny_file: Path, tmp_path: Path, capsys) -> None:
    code = main(["generate", "--model", str(tiny_file), "--prompt", "x", "--steps", "2", "--cfg_scale", "5",
                 "--seed", "3", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    fields = webui_reading(Image.open(next(tmp_path.glob("*.png"))).info["parameters"])
    assert fields["Steps"] == "2" and fields["CFG scale"] == "5"
