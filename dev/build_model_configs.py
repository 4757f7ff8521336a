"""Write dreamcore's shipped model configs (diffusers layout) for SD1.x, SD2.x-512, SD2.x-768-v and SDXL base.

Run by a developer when a config changes; the values are the published Stable Diffusion architectures.
Only configs are written: no weights are created at full size.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "dreamcore" / "assets" / "configs"

DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]


def unet(cross_attention_dim: int, head_dim, linear_projection: bool, sample_size: int) -> dict:
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": sample_size, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
        "flip_sin_to_cos": True, "freq_shift": 0, "down_block_types": DOWN, "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": UP, "only_cross_attention": False, "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2, "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu",
        "norm_num_groups": 32, "norm_eps": 1e-05, "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": head_dim, "use_linear_projection": linear_projection,
        "upcast_attention": False,
    }


def vae(sample_size: int) -> dict:
    return {
        "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "act_fn": "silu",
        "latent_channels": 4, "norm_num_groups": 32, "sample_size": sample_size, "scaling_factor": 0.18215,
    }


def text_encoder(hidden: int, intermediate: int, layers: int, heads: int, act: str, projection: int) -> dict:
    return {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": 49408,
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "max_position_embeddings": 77, "hidden_act": act,
        "layer_norm_eps": 1e-05, "projection_dim": projection, "bos_token_id": 0, "eos_token_id": 2,
        "pad_token_id": 1, "initializer_range": 0.02, "initializer_factor": 1.0, "attention_dropout": 0.0,
        "dropout": 0.0, "torch_dtype": "float32",
    }


def scheduler(prediction_type: str) -> dict:
    return {
        "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
        "prediction_type": prediction_type,
    }


FAMILIES = {
    "sd1": (unet(768, 8, False, 64), vae(512), text_encoder(768, 3072, 12, 12, "quick_gelu", 768), scheduler("epsilon")),
    "sd2": (unet(1024, [5, 10, 20, 20], True, 64), vae(512), text_encoder(1024, 4096, 23, 16, "gelu", 512), scheduler("epsilon")),
    "sd2-v": (unet(1024, [5, 10, 20, 20], True, 96), vae(768), text_encoder(1024, 4096, 23, 16, "gelu", 512), scheduler("v_prediction")),
}


def sdxl_unet() -> dict:
    """SDXL base: three levels (no attention on the first), 1, 2 and 10 transformer blocks, two text encoders'
    hidden states side by side (768 + 1280 = 2048 wide), and the added "text_time" embedding: the pooled
    1280-wide text embedding plus six size/crop numbers of 256 each (1280 + 6 * 256 = 2816)."""
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": 128, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
        "flip_sin_to_cos": True, "freq_shift": 0,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "only_cross_attention": False, "block_out_channels": [320, 640, 1280], "layers_per_block": 2,
        "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32,
        "norm_eps": 1e-05, "cross_attention_dim": 2048, "transformer_layers_per_block": [1, 2, 10],
        "attention_head_dim": [5, 10, 20], "use_linear_projection": True, "upcast_attention": False,
        "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    }


def sdxl_text_encoder_2() -> dict:
    """OpenCLIP ViT-bigG/14's text tower with its projection (SDXL's pooled embedding comes from it)."""
    return {**text_encoder(1280, 5120, 32, 20, "gelu", 1280), "architectures": ["CLIPTextModelWithProjection"]}


SDXL = {
    "unet": ("config.json", sdxl_unet()),
    # SDXL's own VAE: SD's layout, another latent scale
    "vae": ("config.json", {**vae(1024), "scaling_factor": 0.13025, "force_upcast": True}),
    "text_encoder": ("config.json", text_encoder(768, 3072, 12, 12, "quick_gelu", 768)),
    "text_encoder_2": ("config.json", sdxl_text_encoder_2()),
    "scheduler": ("scheduler_config.json", {**scheduler("epsilon"), "timestep_spacing": "leading"}),
}


def main() -> None:
    for family, (unet_config, vae_config, text_config, scheduler_config) in FAMILIES.items():
        folder = OUT / family
        for sub, name, config in (("unet", "config.json", unet_config), ("vae", "config.json", vae_config),
                                  ("text_encoder", "config.json", text_config),
                                  ("scheduler", "scheduler_config.json", scheduler_config)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            (folder / sub / name).write_text(json.dumps(config, indent=2) + "\n")
    for sub, (name, config) in SDXL.items():
        (OUT / "sdxl" / sub).mkdir(parents=True, exist_ok=True)
        (OUT / "sdxl" / sub / name).write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main()
