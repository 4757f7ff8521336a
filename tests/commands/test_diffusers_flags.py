"""The flags of diffusers' and ShivamShrirao's scripts that train differently do what those scripts do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dreamcore.commands.demo import make_demo_photos
from dreamcore.training import train
from dreamcore.training.run import load_models
from dreamcore.training.trainer import prompt_attention_mask
from tests.training.tiny_runs import tiny_config


def test_the_attention_mask_is_the_tokenizers(tiny_model_dir: Path) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")
    prompts = ["photo of sks person", "a very long prompt " * 10, ""]
    for length in (77, 8):
        tokens = tokenizer(prompts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        assert torch.equal(prompt_attention_mask(tokens.input_ids, tokenizer.eos_token_id), tokens.attention_mask)


def test_diffusers_training_flags_change_the_run_as_they_say(tiny_model_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    make_demo_photos(tmp_path / "photos", count=2, size=64)
    make_demo_photos(tmp_path / "dog photos", count=2, size=64)
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps([
        {"instance_prompt": "photo of ukj person", "class_prompt": "photo of a person", "instance_data_dir": "photos",
         "num_class_images": 1},
        {"instance_prompt": "photo of sks dog", "class_prompt": "photo of a dog", "instance_data_dir": "dog photos"}]))
    monkeypatch.chdir(tmp_path)  # relative paths, as typed on a command line
    config = tiny_config(tiny_model_dir, Path(), Path("out"), instance_data_dir="", instance_prompt="",
                         concepts_list="concepts.json", with_prior_preservation=True, num_class_images=2,
                         class_infer_steps=1, max_train_steps=4, train_text_encoder=True, tokenizer_max_length=16,
                         text_encoder_use_attention_mask=True, lr_scheduler="cosine_with_restarts", lr_num_cycles=2,
                         save_interval=1, save_min_steps=3)
    events: list = []
    result = train(config, callbacks=[events.append])
    assert result.status == "completed"
    warnings = [e.message for e in events if e.kind == "log" and e.level == "warning"]
    assert any("'ukj' is 2 tokens" in w for w in warnings) and not any("'sks' is" in w for w in warnings)
    # per-concept class images: the first concept's own count, the second the run's
    assert [len(list(folder.glob("*.png"))) for folder in sorted((tmp_path / "out" / "class_images").iterdir())] \
        == [2, 1]  # photo_of_a_dog, photo_of_a_person
    # save_min_steps: no checkpoint before step 3 (step 4 is the final model)
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("*.safetensors")) == \
        ["out-step-000003.safetensors"]
    rates = [e.learning_rate for e in events if e.kind == "progress"]
    assert rates[1] > rates[0] and rates[2] < rates[1]  # cosine_with_restarts: back up at the second cycle
    saved = json.loads((tmp_path / "out" / "train_config.json").read_text())
    assert saved["output_dir"] == str(tmp_path / "out") and saved["concepts_list"] == str(concepts)

    plain = train(config.replace(tokenizer_max_length=None, text_encoder_use_attention_mask=False,
                                 output_dir="plain", max_train_steps=1, save_interval=0))
    assert plain.losses[0] != pytest.approx(result.losses[0], rel=1e-6)  # the shorter, masked prompts count


def test_variant_reads_the_variant_files_of_a_diffusers_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from diffusers import UNet2DConditionModel

    from dreamcore.models import ModelLoadError

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    with torch.no_grad():
        unet.conv_in.weight.fill_(0.5)
    unet.to(torch.float16).save_pretrained(folder / "unet", variant="fp16")
    photos = tmp_path / "photos"
    make_demo_photos(photos, count=1, size=64)
    config = tiny_config(folder, photos, tmp_path / "out")
    assert not torch.all(load_models(config).unet.conv_in.weight == 0.5)  # the plain files
    assert torch.all(load_models(config.replace(variant="fp16")).unet.conv_in.weight == 0.5)
    with pytest.raises(ModelLoadError, match="no weights of the variant 'bf16'"):
        load_models(config.replace(variant="bf16"))
