"""What a model family is to dreamcore: the one place that knows how a kind of Stable Diffusion is built.

A family says which components it loads (and with which classes), how prompts become the UNet's
conditioning in training and sampling, which shipped configs and tokenizers it uses, its default
resolution, and which single-file key tables hold its weights. Everything else (loading, training,
saving, generating) asks the family instead of testing family names. Adding a family is one module
that defines a ``ModelFamily`` and registers it in ``registry.py``.

Nothing here imports torch, diffusers or transformers at module level: ``dreamcore.config`` derives its
choices from the registry, and importing it must stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import torch

    from dreamcore.components import ModelComponents


@dataclass(frozen=True)
class UnetConditioning:
    """What the UNet reads besides the noisy latents and the timestep."""

    encoder_hidden_states: "torch.Tensor"
    # SDXL's added conditioning (pooled text embeddings and size/crop ids); None for SD1/SD2
    added_cond_kwargs: dict[str, "torch.Tensor"] | None = None

    def unet_kwargs(self) -> dict[str, Any]:
        if self.added_cond_kwargs is None:
            return {"encoder_hidden_states": self.encoder_hidden_states}
        return {"encoder_hidden_states": self.encoder_hidden_states, "added_cond_kwargs": self.added_cond_kwargs}


@dataclass(frozen=True)
class ModelFamily:
    """One kind of Stable Diffusion model. Subclasses override the methods whose behaviour differs."""

    name: str  # as the CLI, configs and files name it: "sd1", "sd2", "sd2-v", "sdxl"
    label: str  # as people know it: "SD1.x"
    webui_version: str  # the WebUI card's "sd version" field
    key_layout: str  # which single-file key tables hold its weights (dreamcore/convert): "sd1", "sd2", "sdxl"
    assets_name: str  # its folder of shipped configs, dreamcore/assets/configs/<assets_name>
    prediction_type: str  # "epsilon" or "v_prediction"
    default_resolution: int  # pixels; what the base was trained at
    pad_tokens: tuple[str, ...]  # the padding token of each tokenizer, in text-encoder order
    single_file_probe: str  # a key only a single file of this key layout holds (its text encoder's)
    text_encoder_names: tuple[str, ...] = ("text_encoder",)  # ModelComponents fields, in order
    tokenizer_names: tuple[str, ...] = ("tokenizer",)
    text_encoder_classes: tuple[str, ...] = ("CLIPTextModel",)  # transformers classes, same order
    pipeline_class: str = "StableDiffusionPipeline"  # diffusers' pipeline for sampling and saving
    text_encoder_label: str = "OpenAI CLIP"  # what its text encoders are, for messages
    text_encoder_widths: tuple[int, ...] = (768,)  # hidden size of each text encoder, in order
    # its single files hold a text encoder's q, k, v fused (OpenCLIP's in_proj), so a WebUI applies a
    # text-encoder LoRA to them only when all of them have one
    fuses_text_attention: bool = False
    kohya_version: str = ""  # the ss_base_model_version kohya LoRAs of this family carry ("sd_v1")
    # pixels; what a run trains at when the person chose no resolution. 512 for SD1 and SD2 (SD2-v too) as
    # dreamcore always has: SD2-v at its native 768 would need more memory than the tiers were measured with.
    training_resolution: int = 512
    # the GPU memory a full fine-tune needs against SD1.5's, for which the memory tiers were measured (roughly
    # the UNet's size: SDXL's is three times SD1.5's)
    memory_scale: float = 1.0
    modelspec_architecture: str = ""  # ModelSpec's name of its models ("stable-diffusion-v1"); LoRAs add "/lora"

    @property
    def cross_attention_width(self) -> int:
        """The width of the UNet's text conditioning: the text encoders' hidden states side by side."""
        return sum(self.text_encoder_widths)

    @property
    def needs_original_config(self) -> bool:
        """True when the WebUIs cannot tell the model from its keys alone and need its .yaml beside the file
        (a v-prediction UNet has the same weights' layout as an epsilon one)."""
        return self.prediction_type != "epsilon"

    # --- loading ---------------------------------------------------------------------------------
    def recognises_folder(self, model_index: Mapping[str, Any], text_encoder_config: Mapping[str, Any],
                          scheduler_config: Mapping[str, Any]) -> bool:
        """True when a diffusers folder with these configs is a model of this family."""
        raise NotImplementedError

    def same_weights_as(self, other: "ModelFamily") -> bool:
        """True when a model of ``other`` can be read as this family (SD2 and SD2-v share their weights'
        layout; only the prediction type differs)."""
        return self.key_layout == other.key_layout

    def shipped_tokenizer(self, index: int = 0) -> Any:
        """The shipped CLIP tokenizer for text encoder ``index``, loaded from disk only."""
        from transformers import CLIPTokenizer

        from dreamcore.assets import TOKENIZER_DIR

        return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token=self.pad_tokens[index],
                                             local_files_only=True)

    def shipped_config(self, component: str) -> dict[str, Any]:
        """The shipped diffusers config of one component of the published model."""
        from dreamcore.assets import load_component_config

        return load_component_config(self.assets_name, component)

    # --- conditioning ----------------------------------------------------------------------------
    def token_ids(self, models: "ModelComponents", prompts: Sequence[str], max_length: int | None
                  ) -> tuple["torch.Tensor", ...]:
        """The prompts' token ids for each text encoder, padded or cut to ``max_length`` (default: each
        tokenizer's own, 77)."""
        ids = []
        for name in self.tokenizer_names:
            tokenizer = getattr(models, name)
            ids.append(tokenizer(list(prompts), padding="max_length", truncation=True,
                                 max_length=max_length or tokenizer.model_max_length, return_tensors="pt").input_ids)
        return tuple(ids)

    def encode(self, text_encoders: Sequence[Any], token_ids: Sequence["torch.Tensor"],
               attention_masks: Sequence["torch.Tensor"] | None = None) -> tuple["torch.Tensor", ...]:
        """The text encoders' output that conditioning is made from (what training caches for a frozen
        encoder): SD1/SD2 the last hidden states."""
        (encoder,), (ids,) = text_encoders, token_ids
        if attention_masks is None:
            return (encoder(ids)[0],)
        return (encoder(ids, attention_mask=attention_masks[0])[0],)

    def unet_conditioning(self, encoded: Sequence["torch.Tensor"], resolution: int) -> UnetConditioning:
        """The UNet's conditioning from ``encode``'s output, for images of ``resolution`` pixels."""
        return UnetConditioning(encoded[0])

    # --- sampling --------------------------------------------------------------------------------
    def pipeline(self, components: "ModelComponents", scheduler: Any) -> Any:
        """diffusers' pipeline over ``components`` (shared modules), without a safety checker."""
        import diffusers

        return getattr(diffusers, self.pipeline_class)(
            vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
            unet=components.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
