"""The SDXL family: a tiny SDXL built in code loads from a diffusers folder as SDXL, and the family's
conditioning is what diffusers' StableDiffusionXLPipeline gives its UNet."""

from __future__ import annotations

import pytest
import torch

from dreamcore.components import ModelComponents
from dreamcore.families import get_family
from dreamcore.models import build_pipeline, load_base_model, save_diffusers_folder


def tiny_sdxl(seed: int = 0) -> ModelComponents:
    """SDXL's layout with a few channels: two CLIP text encoders (the second with a projection), a UNet with
    added text/time conditioning, a tiny VAE; random weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                max_position_embeddings=77, projection_dim=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text, hidden_act="quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text, hidden_act="gelu"))
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                                attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=6 * 8 + 32, transformer_layers_per_block=1)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        sample_size=64)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    family = get_family("sdxl")
    return ModelComponents("sdxl", unet.eval(), vae.eval(), text_encoder.eval(), family.shipped_tokenizer(0),
                           scheduler, text_encoder_2=text_encoder_2.eval(), tokenizer_2=family.shipped_tokenizer(1))


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
                                              text_encoder_projection_dim=32)
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
