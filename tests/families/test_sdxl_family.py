"""The SDXL family: a tiny SDXL built in code loads from a diffusers folder as SDXL, and the family's
conditioning is what diffusers' StableDiffusionXLPipeline gives its UNet."""

from __future__ import annotations

import pytest
import torch

from dreamcore.cli import main
from dreamcore.components import ModelComponents
from dreamcore.families import get_family
from dreamcore.models import build_pipeline, load_base_model, save_diffusers_folder
from dreamcore.tiny import SDXL_POOLED_WIDTH, build_tiny_sdxl


def tiny_sdxl(seed: int = 0) -> ModelComponents:
    return build_tiny_sdxl(seed=seed)


def test_the_second_tokenizer_pads_with_an_exclamation_mark() -> None:
    family = get_family("sdxl")
    assert family.shipped_tokenizer(1).pad_token == "!" and family.shipped_tokenizer(0).pad_token == "<|endoftext|>"
    assert family.default_resolution == 1024


def test_conditioning_is_what_the_sdxl_pipeline_gives_its_unet() -> None:
    model = tiny_sdxl()
    family = get_family("sdxl")
    prompts = ["photo of sks person", "photo of a person"]
    with torch.no_grad():
        ids = family.token_ids(model, prompts, None)
        conditioning = family.unet_conditioning(family.encode([model.text_encoder, model.text_encoder_2], ids), 64)
        pipeline = build_pipeline(model)
        embeds, _, pooled, _ = pipeline.encode_prompt(prompts, do_classifier_free_guidance=False)
        time_ids = pipeline._get_add_time_ids((64, 64), (0, 0), (64, 64), dtype=embeds.dtype,
                                              text_encoder_projection_dim=SDXL_POOLED_WIDTH)
    assert type(pipeline).__name__ == "StableDiffusionXLPipeline"
    assert torch.allclose(conditioning.encoder_hidden_states, embeds, atol=1e-6)
    assert torch.allclose(conditioning.added_cond_kwargs["text_embeds"], pooled, atol=1e-6)
    assert torch.equal(conditioning.added_cond_kwargs["time_ids"], time_ids.repeat(2, 1))
    latents = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        out = model.unet(latents, torch.tensor([10, 10]), **conditioning.unet_kwargs()).sample
    assert out.shape == latents.shape


def test_a_diffusers_folder_loads_as_sdxl_with_both_text_encoders(tmp_path) -> None:
    folder = save_diffusers_folder(tiny_sdxl(), tmp_path / "sdxl")
    loaded = load_base_model(str(folder))
    assert loaded.family == "sdxl"
    assert type(loaded.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert loaded.tokenizer_2.pad_token == "!"
    with pytest.raises(Exception, match="family sd1 was asked for"):
        load_base_model(str(folder), family="sd1")


@pytest.mark.parametrize("fmt", ["diffusers", "safetensors"])
def test_tiny_model_command_writes_a_tiny_sdxl_that_loads_as_sdxl(fmt: str, tmp_path) -> None:
    assert main(["tiny-model", "--family", "sdxl", "--format", fmt, str(tmp_path / "out")]) == 0
    path = tmp_path / "out" if fmt == "diffusers" else tmp_path / "out" / "tiny-sdxl.safetensors"
    loaded = load_base_model(str(path))
    assert loaded.family == "sdxl"
    built = build_tiny_sdxl(seed=0)
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        mine, theirs = getattr(loaded, name).state_dict(), getattr(built, name).state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[key], theirs[key]) for key in theirs), name


def test_generate_draws_from_an_sdxl_single_file_and_its_lora(tmp_path) -> None:
    from dreamcore.generate import GenerationSettings, ModelSource, PipelineCache, generate_images
    from dreamcore.lora.adapters import LoraSettings, add_lora_adapters
    from dreamcore.lora.export import lora_weights_from_models
    from dreamcore.lora.files import kohya_metadata, write_kohya_file

    assert main(["tiny-model", "--family", "sdxl", "--format", "safetensors", str(tmp_path)]) == 0
    path = tmp_path / "tiny-sdxl.safetensors"
    adapted = build_tiny_sdxl(seed=0)
    add_lora_adapters(adapted.unet, None, LoraSettings(rank=4, alpha=4.0), "sdxl", torch.float32)
    with torch.no_grad():
        for name, parameter in adapted.unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # PEFT starts B at zero: an adapter that changes nothing
    weights = lora_weights_from_models(adapted)
    lora = write_kohya_file(tmp_path / "subject.safetensors", weights, kohya_metadata(weights, "tiny", "sks", {}))
    settings = GenerationSettings("photo of sks person", seed=3, num_inference_steps=2)
    cache = PipelineCache()
    plain = generate_images(path, settings, cache=cache)[0].image
    with_lora = generate_images(ModelSource(path, lora), settings, cache=cache)[0].image
    assert plain.size == (64, 64)  # the tiny SDXL's own size
    with cache.use(ModelSource(path)) as model:
        assert type(model.pipeline).__name__ == "StableDiffusionXLPipeline"
    assert not torch.equal(torch.tensor(list(plain.getdata())), torch.tensor(list(with_lora.getdata())))
