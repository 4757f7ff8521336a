"""LoRA files without training: kohya <-> diffusers folder conversion, family detection, bad inputs, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dreamcore.lora.adapters import LoraSettings, add_lora_adapters
from dreamcore.lora.export import lora_weights_from_models
from dreamcore.lora.files import (LoraWeights, kohya_metadata, looks_like_lora, read_lora,
                                  webui_prompt_snippet, write_kohya_file, write_peft_folder)
from dreamcore.lora.kohya import LoraFormatError, kohya_to_peft, peft_to_kohya
from dreamcore.tiny import build_tiny_model


def trained_looking_lora(family: str, rank: int = 2, alpha: float = 3.0) -> LoraWeights:
    """Adapters with random (non-zero) lora_B, as after training."""
    model = build_tiny_model(family)
    add_lora_adapters(model.unet, model.text_encoder, LoraSettings(rank, alpha), family)
    generator = torch.Generator().manual_seed(3)
    for module in (model.unet, model.text_encoder):
        for name, parameter in module.named_parameters():
            if "lora_B" in name:
                parameter.data = torch.randn(parameter.shape, generator=generator) * 0.1
    return lora_weights_from_models(model)


@pytest.fixture(scope="module")
def sd1_lora() -> LoraWeights:
    return trained_looking_lora("sd1")


def assert_same_weights(a: LoraWeights, b: LoraWeights) -> None:
    assert a.parts.keys() == b.parts.keys()
    for part in a.parts:
        assert a.parts[part].keys() == b.parts[part].keys()
        for key in a.parts[part]:
            torch.testing.assert_close(a.parts[part][key].float(), b.parts[part][key].float(), rtol=0, atol=0)
    assert a.alphas == b.alphas


def test_kohya_and_peft_keys_convert_both_ways_exactly(sd1_lora: LoraWeights) -> None:
    state = peft_to_kohya(sd1_lora.parts, sd1_lora.alphas)
    parts, alphas = kohya_to_peft(state, "sd1")
    assert_same_weights(sd1_lora, LoraWeights(parts, alphas, "sd1"))
    assert all(k.startswith("text_model.") for k in parts["text_encoder"])  # the name every tool uses


def test_convert_kohya_to_diffusers_folder_and_back(sd1_lora: LoraWeights, tmp_path: Path) -> None:
    from dreamcore.convert.command import convert

    kohya = write_kohya_file(tmp_path / "me.safetensors", sd1_lora,
                             kohya_metadata(sd1_lora, "tiny", "photo of ukj person"), half=False)
    folder = convert(str(kohya), str(tmp_path / "me-diffusers"))  # `dreamcore convert` hands LoRAs on
    assert (folder / "pytorch_lora_weights.safetensors").is_file() and looks_like_lora(folder)
    assert_same_weights(sd1_lora, read_lora(folder))
    back = convert(str(folder), str(tmp_path / "back.safetensors"))
    assert_same_weights(sd1_lora, read_lora(back))
    assert set(load_file(str(back))) == set(load_file(str(kohya)))


def test_per_module_ranks_and_alphas_survive_the_folder(tmp_path: Path) -> None:
    weights = trained_looking_lora("sd1", rank=2, alpha=3.0)
    key = next(k for k in weights.alphas if k.startswith("unet."))
    weights.alphas[key] = 7.0  # one module differs, as in LoRAs resized per layer
    folder = write_peft_folder(tmp_path / "f", weights)
    assert read_lora(folder).alphas == weights.alphas


def test_family_comes_from_metadata_or_the_text_encoder_width(tmp_path: Path) -> None:
    sd2 = trained_looking_lora("sd2")
    path = write_kohya_file(tmp_path / "sd2.safetensors", sd2, kohya_metadata(sd2, "tiny", "x"))
    assert read_lora(path).family == "sd2"
    tensors = load_file(str(path))
    save_file(tensors, str(tmp_path / "bare.safetensors"), metadata={"ss_v2": "True"})  # a kohya-written file
    assert read_lora(tmp_path / "bare.safetensors").family == "sd2"


def test_half_files_are_fp16_with_fp32_alphas(sd1_lora: LoraWeights, tmp_path: Path) -> None:
    path = write_kohya_file(tmp_path / "h.safetensors", sd1_lora, {}, half=True)
    tensors = load_file(str(path))
    assert {t.dtype for k, t in tensors.items() if k.endswith("weight")} == {torch.float16}
    assert {t.dtype for k, t in tensors.items() if k.endswith("alpha")} == {torch.float32}


def test_bad_lora_inputs_say_what_is_wrong(tmp_path: Path, sd1_lora: LoraWeights) -> None:
    with pytest.raises(LoraFormatError, match="no pytorch_lora_weights.safetensors"):
        read_lora(tmp_path)
    save_file({"lora_unet_not_a_layer.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_not_a_layer.lora_up.weight": torch.zeros(4, 2)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(LoraFormatError, match="lora_unet_not_a_layer.*no unet module"):
        read_lora(tmp_path / "odd.safetensors")
    state = peft_to_kohya(sd1_lora.parts, sd1_lora.alphas)
    up = next(k for k in state if k.endswith(".lora_up.weight"))
    save_file({k: v for k, v in state.items() if k != up}, str(tmp_path / "cut.safetensors"))
    with pytest.raises(LoraFormatError, match="has no matching"):
        read_lora(tmp_path / "cut.safetensors", family="sd1")
    save_file({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(2, 4)},
              str(tmp_path / "xl.safetensors"), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    with pytest.raises(LoraFormatError, match="it is an SDXL LoRA"):  # an SDXL LoRA asked for as SD1
        read_lora(tmp_path / "xl.safetensors", family="sd1")
    with pytest.raises(ValueError, match="as .safetensors"):
        write_kohya_file(tmp_path / "x.ckpt", sd1_lora, {})


def test_merge_lora_cli_reports_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dreamcore.cli import main
    from dreamcore.tiny import save_tiny_model

    base = save_tiny_model(tmp_path / "base.safetensors", family="sd2", fmt="safetensors")
    assert main(["merge-lora", str(base), str(tmp_path / "missing.safetensors"), str(tmp_path / "o.safetensors")]) == 1
    assert "missing.safetensors" in capsys.readouterr().err
    sd1 = trained_looking_lora("sd1")
    lora = write_kohya_file(tmp_path / "sd1.safetensors", sd1, kohya_metadata(sd1, "tiny", "x"))
    assert main(["merge-lora", str(base), str(lora), str(tmp_path / "o.safetensors")]) == 1
    assert "LoRA for SD1.x models but the model is SD2.x" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_webui_prompt_snippet_uses_the_card(sd1_lora: LoraWeights, tmp_path: Path) -> None:
    path = write_kohya_file(tmp_path / "ukj.safetensors", sd1_lora, {},
                            user_metadata={"activation text": "photo of ukj person", "preferred weight": 0.8})
    assert webui_prompt_snippet(path) == "<lora:ukj:0.8> photo of ukj person"
    assert webui_prompt_snippet(path, weight=1) == "<lora:ukj:1> photo of ukj person"
    assert json.loads(path.with_suffix(".json").read_text())["activation text"] == "photo of ukj person"


def test_lora_settings_are_validated_only_with_use_lora() -> None:
    from dreamcore import TrainConfig

    quiet = TrainConfig(lora_rank=0, lora_dropout=2.0)
    assert not [p for p in quiet.problems() if p.startswith("lora")]
    loud = TrainConfig(use_lora=True, lora_rank=0, lora_alpha=0.0, lora_dropout=1.0, train_text_encoder=True,
                       lora_text_encoder=False, lora_target_modules="to_q, to k")
    problems = [p for p in loud.problems() if p.startswith("lora")]
    assert [p.split(":")[0] for p in problems] == ["lora_rank", "lora_alpha", "lora_dropout", "lora_text_encoder",
                                                   "lora_target_modules"]


def test_merge_weight_scales_the_change_linearly(sd1_lora: LoraWeights, tmp_path: Path) -> None:
    from dreamcore.lora.merge import apply_lora

    path = write_kohya_file(tmp_path / "l.safetensors", sd1_lora, kohya_metadata(sd1_lora, "tiny", "x"), half=False)
    base = build_tiny_model("sd1").unet.state_dict()
    merged = {}
    for weight in (0.5, 1.0):
        model = build_tiny_model("sd1")
        apply_lora(model, path, weight)
        merged[weight] = model.unet.state_dict()
    assert set(merged[1.0]) == set(base)  # no LoRA layers left behind in the merged model
    changed = [k for k in base if not torch.equal(base[k], merged[1.0][k])]
    adapted = (".attn", ".proj_in.", ".proj_out.", ".ff.net.")  # the default targets' layers
    assert changed and all(any(part in k for part in adapted) and k.endswith("weight") for k in changed)
    for key in changed:
        torch.testing.assert_close(2 * (merged[0.5][key] - base[key]), merged[1.0][key] - base[key],
                                   rtol=1e-4, atol=1e-6)


def test_frozen_text_encoder_gets_no_adapter() -> None:
    model = build_tiny_model("sd1")
    trained = add_lora_adapters(model.unet, None, LoraSettings(), "sd1")
    assert set(trained) == {"unet"}
    weights = lora_weights_from_models(model)
    assert set(weights.parts) == {"unet"}
    assert not any("lora_" in name for name, _ in model.text_encoder.named_modules())
    trainable = [n for n, p in model.unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_convert_cli_converts_a_lora(sd1_lora: LoraWeights, tmp_path: Path) -> None:
    from dreamcore.cli import main

    kohya = write_kohya_file(tmp_path / "me.safetensors", sd1_lora, {}, half=False)
    assert main(["convert", str(kohya), str(tmp_path / "folder")]) == 0
    assert_same_weights(sd1_lora, read_lora(tmp_path / "folder"))
    assert main(["convert", str(kohya), str(tmp_path / "x.ckpt")]) == 1  # a LoRA is never a .ckpt
