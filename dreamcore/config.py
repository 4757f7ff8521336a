"""TrainConfig: the single source of truth for a training run.

The CLI (``python -m dreamcore train``), the WebUI tab and the Python API all build a ``TrainConfig``.
It validates itself before any model loads and reports every problem at once; the training loop reads
it and never changes it; the resolved copy is saved as ``train_config.json`` beside every output.

Field names are the flags of the guide's ``train_dreambooth.py`` command, so that command runs verbatim.
Each field's ``metadata`` carries its help text, its group in the UI and, where it has them, choices and
flag aliases; the CLI and the tab are generated from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from dreamcore.families.registry import FAMILIES, FAMILY_CHOICES
from dreamcore.fileio import atomic_write_text
from dreamcore.memory_tiers import MEMORY_TIERS, TIER_NAMES, auto_tiers

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED_PRECISION = ("no", "fp16", "bf16")
MODEL_FAMILIES = FAMILY_CHOICES  # "auto" and every family of dreamcore/families
# Memory presets (the tiers live in dreamcore/memory_tiers.py): "auto" picks one from the GPU's free
# memory when training starts on CUDA, "none" keeps the settings exactly as given.
MEMORY_PRESET_CHOICES = ("auto", "none", *TIER_NAMES)
BF16_ROUNDING = ("stochastic", "kahan")
CONFIG_FILE_NAME = "train_config.json"

# The default recipe, chosen in the quality lab (BENCHMARKS.md, "Quality"): the UNet at half the guide's learning
# rate, the text encoder frozen but for the subject's rare token, whose embedding trains 40x as fast.
GUIDE_LEARNING_RATE = 1e-6
DEFAULT_LEARNING_RATE = GUIDE_LEARNING_RATE / 2
TOKEN_EMBEDDING_LR_RATIO = 40.0
RUN_REPORT_KEY = "run_report"

# A hub repo id ("owner/name"); such ids are resolved from a local Hugging Face cache only.
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A saved state named by its step: step-N (dreamcore's folder name) or checkpoint-N (diffusers' name for it).
STATE_NAME = re.compile(r"(step|checkpoint)-(\d+)")


class ConfigError(ValueError):
    """Every problem found in a TrainConfig, one line each, written for the person who set it."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("The training settings have problems:\n" + "\n".join(f"  - {p}" for p in self.problems))


def _field(default: Any, help: str, group: str, **extra: Any) -> Any:
    metadata = {"help": help, "group": group, **extra}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Concept:
    """One subject to learn: photos of it, the prompt that names it, and its class for prior preservation."""

    instance_prompt: str
    instance_data_dir: str
    class_prompt: str = ""
    class_data_dir: str = ""
    num_class_images: int | None = None  # this concept's own count (ShivamShrirao's lists); None = the run's


