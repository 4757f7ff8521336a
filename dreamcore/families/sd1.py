"""Stable Diffusion 1.x: one OpenAI CLIP text encoder (quick_gelu), epsilon prediction, 512 px."""

from __future__ import annotations

from typing import Any, Mapping

from dreamcore.families.base import ModelFamily


class SD1Family(ModelFamily):
    def recognises_folder(self, model_index: Mapping[str, Any], text_encoder_config: Mapping[str, Any],
                          scheduler_config: Mapping[str, Any]) -> bool:
        # OpenAI's CLIP uses quick_gelu; SD2's OpenCLIP encoder uses gelu
        return "text_encoder_2" not in model_index and text_encoder_config.get("hidden_act") == "quick_gelu"


SD1 = SD1Family(name="sd1", label="SD1.x", webui_version="SD1", key_layout="sd1", assets_name="sd1",
                prediction_type="epsilon", default_resolution=512, pad_tokens=("<|endoftext|>",),
                single_file_probe="cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                kohya_version="sd_v1", modelspec_architecture="stable-diffusion-v1")
