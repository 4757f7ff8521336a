"""Stable Diffusion XL (base): two text encoders (OpenAI CLIP ViT-L and OpenCLIP ViT-bigG with its projection),
epsilon prediction, 1024 px. The UNet reads both encoders' penultimate hidden states side by side, plus added
conditioning: the second encoder's pooled (projected) embedding and six size ids, (original height, width,
crop top, left, target height, width), as diffusers' train_dreambooth_lora_sdxl.py computes them.

Single files: dreamcore/convert/sdxl_single_file.py (key tables, refiner refused by name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from dreamcore.families.base import ModelFamily, UnetConditioning

if TYPE_CHECKING:
    import torch

    from dreamcore.components import ModelComponents


class SDXLFamily(ModelFamily):
    def recognises_folder(self, model_index: Mapping[str, Any], text_encoder_config: Mapping[str, Any],
                          scheduler_config: Mapping[str, Any]) -> bool:
        # the refiner has text_encoder_2 only (no text_encoder), and is refused where it loads
        return "text_encoder_2" in model_index and "text_encoder" in model_index

    def encode(self, text_encoders: Sequence[Any], token_ids: Sequence["torch.Tensor"],
               attention_masks: Sequence["torch.Tensor"] | None = None) -> tuple["torch.Tensor", ...]:
        """(hidden states of both encoders' penultimate layers, concatenated; the second's pooled embedding)."""
        import torch

        hidden, pooled = [], None
        for index, (encoder, ids) in enumerate(zip(text_encoders, token_ids)):
            mask = None if attention_masks is None else attention_masks[index]
            output = encoder(ids, attention_mask=mask, output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
            pooled = output[0]  # CLIPTextModelWithProjection's text_embeds (the last encoder's)
        return torch.cat(hidden, dim=-1), pooled

    def unet_conditioning(self, encoded: Sequence["torch.Tensor"], resolution: int) -> UnetConditioning:
        import torch

        hidden, pooled = encoded
        # photos are cropped square at the training resolution (prepare_photos), so the original size, the
        # crop's top-left corner and the target size are the same for every image. Filled on the device, not
        # copied from a host list: a copy from the host cannot be recorded in the CUDA-graph step.
        time_ids = torch.full((hidden.shape[0], 6), resolution, dtype=hidden.dtype, device=hidden.device)
        time_ids[:, 2:4] = 0
        return UnetConditioning(hidden, {"text_embeds": pooled, "time_ids": time_ids})

    def pipeline(self, components: "ModelComponents", scheduler: Any) -> Any:
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(vae=components.vae, text_encoder=components.text_encoder,
                                         text_encoder_2=components.text_encoder_2, tokenizer=components.tokenizer,
                                         tokenizer_2=components.tokenizer_2, unet=components.unet,
                                         scheduler=scheduler, force_zeros_for_empty_prompt=True)


SDXL = SDXLFamily(name="sdxl", label="SDXL", webui_version="SDXL", key_layout="sdxl", assets_name="sdxl",
                  prediction_type="epsilon", default_resolution=1024, pad_tokens=("<|endoftext|>", "!"),
                  single_file_probe="conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
                  text_encoder_names=("text_encoder", "text_encoder_2"), tokenizer_names=("tokenizer", "tokenizer_2"),
                  text_encoder_classes=("CLIPTextModel", "CLIPTextModelWithProjection"),
                  pipeline_class="StableDiffusionXLPipeline", text_encoder_label="OpenAI CLIP + OpenCLIP",
                  text_encoder_widths=(768, 1280), fuses_text_attention=True, kohya_version="sdxl_base_v1-0",
                  modelspec_architecture="stable-diffusion-xl-v1-base", training_resolution=1024,
                  memory_scale=3.0)