@dataclass(frozen=True)
class TrainConfig:
    # --- Model -------------------------------------------------------------------------------------
    pretrained_model_name_or_path: str = _field(
        "", "Base model: a diffusers folder, a single .safetensors/.ckpt file (SD1.x/SD2.x), or a hub id "
        "already in the local Hugging Face cache.", "Model", required=True)
    pretrained_vae_name_or_path: str = _field(
        "", "Replacement VAE: a diffusers VAE folder, a single-file VAE, or a cached hub id "
        "(e.g. stabilityai/sd-vae-ft-mse).", "Model")
    revision: str = _field(
        "", "Branch of a hub repo in the local cache (the guide's 'fp16'); ignored for local folders and files.",
        "Model")
    variant: str = _field(
        "", "Weights variant of a diffusers folder to read, e.g. 'fp16' for its *.fp16.safetensors files (a folder "
        "holding only those is read without it).", "Model")
    tokenizer_name: str = _field("", "Tokenizer folder to use instead of the model's own.", "Model")
    tokenizer_max_length: int | None = _field(
        None, "Tokens per prompt in training (prompts are padded or cut to it); empty = the tokenizer's 77.", "Model")
    text_encoder_use_attention_mask: bool = _field(
        False, "Pass the prompts' attention mask to the text encoder in training, so padding is not attended to "
                "(as diffusers' flag; SD was trained without it).", "Model")
    model_family: str = _field(
        "auto", "Model type; 'auto' detects it from the weights as the WebUI does.", "Model",
        choices=MODEL_FAMILIES)

    # --- Photos and prompts ------------------------------------------------------------------------
    instance_data_dir: str = _field("", "Folder of photos of the subject.", "Concept")
    instance_prompt: str = _field("", "Prompt naming the subject with its rare token, e.g. 'photo of sks person'.",
                                  "Concept")
    class_data_dir: str = _field(
        "", "Folder of class images for prior preservation (made by the base model when short); "
        "default: <output_dir>/class_images/<class prompt>.", "Concept")
    class_prompt: str = _field("", "Prompt of the subject's class, e.g. 'photo of a person'.", "Concept")
    concepts_list: str = _field(
        "", "JSON file: a list of {instance_prompt, class_prompt, instance_data_dir, class_data_dir} (and "
        "optionally num_class_images, that concept's own count); several concepts train together. Replaces the "
        "four fields above.", "Concept")
    resolution: int = _field(
        512, "Training resolution in pixels (a multiple of 8). Unless you set it, the model family's: "
        + ", ".join(f"{family.label} {family.training_resolution}" for family in FAMILIES.values()) + ".",
        "Concept", default_help="the model family's")
    center_crop: bool = _field(False, "Centre-crop photos to a square; otherwise a random crop.", "Concept")
    hflip: bool = _field(False, "Randomly mirror photos (augmentation; turns off latent caching).", "Concept")
    prepare_photos: bool = _field(
        True, "Crop photos that are not already square at the training resolution into <output_dir>/prepared "
        "before training: around the face for a person (head and shoulders, as the guide asks), around the "
        "photo's salient region for any other subject (the class prompt, else the instance prompt, decides); "
        "--no-prepare_photos uses them as they are (resized, then a random or centre crop).", "Concept")

    # --- Prior preservation ------------------------------------------------------------------------
    with_prior_preservation: bool = _field(
        False, "Train on class images too so the class ('a person') does not turn into the subject.", "Prior")
    prior_loss_weight: float = _field(1.0, "Weight of the class-image loss.", "Prior")
    num_class_images: int = _field(100, "Class images wanted per concept; missing ones are generated.", "Prior")
    sample_batch_size: int = _field(4, "Images generated at once: class images, and the samples at each checkpoint.",
                                   "Prior")
    class_negative_prompt: str = _field("", "Negative prompt when generating class images.", "Prior")
    class_guidance_scale: float = _field(7.5, "Guidance scale when generating class images.", "Prior")
    class_infer_steps: int = _field(30, "Sampling steps per generated class image.", "Prior")

    # --- Training ----------------------------------------------------------------------------------
    output_dir: str = _field("dreamcore-output", "Where checkpoints, samples and the final model go.", "Training")
    seed: int = _field(1337, "Random seed: the same seed and settings give the same weights.", "Training")
    max_train_steps: int | None = _field(
        None, "Optimizer steps; empty = 100 per photo (the guide's rule).", "Training")
    num_train_epochs: int | None = _field(
        None, "Passes over the photos; used only when max_train_steps is empty.", "Training")
    train_batch_size: int = _field(1, "Photos per step (class images are added on top).", "Training")
    gradient_accumulation_steps: int = _field(1, "Batches accumulated per optimizer step.", "Training")
    gradient_checkpointing: bool = _field(False, "Recompute activations in backward: less memory, slower.",
                                          "Training")
    train_text_encoder: bool = _field(False, "Train the text encoder as well as the UNet.", "Training")
    mixed_precision: str = _field("no", "Compute precision: fp16 (VAE kept fp32), bf16 or no.", "Training",
                                  choices=MIXED_PRECISION)
    learning_rate: float = _field(
        DEFAULT_LEARNING_RATE, f"Learning rate (of the UNet; the guide uses {GUIDE_LEARNING_RATE:g}).", "Training")
    text_encoder_lr: float | None = _field(
        None, "Learning rate of the text encoder when it trains; empty = learning_rate.", "Training")
    text_encoder_steps_ratio: float = _field(
        1.0, "Share of the steps the text encoder trains for, from the start (1 = every step); the UNet trains "
        "on alone for the rest.", "Training")
    train_token_embedding: bool | None = _field(
        None, "Train the embedding of the instance prompt's rare token (the words the class prompt lacks, e.g. "
        "'sks'), as textual inversion does, at token_embedding_lr; the other words' embeddings stay as they were "
        "(with train_text_encoder the rest of the text encoder trains too). Empty = on when the text encoder "
        "itself is not trained, no LoRA is trained and every concept has a class prompt.", "Training")
    token_embedding_lr: float | None = _field(
        None, f"Learning rate of the rare token's embedding; empty = {TOKEN_EMBEDDING_LR_RATIO:g} x learning_rate.",
        "Training")
    snr_gamma: float | None = _field(
        None, "Min-SNR loss weighting (Hang et al. 2023): each sample's loss weighted by min(SNR, gamma) / SNR of "
        "its timestep, so the easy low-noise steps count less; 5 is usual. Empty = plain MSE.", "Training")
    offset_noise: bool = _field(
        False, "Add a small per-channel offset to the training noise (as diffusers' --offset_noise), which lets "
        "the model learn very dark or bright pictures.", "Training")
    scale_lr: bool = _field(False, "Multiply the learning rate by batch size x accumulation x processes.",
                            "Training")
    lr_scheduler: str = _field("constant", "Learning-rate schedule.", "Training", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = _field(500, "Warm-up steps (ignored by 'constant').", "Training")
    lr_num_cycles: int = _field(1, "Hard restarts of cosine_with_restarts (cosine: half-waves).", "Training")
    lr_power: float = _field(1.0, "Power of the polynomial schedule.", "Training")
    cache_latents: bool = _field(
        True, "Encode photos once and keep the latents (only when no random augmentation is on).", "Training")
    allow_tf32: bool = _field(False, "Allow TF32 matrix maths on Ampere and newer GPUs.", "Training")
    dataloader_num_workers: int = _field(0, "Worker processes that load photos (0 = in the main process).",
                                         "Training")

    # --- Optimizer ---------------------------------------------------------------------------------
    use_8bit_adam: bool = _field(False, "8-bit AdamW from bitsandbytes (falls back to AdamW where it cannot run).",
                                 "Optimizer")
    adam_beta1: float = _field(0.9, "AdamW beta1.", "Optimizer")
    adam_beta2: float = _field(0.999, "AdamW beta2.", "Optimizer")
    adam_weight_decay: float = _field(1e-2, "AdamW weight decay.", "Optimizer")
    adam_epsilon: float = _field(1e-8, "AdamW epsilon.", "Optimizer")
    max_grad_norm: float = _field(1.0, "Gradient clipping norm (0 = off).", "Optimizer")

    # --- Speed and memory (GPU) ----------------------------------------------------------------------
    memory_preset: str = _field(
        "auto", f"GPU memory preset: 'auto' picks {'/'.join(t.name for t in auto_tiers())} from the card's free "
        "memory at start and sets the speed and memory fields below (and mixed_precision, use_8bit_adam, "
        "gradient_checkpointing); a setting you chose yourself keeps the plain path, except mixed_precision "
        "fp16/bf16, use_8bit_adam and gradient_checkpointing, which only ask for a memory budget that the tier "
        "keeps. A tier name forces it (" + "; ".join(f"{t.name}: {t.summary}" for t in MEMORY_TIERS)
        + "); 'none' keeps your settings as given. Ignored without a CUDA GPU and for LoRA. The tiers' memory "
        "figures are SD1.x/SD2.x's: a full SDXL fine-tune needs about three times as much, which 'auto' allows "
        "for (an estimate, unmeasured). "
        "In the quality lab the tiers follow prompts as the fp32 path does but learn a face a little less "
        "(fidelity 0.52 against 0.56; BENCHMARKS.md, Quality).",
        "Speed", choices=MEMORY_PRESET_CHOICES)
    fast_step: bool = _field(
        False, "Fast step executor on CUDA: the same step with no host syncs for randomness or tokens, fused "
        "AdamW and a channels-last UNet.", "Speed")
    channels_last: bool = _field(
        True, "With fast_step: keep the UNet in channels-last memory layout (cuDNN's preferred convolution layout; "
        "GroupNorm may copy it back and forth).", "Speed")
    keep_channels_last: bool = _field(
        False, "With fast_step and channels_last: keep activations channels-last through diffusers' .contiguous() "
        "calls in the training step (transformer outputs, resnet shortcuts), which otherwise copy them to NCHW and "
        "back. The same values with fewer layout copies (GroupNorm's own copies stay; compile_unet fuses those).",
        "Speed")
    compile_unet: bool = _field(
        False, "Compile the UNet for the training step with torch.compile (TorchInductor), which fuses norms, "
        "activations and layout copies into fewer kernels (H100, 16GB tier: 24.5 -> 30.3 it/s). The first run on a "
        "machine compiles for ~2 minutes; later runs reuse the cache (~12 s). Samples and exports use the plain UNet. "
        "Needs Triton on a GPU.", "Speed")
    compile_text_encoder: bool = _field(
        False, "With train_text_encoder: compile the text encoder for the training step too (torch.compile), which "
        "fuses its many small kernels. Compiles once like compile_unet; samples and exports use the plain encoder. "
        "Needs Triton on a GPU.", "Speed")
    cuda_graph: bool = _field(
        False, "Record the whole step (forward, backward, clipping, AdamW) as one CUDA graph after 3 eager steps "
        "and replay it: one launch a step instead of thousands. Needs fast_step, bf16, fused or in-backward AdamW "
        "(not 8-bit), gradient_accumulation_steps 1; runs eagerly, with a warning, on a CPU or with several "
        "processes that hold gradients (without optimizer_in_backward).",
        "Speed")
    pure_bf16: bool = _field(
        False, "Keep the trained weights in bf16 (updated with stochastic rounding); needs optimizer_in_backward.",
        "Speed")
    bf16_rounding: str = _field(
        "stochastic", "How pure_bf16 weights take each update: 'stochastic' rounding (unbiased; 6 bytes a "
        "weight) or 'kahan' (a bf16 remainder per weight keeps what rounding dropped, so small updates add up "
        "as in fp32; 8 bytes a weight).", "Speed", choices=BF16_ROUNDING)
    bf16_autocast: bool = _field(
        True, "With pure_bf16: run the training step under bf16 autocast (norms and softmax computed in fp32, "
        "activations cast around them), or off: every operation in bf16, the norms keeping fp32 statistics inside "
        "their kernels (fewer copies). Samples and class images use autocast either way.", "Speed")
    optimizer_in_backward: bool = _field(
        False, "Apply AdamW to each weight as soon as its gradient is ready and free the gradient, so full "
        "gradients are never held (8 GB cards). With max_grad_norm above 0 the gradients are held until backward "
        "ends and clipped, then applied by the same optimizer (2 bytes a weight more in bf16). Needs "
        "gradient_accumulation_steps 1, no fp16.", "Speed")
    shard_optimizer: bool = _field(
        True, "With several processes and optimizer_in_backward (the 24GB-8GB tiers): each process updates 1/N of "
        "every weight and keeps AdamW's state for that part only (ZeRO stage 1), the updated parts gathered into "
        "every process's weights. The same training, faster and in less memory (SD1.5, 16GB tier, 2 GPUs: 42.1 "
        "instead of 45.1 ms a step, 6.7 instead of 9.4 GiB a GPU). Off: every process updates every weight. No "
        "effect with one process or AdamW after backward (the run says so).", "Speed")

    # --- Saving and samples ------------------------------------------------------------------------
    save_interval: int = _field(
        0, "Every N steps save a checkpoint (single file) and samples; 0 = only at the end.", "Saving")
    save_min_steps: int = _field(0, "No checkpoint (save_interval) before this step.", "Saving")
    validation_steps: int = _field(
        0, "Every N steps make samples only (no checkpoint), into samples/step-N; 0 = off.", "Saving")
    checkpointing_steps: int = _field(
        500, "Every N steps, and at the end, save the resumable training state (optimizer, scheduler, RNG, step) "
        "as state/step-N; 0 = only when stopped.", "Saving")
    checkpoints_total_limit: int | None = _field(
        None, "Keep at most this many step checkpoints, and as many resumable states (oldest removed once a newer "
        "one is complete).", "Saving")
    resume_from_checkpoint: str = _field(
        "", "Continue from a saved state: 'latest' (a new run if none is saved), step-N or checkpoint-N (a state of "
        "output_dir), or a state folder.", "Saving")
    save_sample_prompt: str = _field(
        "", "Prompt of the samples made at each save (default: the instance prompt).", "Saving",
        aliases=("--validation_prompt",))
    save_sample_negative_prompt: str = _field("", "Negative prompt of the samples.", "Saving")
    n_save_sample: int = _field(4, "Samples per save.", "Saving", aliases=("--num_validation_images",))
    save_guidance_scale: float = _field(7.5, "Guidance scale of the samples.", "Saving")
    save_infer_steps: int = _field(50, "Sampling steps of the samples.", "Saving")
    save_half: bool = _field(True, "Write the single-file model in fp16 (half the size; the WebUI's default).",
                             "Saving")
    model_name: str = _field("", "File name of the exported model (default: the output folder's name).", "Saving")

    @property
    def token_embedding_trains(self) -> bool:
        """train_token_embedding, or what an empty one means for these settings."""
        if self.train_token_embedding is not None:
            return self.train_token_embedding
        concepts = self._concepts([])
        return (not self.train_text_encoder and not self.use_lora and bool(concepts)
                and all(c.class_prompt for c in concepts))

    @property
    def text_encoder_trains(self) -> bool:
        """The text encoder takes part in backward: all of it (train_text_encoder) or its rare tokens' rows."""
        return self.train_text_encoder or self.token_embedding_trains

    # ------------------------------------------------------------------------------------------------
    def concepts(self) -> list[Concept]:
        """The concepts to train, from ``concepts_list`` or the single-concept fields. Raises ConfigError."""
        problems: list[str] = []
        concepts = self._concepts(problems)
        if problems:
            raise ConfigError(problems)
        return concepts

    def _concepts(self, problems: list[str]) -> list[Concept]:
        if self.concepts_list:
            return _read_concepts_file(Path(self.concepts_list), problems)
        if not self.instance_data_dir and not self.instance_prompt:
            problems.append("instance_data_dir and instance_prompt: give a photo folder and a prompt such as "
                            "'photo of sks person' (or a concepts_list file).")
            return []
        return [Concept(self.instance_prompt, self.instance_data_dir, self.class_prompt, self.class_data_dir)]

    def problems(self) -> list[str]:
        """Everything wrong with these settings, without loading a model. Empty means valid."""
        problems: list[str] = []
        if not self.pretrained_model_name_or_path:
            problems.append("pretrained_model_name_or_path: give the base model (a diffusers folder or a "
                            ".safetensors/.ckpt file).")
        elif not Path(self.pretrained_model_name_or_path).exists() and not HUB_REPO_ID.match(
                self.pretrained_model_name_or_path):
            problems.append(f"pretrained_model_name_or_path: {self.pretrained_model_name_or_path!r} does not exist; "
                            "check the path of the base model (a diffusers folder or a .safetensors/.ckpt file).")
        if self.pretrained_vae_name_or_path and not Path(self.pretrained_vae_name_or_path).exists() and not \
                HUB_REPO_ID.match(self.pretrained_vae_name_or_path):
            problems.append(f"pretrained_vae_name_or_path: {self.pretrained_vae_name_or_path!r} does not exist; "
                            "check the path of the VAE (a diffusers VAE folder or a single file), or leave it "
                            "empty for the base model's own.")
        if self.concepts_list and (self.instance_data_dir or self.instance_prompt):
            problems.append("concepts_list and instance_data_dir/instance_prompt both given: use one or the other.")
        for index, concept in enumerate(self._concepts(problems)):
            where = f"concept {index + 1}" if self.concepts_list else "instance"
            problems.extend(_concept_problems(concept, where, self.with_prior_preservation))

        for name in ("resolution", "train_batch_size", "gradient_accumulation_steps", "sample_batch_size",
                     "n_save_sample", "save_infer_steps", "class_infer_steps", "lr_num_cycles"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}: must be at least 1 (got {getattr(self, name)}).")
        from dreamcore.prepare.sizing import SMALLEST_SIZE

        if self.resolution > 0 and (self.resolution < SMALLEST_SIZE or self.resolution % 8):
            reasons = []
            if self.resolution % 8:
                reasons.append("is not a multiple of 8 (the VAE works in 8-pixel cells)")
            if self.resolution < SMALLEST_SIZE:
                reasons.append(f"is below {SMALLEST_SIZE} pixels, the smallest photos are prepared and trained at")
            advice = (f"use {SMALLEST_SIZE} or more, or leave it unset for the model family's own (SD1.x 512, SDXL "
                      "1024)") if self.resolution < SMALLEST_SIZE else f"use {self.resolution // 8 * 8}"
            problems.append(f"resolution: {self.resolution} {' and '.join(reasons)}; {advice}.")
        for name in ("max_train_steps", "num_train_epochs"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"{name}: must be at least 1 (got {value}); leave it empty for the default.")
        for name in ("num_class_images", "lr_warmup_steps", "save_interval", "checkpointing_steps",
                     "dataloader_num_workers"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must not be negative (got {getattr(self, name)}).")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit <= 0:
            problems.append("checkpoints_total_limit: must be at least 1, or empty for no limit.")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate: must be positive (got {self.learning_rate}); the guide uses 1e-6, "
                            "LoRA about 1e-4.")
        if self.text_encoder_lr is not None and not self.text_encoder_lr >= 0:
            problems.append(f"text_encoder_lr: must not be negative (got {self.text_encoder_lr}); leave it empty "
                            "for learning_rate.")
        if self.token_embedding_lr is not None and not self.token_embedding_lr >= 0:
            problems.append(f"token_embedding_lr: must not be negative (got {self.token_embedding_lr}); leave it "
                            "empty for learning_rate.")
        if self.train_token_embedding and self.use_lora:
            problems.append("train_token_embedding with use_lora: a LoRA file holds no token embedding; turn "
                            "train_token_embedding off or leave it empty.")
        if not 0 <= self.text_encoder_steps_ratio <= 1:
            problems.append(f"text_encoder_steps_ratio: must be in [0, 1] (got {self.text_encoder_steps_ratio}).")
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            problems.append(f"snr_gamma: must be positive (got {self.snr_gamma}); leave it empty for plain MSE.")
        for name in ("prior_loss_weight", "adam_weight_decay", "max_grad_norm", "adam_epsilon"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must not be negative (got {getattr(self, name)}).")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name}: must be in [0, 1) (got {getattr(self, name)}).")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                problems.append(f"{f.name}: {getattr(self, f.name)!r} is not one of {', '.join(choices)}.")
        if not self.score_likeness and (self.keep_best or self.likeness_early_stop):
            problems.append("keep_best and likeness_early_stop choose checkpoints by likeness: turn on score_likeness.")
        if self.likeness_early_stop < 0:
            problems.append(f"likeness_early_stop: must not be negative (got {self.likeness_early_stop}).")
        problems.extend(_output_dir_problems(Path(self.output_dir)))
        problems.extend(_class_folder_problems(self))
        problems.extend(_plausibility_problems(self))
        if self.resume_from_checkpoint and self.resume_from_checkpoint != "latest" and not STATE_NAME.fullmatch(
                self.resume_from_checkpoint) and not Path(self.resume_from_checkpoint).is_dir():
            problems.append(f"resume_from_checkpoint: {self.resume_from_checkpoint!r} is not a saved state folder; "
                            "use 'latest', step-N (checkpoint-N) or a folder under <output_dir>/state.")
        problems.extend(_diffusers_flag_problems(self))
        problems.extend(_speed_problems(self))
        problems.extend(_lora_problems(self))
        if self.model_name and not re.fullmatch(r"[\w.+-][\w .+-]*", self.model_name):
            problems.append(f"model_name: {self.model_name!r} may use letters, digits, spaces and . _ + - only.")
        return problems

    def validate(self) -> "TrainConfig":
        """Raise ConfigError listing every problem; return self when there are none."""
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self

    # --- Likeness ----------------------------------------------------------------------------------
    score_likeness: bool = _field(
        False, "At each save, score how much the samples look like you (face identity vs. your photos), how "
        "much the class prompt drifts towards you, and how varied the samples are; needs pip install "
        "'dreamcore[faces]'.", "Likeness")
    keep_best: bool = _field(
        False, "Export the checkpoint with the best likeness score (drift and variety within bounds) instead "
        "of the last one; needs score_likeness.", "Likeness")
    likeness_early_stop: int = _field(
        0, "Stop training when likeness has not risen for this many saves in a row (0 = never); needs "
        "score_likeness.", "Likeness")

    # --- LoRA --------------------------------------------------------------------------------------
    use_lora: bool = _field(
        False, "Train LoRA adapters (PEFT) instead of the whole model: a file of a few MB that the WebUI loads "
        "with <lora:name:1>, in less GPU memory. LoRA wants a higher learning_rate (about 1e-4; the LoRA "
        "presets set it).", "LoRA")
    lora_rank: int = _field(16, "Rank of each LoRA update: its size and capacity (4-32 is usual for a face).", "LoRA")
    lora_alpha: float | None = _field(
        None, "LoRA alpha: updates are scaled by alpha / rank; empty = the rank (scale 1).", "LoRA")
    lora_dropout: float = _field(0.0, "Dropout on the LoRA layers' input while training, in [0, 1).", "LoRA")
    lora_text_encoder: bool = _field(
        True, "With use_lora and train_text_encoder: the text encoder trains through LoRA adapters too "
        "(lora_te_ keys in the file). Off together with train_text_encoder is refused: a fully trained text "
        "encoder cannot go into a LoRA file.", "LoRA")
    lora_target_modules: str = _field(
        "", "Comma-separated names of the layers to adapt; empty = the transformer blocks' linear layers: UNet "
        "to_q, to_k, to_v, to_out.0, proj_in, proj_out, ff.net.0.proj, ff.net.2; text encoder q_proj, k_proj, "
        "v_proj, out_proj, fc1, fc2.", "LoRA")

    # --- what the person chose ----------------------------------------------------------------------
    # The settings someone set (a flag, a config file's key, a tab field changed from its preset, a REST key, a
    # keyword given to TrainConfig). Recorded, not guessed from the values: a default typed out is still a
    # choice, and a preset's values are not. memory_preset "auto" never overrules a choice.
    chosen_settings: tuple[str, ...] = field(default=(), compare=False, metadata={"internal": True})

    # --- (de)serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values[CHOSEN_KEY] = list(self.chosen_settings)
        return values

    def chose(self, name: str) -> bool:
        """Whether the person set ``name`` themselves."""
        return name in self.chosen_settings

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "settings") -> "TrainConfig":
        """Build from a dict (a JSON config, the REST API, the tab). Unknown or mistyped keys are errors."""
        parsed = parse_settings(values, source)
        if parsed.problems:
            raise ConfigError(parsed.problems)
        return parsed.config

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError([f"{path}: cannot read the config file ({error.strerror})."]) from error
        except json.JSONDecodeError as error:
            raise ConfigError([f"{path}: not valid JSON (line {error.lineno}: {error.msg})."]) from error
        if isinstance(values, dict):
            values.pop(RUN_REPORT_KEY, None)  # what a finished run added (likeness scores...), not a setting
        return cls.from_dict(values, source=str(path))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def with_absolute_paths(self) -> "TrainConfig":
        """A copy whose local paths are absolute, so its train_config.json runs from any folder. Model and
        tokenizer names that are not local paths are hub ids and stay as they are; so do resume_from_checkpoint's
        names ('latest', step-N)."""
        changes = {}
        for name in ("instance_data_dir", "class_data_dir", "concepts_list", "output_dir"):
            value = getattr(self, name)
            if value and not os.path.isabs(value):
                changes[name] = os.path.abspath(os.path.expanduser(value))
        for name in ("pretrained_model_name_or_path", "pretrained_vae_name_or_path", "tokenizer_name"):
            value = getattr(self, name)
            if value and not os.path.isabs(value) and Path(value).expanduser().exists():
                changes[name] = os.path.abspath(os.path.expanduser(value))
        resume = self.resume_from_checkpoint
        if resume and resume != "latest" and not STATE_NAME.fullmatch(resume) and not os.path.isabs(resume):
            changes["resume_from_checkpoint"] = os.path.abspath(os.path.expanduser(resume))
        return self.replace(**changes)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes``, which are not recorded as the person's choices (``choose`` records them)."""
        return dataclasses.replace(self, **changes)

    def choose(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` made and recorded as the person's choices."""
        chosen = tuple(sorted(set(self.chosen_settings) | set(changes)))
        return dataclasses.replace(self, **changes, chosen_settings=chosen)


CHOSEN_KEY = "chosen_settings"
_dataclass_init = TrainConfig.__init__


@functools.wraps(_dataclass_init)
def _init_recording_choices(self: TrainConfig, **values: Any) -> None:
    # A dataclass cannot tell a keyword given from a default, so TrainConfig(...) records the keywords itself.
    _dataclass_init(self, **values)
    if CHOSEN_KEY not in values:
        object.__setattr__(self, CHOSEN_KEY, tuple(sorted(values)))


TrainConfig.__init__ = _init_recording_choices


@dataclass(frozen=True)
class ParsedSettings:
    """A dict of settings read key by key: the config of the keys that could be read, and what was wrong with
    the others (``TrainConfig.from_dict`` refuses any; the job API also checks what the readable ones say)."""

    config: TrainConfig
    problems: list[str]  # one line for each key that could not be read
    refused: frozenset[str]  # those keys


def parse_settings(values: dict[str, Any], source: str = "settings") -> ParsedSettings:
    """Read ``values`` (setting name -> raw value, ``chosen_settings`` optional); ConfigError if not a dict."""
    if not isinstance(values, dict):
        raise ConfigError([f"{source}: expected a JSON object of settings, got {type(values).__name__}."])
    values = dict(values)
    chosen = values.pop(CHOSEN_KEY, None)
    known = {f.name: f for f in config_fields()}
    problems: list[str] = []
    refused: set[str] = set()
    converted: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            problems.append(f"{source}: unknown setting {key!r}" + _did_you_mean(key, known))
            refused.add(key)
            continue
        try:
            converted[key] = coerce_field_value(known[key], value)
        except (TypeError, ValueError) as error:
            problems.append(f"{source}: {key}: {error}")
            refused.add(key)
    if chosen is None:  # every key given was chosen
        chosen = list(converted)
    elif not isinstance(chosen, (list, tuple)) or not all(isinstance(name, str) for name in chosen):
        problems.append(f"{source}: {CHOSEN_KEY}: expected a list of setting names, got {chosen!r}.")
        refused.add(CHOSEN_KEY)
        chosen = list(converted)
    else:
        unknown = [name for name in chosen if name not in known]
        problems.extend(f"{source}: {CHOSEN_KEY}: unknown setting {name!r}" for name in unknown)
        if unknown:
            refused.add(CHOSEN_KEY)
        chosen = [name for name in chosen if name in known]
    config = TrainConfig(**converted, chosen_settings=tuple(sorted(set(chosen))))
    return ParsedSettings(config, problems, frozenset(refused))


def config_fields() -> list[dataclasses.Field]:
    """TrainConfig's settings in declaration order (what the CLI and the tab are built from)."""
    return [f for f in dataclasses.fields(TrainConfig) if not f.metadata.get("internal")]


def field_type(f: dataclasses.Field) -> type:
    """The plain Python type of a field: bool, int, float or str (Optional is unwrapped)."""
    annotation = str(f.type).replace(" ", "")
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if annotation == name or annotation.startswith(name + "|"):
            return kind
    raise TypeError(f"TrainConfig.{f.name} has an unsupported type {f.type!r}")


def field_is_optional(f: dataclasses.Field) -> bool:
    return "None" in str(f.type)


def coerce_field_value(f: dataclasses.Field, value: Any) -> Any:
    """Check and convert a raw value (from JSON or a UI) to a field's type; raise ValueError if it is wrong."""
    kind = field_type(f)
    if value is None or (value == "" and kind is not str):
        if field_is_optional(f):
            return None
        if kind is str:
            return ""
        raise ValueError(f"a value is required ({kind.__name__})")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ValueError(f"expected a whole number, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r}")
    return value


# --- command line ------------------------------------------------------------------------------------

def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per TrainConfig field (plus --config FILE.json) to a parser."""
    parser.add_argument("--config", metavar="FILE.json", default=None,
                        help="Read settings from a JSON file; flags given on the command line override it.")
    for f in config_fields():
        names = ["--" + f.name, *f.metadata.get("aliases", ())]
        kind = field_type(f)
        help_text = f.metadata["help"]
        if kind is bool:
            parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(*names, dest=f.name, type=_optional(kind) if field_is_optional(f) else kind,
                                choices=f.metadata.get("choices"), default=argparse.SUPPRESS,
                                help=f"{help_text} (default: {f.metadata.get('default_help', f.default)})")


def config_from_arguments(namespace: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed flags: defaults, then the --config file, then the flags given."""
    values: dict[str, Any] = {CHOSEN_KEY: []}
    if getattr(namespace, "config", None):
        values.update(TrainConfig.load(namespace.config).to_dict())  # with the file's own choices
    for f in config_fields():
        if hasattr(namespace, f.name):
            values[f.name] = getattr(namespace, f.name)
            values[CHOSEN_KEY] = [*values[CHOSEN_KEY], f.name]
    return TrainConfig.from_dict(values, source="command line")


def _optional(kind: type):
    def parse(text: str):
        return None if text.strip().lower() in ("", "none") else kind(text)

    parse.__name__ = kind.__name__
    return parse


# --- validation helpers ------------------------------------------------------------------------------

def list_image_files(folder: Path) -> list[Path]:
    """Files in a folder (not recursive) whose suffix marks them as images, sorted by name.

    A cheap check by name for validation; every photo is opened and checked before training starts.
    """
    from dreamcore.images import IMAGE_SUFFIXES

    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _read_concepts_file(path: Path, problems: list[str]) -> list[Concept]:
    expected = ("concepts_list: expected a JSON list of objects with instance_prompt, instance_data_dir, "
                "class_prompt and class_data_dir")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        problems.append(f"concepts_list: cannot read {path} ({error.strerror}).")
        return []
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.append(f"concepts_list: {path} is not valid JSON ({error}). {expected}.")
        return []
    if not isinstance(entries, list) or not entries:
        problems.append(f"{expected}; {path} holds {type(entries).__name__ if entries else 'nothing'}.")
        return []
    concepts = []
    allowed = {f.name for f in dataclasses.fields(Concept)}
    for index, entry in enumerate(entries):
        where = f"concepts_list {path} entry {index + 1}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected an object, got {type(entry).__name__}.")
            continue
        unknown = sorted(set(entry) - allowed)
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}.")
        missing = [k for k in ("instance_prompt", "instance_data_dir") if not entry.get(k)]
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}.")
        bad_types = [k for k in allowed if k in entry and k != "num_class_images" and not isinstance(entry[k], str)]
        if bad_types:
            problems.append(f"{where}: {', '.join(sorted(bad_types))} must be text.")
        count = entry.get("num_class_images")
        bad_count = count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0)
        if bad_count:
            problems.append(f"{where}: num_class_images must be a whole number, 0 or more (got {count!r}); leave it "
                            "out for the run's num_class_images.")
        if unknown or missing or bad_types or bad_count:
            continue
        concepts.append(Concept(**{k: entry[k] for k in allowed if k in entry}))
    return concepts


def _concept_problems(concept: Concept, where: str, prior_preservation: bool) -> list[str]:
    problems = []
    if not concept.instance_prompt.strip():
        problems.append(f"{where}: instance_prompt is empty; name the subject, e.g. 'photo of sks person'.")
    folder = Path(concept.instance_data_dir)
    if not concept.instance_data_dir:
        problems.append(f"{where}: instance_data_dir is empty; give the folder of photos.")
    elif not folder.is_dir():
        problems.append(f"{where}: photo folder {folder} does not exist; check instance_data_dir (the folder "
                        "that holds the photos of the subject).")
    else:
        try:
            images = list_image_files(folder)
        except OSError as error:
            problems.append(f"{where}: cannot list photo folder {folder} ({error.strerror}).")
        else:
            if not images:
                problems.append(f"{where}: photo folder {folder} holds no images "
                                "(.jpg, .png, .webp, ...); put 13-20 photos of the subject there.")
    if prior_preservation and not concept.class_prompt.strip():
        problems.append(f"{where}: with_prior_preservation needs a class_prompt, e.g. 'photo of a person'.")
    if concept.class_data_dir and Path(concept.class_data_dir).exists() and not Path(concept.class_data_dir).is_dir():
        problems.append(f"{where}: class_data_dir {concept.class_data_dir} is a file, not a folder.")
    return problems


def _speed_problems(config: "TrainConfig") -> list[str]:
    problems = []
    if config.cuda_graph:
        needs = {"fast_step": (config.fast_step, "turn fast_step on (the graph replays the fast step)"),
                 "mixed_precision": (config.mixed_precision != "fp16",
                                     "use bf16 or no (fp16's loss scaler checks for overflow on the host)"),
                 "use_8bit_adam": (not config.use_8bit_adam,
                                   "turn it off (bitsandbytes' step cannot be recorded; fused AdamW is used)"),
                 "lora_dropout": (not (config.use_lora and config.lora_dropout > 0 and config.gradient_checkpointing),
                                  "set it to 0 with gradient_checkpointing (the recorded recomputation does not "
                                  "replay dropout's random draws)"),
                 "gradient_accumulation_steps": (config.gradient_accumulation_steps == 1, "set it to 1")}
        for name, (ok, fix) in needs.items():
            if not ok:
                problems.append(f"cuda_graph: {name} - {fix}, or turn cuda_graph off.")
    if config.keep_channels_last and not (config.fast_step and config.channels_last):
        problems.append("keep_channels_last: needs fast_step and channels_last (it keeps the channels-last "
                        "layout those give the UNet); turn them on or keep_channels_last off.")
    if config.compile_text_encoder and not config.train_text_encoder:
        problems.append("compile_text_encoder: needs train_text_encoder (a frozen encoder runs once a prompt, "
                        "before training); turn train_text_encoder on or compile_text_encoder off.")
    if config.pure_bf16 and not config.optimizer_in_backward:
        problems.append("pure_bf16: needs optimizer_in_backward (only that optimizer rounds bf16 weights "
                        "stochastically; plain AdamW updates of lr 1e-6 would round away to nothing).")
    if not config.bf16_autocast and not config.pure_bf16:
        problems.append("bf16_autocast: off needs pure_bf16 (fp32 weights compute in bf16 only through "
                        "autocast); turn pure_bf16 on or bf16_autocast on.")
    if config.bf16_rounding == "kahan" and not config.pure_bf16:
        problems.append("bf16_rounding: 'kahan' compensates bf16 weights; turn pure_bf16 on or set it to "
                        "'stochastic'.")
    if config.optimizer_in_backward:
        if config.gradient_accumulation_steps != 1:
            problems.append("optimizer_in_backward: set gradient_accumulation_steps 1 (each backward updates "
                            "the weights at once).")
        if config.mixed_precision == "fp16":
            problems.append("optimizer_in_backward: use mixed_precision bf16 (fp16 needs loss scaling, which "
                            "an update inside backward cannot undo).")
        if config.use_8bit_adam:
            problems.append("optimizer_in_backward: turn use_8bit_adam off (its own AdamW keeps bf16 states).")
    return problems


def _output_dir_problems(output_dir: Path) -> list[str]:
    if output_dir.exists() and not output_dir.is_dir():
        return [f"output_dir: {output_dir} is a file; choose a folder."]
    existing = output_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return [f"output_dir: {output_dir} is not writable ({existing} cannot be written to); choose another folder."]
    return []


# Output subfolders written into file by file (state/ and diffusers/ are replaced whole, in output_dir itself).
_OUTPUT_SUBFOLDERS = ("checkpoints", "samples", "class_images", "prepared")


def _writable(folder: Path) -> tuple[bool, Path]:
    """Whether files can be created in ``folder`` (or in its nearest existing parent, which would hold it)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK), existing


def _class_folder_problems(config: "TrainConfig") -> list[str]:
    """Folders training will write into, checked before any model loads: a class_data_dir short of class images
    (they are generated into it) and output_dir's subfolders."""
    problems = []
    output_dir = Path(config.output_dir)
    for name in _OUTPUT_SUBFOLDERS:
        folder = output_dir / name
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            problems.append(f"output_dir: {folder} is not writable; make it writable or choose another output_dir.")
    if not config.with_prior_preservation:
        return problems
    for index, concept in enumerate(config._concepts([])):
        if not concept.class_data_dir:
            continue  # the default, under output_dir, checked above
        folder = Path(concept.class_data_dir)
        wanted = getattr(concept, "num_class_images", None)
        wanted = config.num_class_images if wanted is None else wanted
        try:
            have = len(list_image_files(folder)) if folder.is_dir() else 0
        except OSError as error:
            problems.append(f"class_data_dir: cannot list {folder} ({error.strerror}); make it readable or choose "
                            "another folder.")
            continue
        writable, existing = _writable(folder)
        if have < wanted and not writable:
            where = f"concept {index + 1}: " if config.concepts_list else ""
            problems.append(f"{where}class_data_dir: {folder} holds {have} of the {wanted} class images and the missing "
                            f"ones cannot be generated into it ({existing} is not writable); choose a writable "
                            "folder, or leave class_data_dir empty for one under output_dir.")
    return problems


# Plausibility limits: (setting, error above, warning above, unit, what is usual). Generous: the error limits are
# beyond any run that makes sense (a typo or a unit mix-up), the warning limits beyond what usually works.
_PLAUSIBLE: tuple[tuple[str, float, float | None, str, str], ...] = (
    ("max_train_steps", 10_000_000, 100_000, "steps", "DreamBooth needs about 100 per photo"),
    ("num_train_epochs", 1_000_000, 10_000, "epochs", "the default is 100 steps per photo"),
    ("learning_rate", 1.0, 1e-3, "", "the guide uses 1e-6, LoRA about 1e-4"),
    ("text_encoder_lr", 1.0, 1e-3, "", "the guide uses 1e-6"),
    ("token_embedding_lr", 1.0, 1e-1, "", "the default is 40 x learning_rate"),
    ("resolution", 4096, 1024, "pixels", "SD1.x was trained at 512, SD2.x at 768"),
    ("train_batch_size", 4096, 64, "photos a step", "1-4 is usual"),
    ("gradient_accumulation_steps", 100_000, 1024, "batches a step", "1-4 is usual"),
    ("sample_batch_size", 4096, 64, "images at once", "4 is usual"),
    ("n_save_sample", 10_000, 100, "samples a save", "4 is usual"),
    ("num_class_images", 10_000_000, 10_000, "class images", "100-300 is usual"),
    ("class_infer_steps", 1000, 150, "sampling steps", "the noise schedule has 1000"),
    ("save_infer_steps", 1000, 150, "sampling steps", "the noise schedule has 1000"),
    ("prior_loss_weight", 1000.0, 10.0, "", "1 is usual"),
    ("class_guidance_scale", 1000.0, 30.0, "", "7.5 is usual"),
    ("save_guidance_scale", 1000.0, 30.0, "", "7.5 is usual"),
    ("lr_warmup_steps", 10_000_000, None, "steps", "0-500 is usual"),
    ("lr_num_cycles", 1_000_000, None, "cycles", "1 is usual"),
    ("dataloader_num_workers", 1024, 64, "processes", "0-8 is usual"),
)


def _number(value: float) -> str:
    if isinstance(value, int) and abs(value) < 10**15:
        return f"{value:,}"
    return f"{value:g}"


def _plausibility_problems(config: "TrainConfig") -> list[str]:
    """Absurd values, each with its limit: numbers that are not finite, or far beyond any sensible run."""
    import math

    problems = []
    for f in config_fields():
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{f.name}: must be a finite number (got {value}).")
    for name, error_above, _, unit, usual in _PLAUSIBLE:
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and math.isfinite(value) and value > error_above:
            problems.append(f"{name}: {_number(value)} is above the limit of {_number(error_above)}"
                            f"{' ' + unit if unit else ''} ({usual}); give a smaller value.")
    if config.use_lora and config.lora_rank > 1024:
        problems.append(f"lora_rank: {config.lora_rank:,} is above the limit of 1,024 (4-32 is usual); give a smaller "
                        "rank.")
    return problems


def plausibility_warnings(config: "TrainConfig") -> list[str]:
    """Unusual but possible values, one line each with the bound it passed (what the run prints as warnings)."""
    import math

    warnings = []
    for name, error_above, warn_above, unit, usual in _PLAUSIBLE:
        value = getattr(config, name, None)
        if warn_above is None or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value > error_above:
            continue
        if name in ("learning_rate", "text_encoder_lr") and config.use_lora:
            warn_above = 1e-2  # LoRA trains at about 100x the full model's rate
        if value > warn_above:
            warnings.append(f"{name}: {_number(value)} is unusually high (above {_number(warn_above)}"
                            f"{' ' + unit if unit else ''}; {usual}); check it is what you meant.")
    if 0 < config.learning_rate < 1e-8:
        warnings.append(f"learning_rate: {config.learning_rate:g} is unusually low (below 1e-08); the weights will "
                        "barely change.")
    return warnings


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _diffusers_flag_problems(config: TrainConfig) -> list[str]:
    """Settings that came from diffusers' and ShivamShrirao's scripts."""
    problems = []
    for name in ("save_min_steps", "validation_steps"):
        if getattr(config, name) < 0:
            problems.append(f"{name}: must not be negative (got {getattr(config, name)}); 0 is off.")
    if config.tokenizer_max_length is not None and config.tokenizer_max_length < 1:
        problems.append(f"tokenizer_max_length: must be at least 1 (got {config.tokenizer_max_length}); leave it "
                        "empty for the tokenizer's own length.")
    if config.variant and Path(config.pretrained_model_name_or_path).is_file():
        problems.append(f"variant: {config.variant!r} picks the weight files of a diffusers folder, but the base "
                        f"model {config.pretrained_model_name_or_path} is a single file; leave variant empty.")
    return problems


def _lora_problems(config: TrainConfig) -> list[str]:
    """LoRA settings are checked only with use_lora; set without it they are kept and do nothing."""
    if not config.use_lora:
        return []
    problems = []
    if config.lora_rank < 1:
        problems.append(f"lora_rank: must be at least 1 (got {config.lora_rank}); 4-32 is usual.")
    if config.lora_alpha is not None and not config.lora_alpha > 0:
        problems.append(f"lora_alpha: must be positive (got {config.lora_alpha}), or empty for the rank.")
    if not 0 <= config.lora_dropout < 1:
        problems.append(f"lora_dropout: must be in [0, 1) (got {config.lora_dropout}).")
    if config.train_text_encoder and not config.lora_text_encoder:
        problems.append("lora_text_encoder: off while train_text_encoder is on, but a fully trained text encoder "
                        "cannot go into a LoRA file; turn lora_text_encoder on, or train_text_encoder off.")
    bad = [name for name in config.lora_target_modules.split(",")
           if name.strip() and not re.fullmatch(r"[A-Za-z_][\w.]*", name.strip())]
    if bad:
        problems.append(f"lora_target_modules: {', '.join(repr(b.strip()) for b in bad)} is not a layer name; give "
                        "comma-separated names such as to_q,to_k,to_v,to_out.0.")
    return problems
