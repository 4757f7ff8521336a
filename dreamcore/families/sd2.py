"""Stable Diffusion 2.x: one OpenCLIP text encoder (gelu, padding with "!"); SD2 (512 px, epsilon) and
SD2-v (768 px, v-prediction) share their weights' layout and differ only in what the UNet predicts."""

from __future__ import annotations

from typing import Any, Mapping

from dreamcore.families.base import ModelFamily


class SD2Family(ModelFamily):
    def recognises_folder(self, model_index: Mapping[str, Any], text_encoder_config: Mapping[str, Any],
                          scheduler_config: Mapping[str, Any]) -> bool:
        if "text_encoder_2" in model_index or text_encoder_config.get("hidden_act") == "quick_gelu":
            return False
        return scheduler_config.get("prediction_type", "epsilon") == self.prediction_type


_PROBE = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"  # OpenCLIP
SD2 = SD2Family(name="sd2", label="SD2.x", webui_version="SD2", key_layout="sd2", assets_name="sd2",
                prediction_type="epsilon", default_resolution=512, pad_tokens=("!",),
                single_file_probe=_PROBE, text_encoder_label="OpenCLIP", text_encoder_widths=(1024,),
                fuses_text_attention=True, kohya_version="sd_v2", modelspec_architecture="stable-diffusion-v2-512")
SD2_V = SD2Family(name="sd2-v", label="SD2.x 768-v", webui_version="SD2", key_layout="sd2", assets_name="sd2-v",
                  prediction_type="v_prediction", default_resolution=768, pad_tokens=("!",),
                  single_file_probe=_PROBE, text_encoder_label="OpenCLIP", text_encoder_widths=(1024,),
                  fuses_text_attention=True, kohya_version="sd_v2",
                  modelspec_architecture="stable-diffusion-v2-768-v")
