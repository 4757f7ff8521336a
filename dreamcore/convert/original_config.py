"""The original (ldm) ``.yaml`` model config the WebUIs read beside a checkpoint, both ways.

The WebUI guesses a file's model type from its keys; a ``<same name>.yaml`` beside it always wins. SD2
v-prediction models need one (their keys equal SD2's), so ``save_single_file`` writes it, generated here
from the diffusers configs. Reading one tells dreamcore the family, prediction type, VAE scale and noise
schedule of a file that came with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from dreamcore.convert.errors import ModelLoadError
from dreamcore.families.registry import family_of_key_layout, get_family
from dreamcore.families.sd1 import SD1
from dreamcore.families.sd2 import SD2

SD1_TEXT_TARGET = "ldm.modules.encoders.modules.FrozenCLIPEmbedder"
SD2_TEXT_TARGET = "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder"


@dataclass(frozen=True)
class OriginalConfig:
    """What a ``.yaml`` beside a checkpoint says about the model."""

    family: str  # a family of the SD1/SD2 key layouts
    scale_factor: float | None
    beta_start: float | None
    beta_end: float | None
    num_train_timesteps: int | None


def original_config(family: str, unet: Mapping[str, Any], vae: Mapping[str, Any],
                    scheduler: Mapping[str, Any]) -> dict[str, Any]:
    """The ldm config describing a model with these diffusers configs (as the WebUIs' yaml files do)."""
    channels = list(unet["block_out_channels"])
    heads = unet["attention_head_dim"]
    heads = [heads] * len(channels) if isinstance(heads, int) else list(heads)
    attending = [i for i, block in enumerate(unet["down_block_types"]) if block.startswith("CrossAttn")]
    head_settings: dict[str, int]
    if len({heads[i] for i in attending}) == 1:
        head_settings = {"num_heads": heads[attending[0]], "num_head_channels": -1}
    elif len({channels[i] // heads[i] for i in attending}) == 1:
        head_settings = {"num_head_channels": channels[attending[0]] // heads[attending[0]]}
    else:
        raise ModelLoadError(f"attention heads {heads} over channels {channels} cannot be written as an original "
                             "config")
    vae_channels = list(vae["block_out_channels"])
    text_stage: dict[str, Any] = ({"target": SD1_TEXT_TARGET} if family == SD1.name else
                                  {"target": SD2_TEXT_TARGET, "params": {"freeze": True, "layer": "penultimate"}})
    params: dict[str, Any] = {
        "linear_start": scheduler.get("beta_start", 0.00085),
        "linear_end": scheduler.get("beta_end", 0.012),
        "num_timesteps_cond": 1,
        "log_every_t": 200,
        "timesteps": scheduler.get("num_train_timesteps", 1000),
        "first_stage_key": "jpg",
        "cond_stage_key": "txt",
        "image_size": unet["sample_size"],
        "channels": unet["in_channels"],
        "cond_stage_trainable": False,
        "conditioning_key": "crossattn",
        "monitor": "val/loss_simple_ema",
        "scale_factor": vae.get("scaling_factor", 0.18215),
        "use_ema": False,
        "unet_config": {
            "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": {
                "use_checkpoint": True,
                "use_fp16": True,
                "image_size": 32,  # unused by the model; kept as in the published configs
                "in_channels": unet["in_channels"],
                "out_channels": unet["out_channels"],
                "model_channels": channels[0],
                "attention_resolutions": [2 ** i for i in attending],
                "num_res_blocks": unet["layers_per_block"],
                "channel_mult": [c // channels[0] for c in channels],
                **head_settings,
                "use_spatial_transformer": True,
                "use_linear_in_transformer": bool(unet.get("use_linear_projection", False)),
                "transformer_depth": 1,
                "context_dim": unet["cross_attention_dim"],
                "legacy": False,
            },
        },
        "first_stage_config": {
            "target": "ldm.models.autoencoder.AutoencoderKL",
            "params": {
                "embed_dim": vae["latent_channels"],
                "monitor": "val/rec_loss",
                "ddconfig": {
                    "double_z": True,
                    "z_channels": vae["latent_channels"],
                    "resolution": 256,
                    "in_channels": vae["in_channels"],
                    "out_ch": vae["out_channels"],
                    "ch": vae_channels[0],
                    "ch_mult": [c // vae_channels[0] for c in vae_channels],
                    "num_res_blocks": vae["layers_per_block"],
                    "attn_resolutions": [],
                    "dropout": 0.0,
                },
                "lossconfig": {"target": "torch.nn.Identity"},
            },
        },
        "cond_stage_config": text_stage,
    }
    if get_family(family).prediction_type == "v_prediction":
        params = {"parameterization": "v", **params}
    return {"model": {"base_learning_rate": 1.0e-4, "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                      "params": params}}


def original_config_yaml(config: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)


def read_original_config(path: str | Path) -> OriginalConfig:
    """Read a WebUI/ldm ``.yaml`` model config; errors name the file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ModelLoadError(f"{path}: could not read this model config ({error}); fix or remove it") from None
    params = data.get("model", {}).get("params") if isinstance(data, dict) else None
    if not isinstance(params, dict):
        raise ModelLoadError(f"{path} is not a Stable Diffusion model config (no model.params); fix or remove it")
    target = str((params.get("cond_stage_config") or {}).get("target", ""))
    if target.endswith("FrozenOpenCLIPEmbedder"):
        family = family_of_key_layout(SD2.key_layout, "v_prediction" if params.get("parameterization") == "v"
                                      else "epsilon").name
    elif target.endswith("FrozenCLIPEmbedder"):
        if params.get("parameterization") == "v":
            raise ModelLoadError(f"{path}: SD1 with v-prediction is not supported")
        family = SD1.name
    else:
        raise ModelLoadError(f"{path}: text encoder {target or '(none)'} is not SD1's or SD2's; dreamcore trains "
                             "Stable Diffusion 1.x and 2.x only")
    in_channels = ((params.get("unet_config") or {}).get("params") or {}).get("in_channels", 4)
    if in_channels != 4:
        raise ModelLoadError(f"{path}: a UNet with {in_channels} input channels (inpainting or other special "
                             "model) is not supported as a base model")

    def number(key: str) -> float | None:
        return float(params[key]) if key in params else None

    timesteps = params.get("timesteps")
    return OriginalConfig(family=family, scale_factor=number("scale_factor"), beta_start=number("linear_start"),
                          beta_end=number("linear_end"),
                          num_train_timesteps=int(timesteps) if timesteps is not None else None)
