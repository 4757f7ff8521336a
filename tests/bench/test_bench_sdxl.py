"""bench --family: SDXL's published shapes (checked from the configs, no weights built), its inputs and presets,
the refused combinations, and a tiny SDXL benchmarked end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dreamcore.bench.recipe import (BenchPreset, bench_inputs, model_sizes, parse_preset, random_model_configs,
                                    recipe_config)
from dreamcore.families import DEFAULT_FAMILY, get_family
from dreamcore.presets import MEMORY_PRESETS, SDXL_FULL_PRESET, SDXL_LORA_PRESET, preset_overrides

SDXL = get_family("sdxl")


def test_the_full_size_sdxl_is_built_from_sdxls_published_shapes() -> None:
    configs = random_model_configs(SDXL, "sdxl")
    assert set(configs) == {"unet", "vae", "text_encoder", "text_encoder_2", "scheduler"}
    unet = configs["unet"]
    assert unet["cross_attention_dim"] == 2048 == 768 + 1280  # both text encoders side by side
    assert unet["addition_embed_type"] == "text_time"
    assert unet["projection_class_embeddings_input_dim"] == 1280 + 6 * unet["addition_time_embed_dim"]
    assert unet["block_out_channels"] == [320, 640, 1280] and unet["transformer_layers_per_block"] == [1, 2, 10]
    assert unet["sample_size"] * 8 == 1024 == model_sizes(SDXL)["sdxl"]
    assert configs["text_encoder"]["hidden_size"] == 768 and configs["text_encoder"]["num_hidden_layers"] == 12
    second = configs["text_encoder_2"]
    assert (second["hidden_size"], second["num_hidden_layers"], second["projection_dim"]) == (1280, 32, 1280)
    assert configs["vae"]["block_out_channels"] == [128, 256, 512, 512]
    # the default family keeps its one text encoder and its 512 px
    sd1 = random_model_configs(DEFAULT_FAMILY, DEFAULT_FAMILY.name)
    assert "text_encoder_2" not in sd1 and sd1["unet"]["cross_attention_dim"] == 768
    assert model_sizes(DEFAULT_FAMILY)[DEFAULT_FAMILY.name] == 512
    with pytest.raises(ValueError, match="not one of SDXL's"):
        random_model_configs(SDXL, DEFAULT_FAMILY.name)


def test_each_family_has_its_own_model_folder_and_photos(tmp_path: Path) -> None:
    full = bench_inputs(tmp_path, SDXL, "sdxl")
    assert (full.model, full.photos, full.resolution) == (tmp_path / "model-sdxl", tmp_path / "photos-1024", 1024)
    tiny = bench_inputs(tmp_path, SDXL, "tiny")
    assert tiny.model == tmp_path / "model-tiny-sdxl" and tiny.resolution == 64
    # the default family's folders keep their names, so earlier --work folders are reused
    assert bench_inputs(tmp_path, DEFAULT_FAMILY, "tiny").model == tmp_path / "model-tiny"
    assert bench_inputs(tmp_path, DEFAULT_FAMILY, DEFAULT_FAMILY.name).model == tmp_path / "model-sd1"
    with pytest.raises(ValueError, match="--model-size sd1 does not go with --family sdxl"):
        bench_inputs(tmp_path, SDXL, DEFAULT_FAMILY.name)


def test_the_sdxl_presets_run_as_named_with_their_tier(tmp_path: Path) -> None:
    def config(spec: str):
        return recipe_config(parse_preset(spec), tmp_path / "m", tmp_path / "p", tmp_path / "o", 60, 1024)

    lora = config(SDXL_LORA_PRESET)
    named = preset_overrides(SDXL_LORA_PRESET)
    assert lora.use_lora and lora.lora_rank == named["lora_rank"] and lora.lora_text_encoder
    assert lora.mixed_precision == named["mixed_precision"] and lora.gradient_checkpointing
    assert lora.resolution == 1024 and lora.max_train_steps == 60 and lora.with_prior_preservation
    full = config(SDXL_FULL_PRESET)
    tier = MEMORY_PRESETS[preset_overrides(SDXL_FULL_PRESET)["memory_preset"]]
    assert tier  # the preset names a tier, whose settings the bench applies itself
    assert {key: getattr(full, key) for key in tier} == tier
    assert not full.use_lora and full.memory_preset == "none" and full.resolution == 1024
    # an override still wins over the tier
    plain = config(f"{SDXL_FULL_PRESET}:cuda_graph=false")
    assert not plain.cuda_graph and plain.pure_bf16 == tier["pure_bf16"]
    assert parse_preset(f"{SDXL_LORA_PRESET}:n_save_sample=1") == BenchPreset(SDXL_LORA_PRESET, (("n_save_sample", 1),))


def test_bench_refuses_what_does_not_go_with_the_family(capsys) -> None:
    from dreamcore.cli import main

    assert main(["bench", "--family", "sdxl", "--model-size", DEFAULT_FAMILY.name]) == 2
    assert "--model-size sd1 does not go with --family sdxl; use sdxl or tiny" in capsys.readouterr().err
    assert main(["bench", "--family", "sdxl", "--preset", "guide-verbatim"]) == 2
    error = capsys.readouterr().err
    assert "guide-verbatim is the guide's SD1.x command" in error and "--family sd1" in error
    assert main(["bench", "--family", "sdxl", "--model-size", "tiny", "--steps", "3", "--warmup", "2"]) == 2
    assert "no steady state" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_runs_the_sdxl_lora_preset_on_a_tiny_sdxl(tmp_path: Path) -> None:
    from dreamcore.models import base_model_family

    result = subprocess.run([sys.executable, "-m", "dreamcore", "bench", "--family", "sdxl", "--model-size", "tiny",
                             "--preset", SDXL_LORA_PRESET, "--steps", "3", "--warmup", "1", "--work", str(tmp_path),
                             "--json", str(tmp_path / "bench.json")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (run,) = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert run["status"] == "ok" and run["label"] == SDXL_LORA_PRESET and run["steps"] == 3
    assert run["phases"]["steady_s_per_step"] > 0
    assert "recipe: SDXL shapes (tiny, 64 px)" in result.stdout and f"| {SDXL_LORA_PRESET}" in result.stdout
    assert base_model_family(str(tmp_path / "model-tiny-sdxl")) is SDXL
    (folder,) = (tmp_path / "runs").iterdir()
    trained = json.loads((folder / "train_config.json").read_text())
    assert trained["use_lora"] and trained["resolution"] == 64
    assert trained["pretrained_model_name_or_path"] == str(tmp_path / "model-tiny-sdxl")
    assert list(folder.glob("*.safetensors"))  # the LoRA export ran and is in the timing
