"""The key tables against the published SD layouts, and against diffusers' own single-file loader."""

from __future__ import annotations

import pytest
import torch

from dreamcore.convert.architecture import published_configs
from dreamcore.convert.layout import to_single_file_layout, unet_from_original, unet_to_original
from dreamcore.convert.modules import empty_text_encoder, empty_unet, empty_vae, text_encoder_state_dict
from dreamcore.convert.unet_keys import unet_key_table

# Names from the published SD1.5 / SD2.1 single files: where diffusers' modules must land.
PUBLISHED_UNET_KEYS = {
    "conv_in.weight": "input_blocks.0.0.weight",
    "time_embedding.linear_2.bias": "time_embed.2.bias",
    "down_blocks.0.resnets.0.norm1.weight": "input_blocks.1.0.in_layers.0.weight",
    "down_blocks.0.attentions.1.proj_in.weight": "input_blocks.2.1.proj_in.weight",
    "down_blocks.0.downsamplers.0.conv.weight": "input_blocks.3.0.op.weight",
    "down_blocks.1.resnets.0.conv_shortcut.weight": "input_blocks.4.0.skip_connection.weight",
    "down_blocks.2.downsamplers.0.conv.bias": "input_blocks.9.0.op.bias",
    "down_blocks.3.resnets.1.conv2.weight": "input_blocks.11.0.out_layers.3.weight",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight":
        "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
    "mid_block.resnets.1.time_emb_proj.weight": "middle_block.2.emb_layers.1.weight",
    "up_blocks.0.resnets.2.conv_shortcut.weight": "output_blocks.2.0.skip_connection.weight",
    "up_blocks.0.upsamplers.0.conv.weight": "output_blocks.2.1.conv.weight",
    "up_blocks.1.attentions.0.norm.weight": "output_blocks.3.1.norm.weight",
    "up_blocks.1.upsamplers.0.conv.weight": "output_blocks.5.2.conv.weight",
    "up_blocks.2.upsamplers.0.conv.bias": "output_blocks.8.2.conv.bias",
    "up_blocks.3.attentions.2.proj_out.weight": "output_blocks.11.1.proj_out.weight",
    "conv_norm_out.weight": "out.0.weight",
    "conv_out.bias": "out.2.bias",
}
PUBLISHED_VAE_KEYS = {
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
    "first_stage_model.encoder.down.2.downsample.conv.weight",
    "first_stage_model.encoder.mid.attn_1.proj_out.weight",
    "first_stage_model.encoder.norm_out.weight",
    "first_stage_model.decoder.up.3.upsample.conv.weight",
    "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
    "first_stage_model.decoder.up.0.block.2.conv2.weight",
    "first_stage_model.decoder.mid.block_2.norm1.bias",
    "first_stage_model.quant_conv.weight",
    "first_stage_model.post_quant_conv.bias",
}


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_published_unet_layout(family) -> None:
    configs = published_configs(family)
    table = unet_key_table(configs["unet"])
    for diffusers_key, original_key in PUBLISHED_UNET_KEYS.items():
        assert table.to_original(diffusers_key) == (original_key, False)
        assert table.to_diffusers(original_key) == (diffusers_key, False)
    unet = empty_unet(configs["unet"])  # full size, no memory: placeholder tensors
    original = unet_to_original(unet.state_dict(), configs["unet"])
    assert len(original) == len(unet.state_dict()) == 686  # every SD1.x/SD2.x UNet tensor, none merged
    assert list(unet_from_original(original, configs["unet"])) == list(unet.state_dict())
    assert "output_blocks.2.2.conv.weight" not in original  # the lowest up level has no attention


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_published_whole_model_layout(family) -> None:
    configs = published_configs(family)
    unet, vae = empty_unet(configs["unet"]), empty_vae(configs["vae"])
    text = empty_text_encoder(configs["text_encoder"])
    layers = configs["text_encoder"]["num_hidden_layers"]
    keys = to_single_file_layout(unet.state_dict(), vae.state_dict(), text_encoder_state_dict(text), family,
                                 configs["unet"], configs["vae"], layers)
    assert PUBLISHED_VAE_KEYS <= set(keys)
    assert tuple(keys["first_stage_model.encoder.mid.attn_1.q.weight"].shape) == (512, 512, 1, 1)
    if family == "sd1":
        assert tuple(keys["cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight"].shape) == (
            768, 3072)
        assert keys["cond_stage_model.transformer.text_model.embeddings.position_ids"].tolist() == [
            list(range(77))]
    else:
        assert layers == 23  # OpenCLIP ViT-H has 24; SD2 reads the penultimate one
        assert tuple(keys["cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight"].shape) == (
            3072, 1024)
        assert tuple(keys["cond_stage_model.model.positional_embedding"].shape) == (77, 1024)
        assert "cond_stage_model.model.transformer.resblocks.23.ln_1.weight" not in keys


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_diffusers_own_single_file_loader_agrees(family, tiny_files, tmp_path) -> None:
    """diffusers' from_single_file, given the model's configs, loads the very same weights from our file."""
    from diffusers import StableDiffusionPipeline

    from dreamcore.convert import load_single_file
    from dreamcore.models import save_diffusers_folder

    path = tiny_files[(family, ".safetensors")]
    ours = load_single_file(path)
    configs = save_diffusers_folder(ours, tmp_path / "configs")
    theirs = StableDiffusionPipeline.from_single_file(str(path), config=str(configs), local_files_only=True)
    for mine, other in ((ours.unet, theirs.unet), (ours.vae, theirs.vae)):
        assert all(torch.equal(tensor, other.state_dict()[key]) for key, tensor in mine.state_dict().items())
    other_text = text_encoder_state_dict(theirs.text_encoder)
    assert all(torch.equal(tensor, other_text[key])
               for key, tensor in text_encoder_state_dict(ours.text_encoder).items())
