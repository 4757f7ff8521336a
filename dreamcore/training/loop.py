"""DreamBooth training: one loop, with set-up, saving and sampling as named helpers around it.

The step is the one of diffusers' train_dreambooth.py: encode the photo to latents, add noise at a random
timestep, predict the noise (or v), and take the MSE; with prior preservation the batch also holds class
images and their loss is added with ``prior_loss_weight``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from dreamcore.components import ModelComponents
from dreamcore.config import CONFIG_FILE_NAME, RUN_REPORT_KEY, TrainConfig
from dreamcore.events import (CheckpointSaved, ClassImagesProgress, Emitter, Finished, Progress, SamplesSaved,
                              Stage, StopSignal)
from dreamcore.images import load_rgb_image
from dreamcore.training.class_images import generate_class_images, missing_class_images, usable_class_images
from dreamcore.lora.adapters import LoraSettings, add_lora_adapters
from dreamcore.lora.export import export_training_lora
from dreamcore.training.compat import accumulate
from dreamcore.training.data import (ConceptExamples, Example, ExampleSchedule, example_generator,
                                     image_to_tensor, needs_random_augmentation)
from dreamcore.training.late_read import LateValues
from dreamcore.training.optim import build_lr_scheduler, build_optimizer, parameter_groups
from dreamcore.training.tokens import identifier_token_ids, split_identifier_words, train_only_rows
from dreamcore.training.sampling import generate_samples, write_samples
from dreamcore.training.setup import (RunPlan, TrainingError, check_precision_supported, effective_precision,
                                      is_full_size, plan_run, use_expandable_segments, weight_dtype)
from dreamcore.training.saving import BackgroundWriter
from dreamcore.training.state import (STATE_DIR_NAME, ResumeError, TrainingProgress, load_training_state,
                                      prune_states, resolve_state_folder, state_folder, training_state_writer)


@dataclass
class TrainResult:
    status: str  # "completed" or "stopped"
    step: int
    outputs: dict[str, str]
    losses: list[float] = field(default_factory=list)


def compute_loss(model_pred: torch.Tensor, target: torch.Tensor, with_prior: bool, prior_loss_weight: float,
                 sample_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(total, instance, prior) MSE losses. With prior preservation the batch is [instances; classes]:
    the first half is compared as the subject, the second half as the class. ``sample_weights`` (one per row,
    e.g. min-SNR's) weight each row's mean squared error before the mean."""

    def mse(prediction: torch.Tensor, wanted: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        if weights is None:
            return F.mse_loss(prediction.float(), wanted.float(), reduction="mean")
        per_row = F.mse_loss(prediction.float(), wanted.float(), reduction="none").flatten(1).mean(1)
        return (per_row * weights).mean()

    if not with_prior:
        loss = mse(model_pred, target, sample_weights)
        return loss, loss, None
    pred_instance, pred_prior = model_pred.chunk(2)
    target_instance, target_prior = target.chunk(2)
    weights_instance, weights_prior = (None, None) if sample_weights is None else sample_weights.chunk(2)
    instance_loss = mse(pred_instance, target_instance, weights_instance)
    prior_loss = mse(pred_prior, target_prior, weights_prior)
    return instance_loss + prior_loss_weight * prior_loss, instance_loss, prior_loss


def min_snr_weights(noise_scheduler: Any, gamma: float, device: torch.device) -> torch.Tensor:
    """Each timestep's min-SNR loss weight, min(SNR, gamma) / SNR (Hang et al. 2023), as a table on ``device``.
    The v-prediction target already carries a factor SNR + 1, so there it is min(SNR, gamma) / (SNR + 1)."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.double()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    divisor = snr + 1 if noise_scheduler.config.prediction_type == "v_prediction" else snr
    return (snr.clamp(max=gamma) / divisor).float().to(device)


def prompt_attention_mask(token_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 for each prompt's tokens up to and including its first end token, 0 for the padding after it: the
    tokenizer's attention mask, derived from the ids so that cached ids and a recorded step need nothing more."""
    is_end = (token_ids == eos_token_id).long()
    return (torch.cumsum(is_end, dim=1) - is_end == 0).long()


@dataclass(frozen=True)
class StepBatch:
    """The inputs of one training step, on the device."""

    latent_distribution: torch.Tensor  # the VAE's mean and log-variance, stacked on channels
    sample_noise: torch.Tensor  # draws a latent from that distribution
    noise: torch.Tensor  # the diffusion noise the UNet learns to predict
    timesteps: torch.Tensor
    encoder_input: torch.Tensor  # token ids, or the prompts' cached embeddings with a frozen text encoder
    with_prior: bool  # the second half of the batch holds class images


class Trainer:
    """Holds the live state of one run; ``train()`` below drives it."""

    def __init__(self, plan: RunPlan, models: ModelComponents, emit: Emitter, stop: StopSignal | None):
        from accelerate import Accelerator

        self.plan = plan
        self.config = plan.config
        self.emit = emit
        self.stop = stop
        self.saver = BackgroundWriter()  # checkpoints and states written while training goes on
        config = self.config
        self.precision = effective_precision(config.mixed_precision, emit)
        # bf16_autocast off: bf16 weights compute in bf16 without autocast; accelerate must then not wrap the
        # models' forward in autocast (it does for any mixed precision), and samples take it from autocast().
        self.step_autocast = not (config.pure_bf16 and not config.bf16_autocast and self.precision == "bf16")
        # cpu=True without a GPU lets accelerate run several CPU processes (gloo) under torchrun/accelerate launch.
        self.accelerator = Accelerator(mixed_precision=self.precision if self.step_autocast else "no",
                                       cpu=not torch.cuda.is_available(),
                                       gradient_accumulation_steps=config.gradient_accumulation_steps,
                                       kwargs_handlers=self.accelerator_kwargs_handlers())
        self.device = self.accelerator.device
        check_precision_supported(self.precision, self.device)
        if config.allow_tf32 and self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.models = models
        self.noise_scheduler = _training_noise_scheduler(models.scheduler)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        self.frozen_dtype = weight_dtype(self.precision)
        self.noise_generator = torch.Generator().manual_seed(config.seed)
        self.snr_weights = None if config.snr_gamma is None else \
            min_snr_weights(self.noise_scheduler, config.snr_gamma, self.device)
        self.likeness = None  # a dreamcore.likeness.LikenessTracker when config.score_likeness
        self.vae_parked = False  # the VAE waits on the CPU between checkpoints (latents are cached)

    def accelerator_kwargs_handlers(self) -> list:
        """accelerate settings a step executor needs (the CUDA-graph step turns autocast's cast cache off)."""
        return []

    # --- set-up ----------------------------------------------------------------------------------------
    def prepare_models(self) -> None:
        from dreamcore.training.fast_step import apply_memory_layout

        config, models = self.config, self.models
        positions = models.text_encoder.config.max_position_embeddings
        if config.tokenizer_max_length is not None and config.tokenizer_max_length > positions:
            raise TrainingError(f"tokenizer_max_length: {config.tokenizer_max_length} tokens, but this text encoder "
                                f"reads at most {positions}; set it to {positions} or less, or leave it empty.")
        models.vae.requires_grad_(False).to(self.device).eval()
        if models.vae.dtype != torch.float32:
            models.vae.to(dtype=torch.float32)  # the VAE stays fp32 in every precision: no black images
        models.unet.requires_grad_(True).train()
        models.text_encoder.requires_grad_(config.train_text_encoder)
        if config.text_encoder_trains:
            models.text_encoder.train()
        else:
            models.text_encoder.to(self.device, dtype=self.frozen_dtype).eval()
        if config.token_embedding_trains:
            identifiers = identifier_token_ids(models.tokenizer, [c.concept for c in self.plan.concepts])
            train_only_rows(models.text_encoder.get_input_embeddings().weight, identifiers)
            if config.train_token_embedding is None:  # the default recipe: say what it trains
                tokens = models.tokenizer.convert_ids_to_tokens(identifiers)  # decode() warns about spaces
                words = ", ".join(repr(token.removesuffix("</w>")) for token in tokens)
                self.emit.log(f"train_token_embedding: the embedding of {words} trains (the rest of the text "
                              "encoder is frozen); --no-train_token_embedding keeps it frozen too.")
        if config.gradient_checkpointing:
            self.enable_gradient_checkpointing()
        apply_memory_layout(models, config, self.device)  # pure bf16 weights, channels-last (speed presets)
        if config.use_lora:  # PEFT adapters; only they train, the base stays frozen (dreamcore/lora)
            add_lora_adapters(models.unet, models.text_encoder if config.train_text_encoder else None,
                              LoraSettings.from_config(config), models.family, self.frozen_dtype)
        self.trained = {"unet": models.unet}
        if config.text_encoder_trains:
            self.trained["text_encoder"] = models.text_encoder
        learning_rate = config.learning_rate
        if config.scale_lr:
            learning_rate *= (config.train_batch_size * config.gradient_accumulation_steps
                              * self.accelerator.num_processes)
        self.optimizer = build_optimizer(dataclasses.replace(config, learning_rate=learning_rate),
                                         parameter_groups(config, self.trained, learning_rate),
                                         self.device, lambda m: self.emit.log(m, "warning"))
        self.lr_scheduler = build_lr_scheduler(config, self.optimizer, self.plan.total_steps)
        self.wrap_for_processes()
        self.choose_step_modules()

    @property
    def averaging_inside_backward(self) -> bool:
        """Several processes with the in-backward AdamW: it averages each gradient itself (gradient_average.py),
        with no DistributedDataParallel, and every process keeps its own copy of the weights."""
        return self.config.optimizer_in_backward and self.accelerator.num_processes > 1

    def wrap_for_processes(self) -> None:
        """``self.wrapped`` and the optimizer as accelerate prepares them (DistributedDataParallel with several
        processes), except for the in-backward AdamW, which averages each gradient across the processes itself
        (gradient_average.py): its models stay as they are, on this process's device."""
        if self.averaging_inside_backward:
            from dreamcore.training.gradient_average import broadcast_weights

            for module in self.trained.values():
                module.to(self.device)
            broadcast_weights(list(self.trained.values()))
            self.wrapped = dict(self.trained)
            self.optimizer = self.accelerator.prepare(self.optimizer)
            return
        if self.config.shard_optimizer and self.accelerator.num_processes > 1:
            # a note, not a warning: shard_optimizer is on by default, and nothing changes the results here
            self.emit.log("shard_optimizer: no effect here: it shards the in-backward AdamW, and this run's AdamW "
                          "runs after backward (optimizer_in_backward off), its state whole in every process.")
        prepared = self.accelerator.prepare(*self.trained.values(), self.optimizer)
        self.wrapped = dict(zip(self.trained, prepared[:-1]))
        self.optimizer = prepared[-1]

    def choose_step_modules(self) -> None:
        """What the training step calls: the wrapped models, compiled or under KeepChannelsLast as the config
        asks (samples and saves use ``self.wrapped``)."""
        config = self.config
        self.step_unet = self.wrapped["unet"]
        self.step_text_encoder = self.wrapped.get("text_encoder")
        if config.compile_unet or config.compile_text_encoder:
            from dreamcore.training.fast_step import compile_for_training, keep_compiled_kernels

            compiled = [name for name, on in (("the UNet", config.compile_unet),
                                              ("the text encoder", config.compile_text_encoder)) if on]
            if config.compile_unet:
                self.step_unet = compile_for_training(self.wrapped["unet"], self.device)
            if config.compile_text_encoder:
                self.step_text_encoder = compile_for_training(self.wrapped["text_encoder"], self.device)
            self.emit.log(f"compile: {' and '.join(compiled)} will be compiled during the first training step (a "
                          f"minute or more on a machine's first run; kept in {keep_compiled_kernels()} for the "
                          "next runs).")
        if config.keep_channels_last:
            from dreamcore.training.layout import keeping_channels_last

            # around the compiled UNet too: the compiler traces the mode, so the copies never enter its graph
            self.step_unet = keeping_channels_last(self.step_unet)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in backward instead of keeping them (the step executor may adjust how)."""
        self.models.unet.enable_gradient_checkpointing()
        if self.config.text_encoder_trains:
            self.models.text_encoder.gradient_checkpointing_enable()

    def prepare_data(self, class_images: list[list[Path]]) -> None:
        config = self.config
        concepts = []
        for concept_plan, classes in zip(self.plan.concepts, class_images):
            concept = concept_plan.concept
            concepts.append(ConceptExamples(
                tuple(Example(p, concept.instance_prompt) for p in concept_plan.photos),
                tuple(Example(p, concept.class_prompt) for p in classes)))
        self.schedule = ExampleSchedule(concepts, config.train_batch_size, config.seed,
                                        self.accelerator.num_processes, self.accelerator.process_index)
        all_paths = [e.path for c in concepts for e in (*c.instances, *c.classes)]
        random_augmentation = needs_random_augmentation(all_paths, config.resolution, config.center_crop,
                                                        config.hflip)
        self.latent_cache: dict[Path, torch.Tensor] | None = None
        self.photo_loader = None
        if config.dataloader_num_workers and (random_augmentation or not config.cache_latents):
            from concurrent.futures import ThreadPoolExecutor

            self.photo_loader = ThreadPoolExecutor(config.dataloader_num_workers, thread_name_prefix="photos")
        elif config.dataloader_num_workers:
            self.emit.log("dataloader_num_workers: photos are encoded once and cached, so no loader workers run.")
        if config.cache_latents and random_augmentation:
            self.emit.log("cache_latents: not caching, because photos are randomly augmented (hflip, or random "
                          "crops of non-square photos); run `dreamcore prepare` for square photos to cache.")
        elif config.cache_latents:
            self.emit(Stage("cache", f"encoding {len(set(all_paths))} images once"))
            self.latent_cache = {path: self._encode_to_distribution(self._load_tensor(path, 0, 0)[None])[0]
                                 for path in dict.fromkeys(all_paths)}
            if self.device.type == "cuda":
                # Until a checkpoint decodes samples the VAE is idle: it waits in host memory, not on the GPU.
                self.models.vae.to("cpu")
                torch.cuda.empty_cache()
                self.vae_parked = True
        self.prompt_cache: dict[str, torch.Tensor] | None = None
        if not config.text_encoder_trains:
            prompts = {e.prompt for c in concepts for e in (*c.instances, *c.classes)}
            with torch.no_grad():
                self.prompt_cache = {p: self._encode_prompts(self.models.text_encoder, self._tokenize([p]))[0]
                                     for p in prompts}

    # --- one step ------------------------------------------------------------------------------------
    def _tokenize(self, prompts: list[str]) -> torch.Tensor:
        tokenizer = self.models.tokenizer
        length = self.config.tokenizer_max_length or tokenizer.model_max_length
        return tokenizer(prompts, padding="max_length", truncation=True, max_length=length,
                         return_tensors="pt").input_ids.to(self.device)

    def _encode_prompts(self, text_encoder: Any, token_ids: torch.Tensor) -> torch.Tensor:
        """The text encoder's hidden states of tokenized prompts (with text_encoder_use_attention_mask: not
        attending to the padding)."""
        if not self.config.text_encoder_use_attention_mask:
            return text_encoder(token_ids)[0]
        return text_encoder(token_ids, attention_mask=prompt_attention_mask(
            token_ids, self.models.tokenizer.eos_token_id))[0]

    def _load_tensor(self, path: Path, index: int, slot: int) -> torch.Tensor:
        image = load_rgb_image(path)
        return image_to_tensor(image, self.config.resolution, self.config.center_crop, self.config.hflip,
                               example_generator(self.config.seed, index, slot))

    def _encode_to_distribution(self, pixels: torch.Tensor) -> torch.Tensor:
        """The VAE's latent distribution (mean and log-variance stacked on channels), kept in fp32."""
        with torch.no_grad():
            return self.models.vae.encode(pixels.to(self.device, torch.float32)).latent_dist.parameters.float()

    def _random(self, shape: tuple[int, ...], draw) -> torch.Tensor:
        """This process's rows of a draw made for the whole global batch.

        Every process draws the randomness (noise, timesteps) of the global batch from the same generator
        and keeps its own rows, so N processes compute exactly what one process does with the global batch.
        """
        rows_per_half = self.config.train_batch_size
        halves = shape[0] // rows_per_half
        processes = self.accelerator.num_processes
        full = draw((shape[0] * processes, *shape[1:]))
        if processes == 1:
            return self._to_device(full)
        index = self.accelerator.process_index
        rows = [h * rows_per_half * processes + index * rows_per_half + r
                for h in range(halves) for r in range(rows_per_half)]
        return self._to_device(full[rows])

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """Host-drawn randomness onto the device (the fast step replaces this with a non-blocking copy)."""
        return tensor.to(self.device)

    def _global_slot(self, local_slot: int) -> int:
        """Position of a local example in the global batch (fixes its augmentation across process counts)."""
        half, row = divmod(local_slot, self.config.train_batch_size)
        return (half * self.accelerator.num_processes + self.accelerator.process_index) * \
            self.config.train_batch_size + row

    def _randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        return self._random(shape, lambda s: torch.randn(s, generator=self.noise_generator))

    def _latent_distribution(self, examples: list[Example], index: int) -> torch.Tensor:
        """The VAE's latent distribution of each example (mean and log-variance stacked on channels)."""
        if self.latent_cache is not None:
            return torch.stack([self.latent_cache[e.path] for e in examples])

        def load(slot: int) -> torch.Tensor:
            return self._load_tensor(examples[slot].path, index, self._global_slot(slot))

        slots = range(len(examples))
        # Decoding photos releases the GIL: with dataloader_num_workers > 0 a batch is decoded in threads.
        tensors = list(self.photo_loader.map(load, slots)) if self.photo_loader else [load(i) for i in slots]
        return self._encode_to_distribution(torch.stack(tensors))

    def _encoder_input(self, examples: list[Example]) -> torch.Tensor:
        """Token ids of the prompts, or their cached embeddings when the text encoder is frozen."""
        if self.prompt_cache is not None:
            return torch.stack([self.prompt_cache[e.prompt] for e in examples])
        return self._tokenize([e.prompt for e in examples])

    def draw_batch(self, index: int) -> StepBatch:
        """Everything step ``index`` reads, on the device; the run's randomness is drawn here, in a fixed order."""
        instances, classes = self.schedule.batch(index)
        examples = instances + classes
        distribution = self._latent_distribution(examples, index)
        latent_shape = (distribution.shape[0], distribution.shape[1] // 2, *distribution.shape[2:])
        sample_noise = self._randn(latent_shape)
        noise = self._randn(latent_shape)
        if self.config.offset_noise:  # one offset per image and channel, as diffusers' --offset_noise
            noise = noise + 0.1 * self._randn((*latent_shape[:2], 1, 1))
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = self._random((latent_shape[0],),
                                 lambda s: torch.randint(0, steps, s, generator=self.noise_generator))
        return StepBatch(distribution, sample_noise, noise, timesteps, self._encoder_input(examples), bool(classes))

    def forward_backward(self, batch: StepBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The DreamBooth loss of ``batch`` and its backward pass; returns (loss, prior loss), not detached."""
        mean, logvar = batch.latent_distribution.chunk(2, dim=1)
        std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
        latents = (mean + std * batch.sample_noise) * self.models.vae.config.scaling_factor
        noisy_latents = self.noise_scheduler.add_noise(latents, batch.noise, batch.timesteps)
        if not self.step_autocast:  # bf16 weights without autocast take bf16 inputs (the loss is fp32 below)
            noisy_latents = noisy_latents.to(torch.bfloat16)
        with self.accelerator.autocast():
            encoder_states = batch.encoder_input if self.prompt_cache is not None else \
                self._encode_prompts(self.step_text_encoder, batch.encoder_input)
            if not self.step_autocast:
                encoder_states = encoder_states.to(torch.bfloat16)  # cached or from a frozen encoder
            model_pred = self.step_unet(noisy_latents, batch.timesteps, encoder_states).sample
        target = batch.noise if self.prediction_type == "epsilon" else \
            self.noise_scheduler.get_velocity(latents, batch.noise, batch.timesteps)
        weights = None if self.snr_weights is None else self.snr_weights[batch.timesteps]
        loss, _, prior_loss = compute_loss(model_pred, target, batch.with_prior, self.config.prior_loss_weight,
                                           weights)
        self.accelerator.backward(loss)  # accelerate divides by gradient_accumulation_steps itself
        return loss, prior_loss

    def micro_step(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward and backward of micro-batch ``index``; returns (loss, prior loss), detached."""
        loss, prior_loss = self.forward_backward(self.draw_batch(index))
        return self.global_losses(loss.detach(), None if prior_loss is None else prior_loss.detach())

    def global_losses(self, loss: torch.Tensor, prior_loss: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This process's losses averaged over the processes: the global batch's, as one process reports them."""
        if self.accelerator.num_processes > 1:
            loss = self.accelerator.reduce(loss, reduction="mean")
            prior_loss = None if prior_loss is None else self.accelerator.reduce(prior_loss, reduction="mean")
        return loss, prior_loss

    def optimizer_step(self) -> None:
        if self.config.max_grad_norm > 0:
            parameters = [p for module in self.wrapped.values() for p in module.parameters()]
            self.accelerator.clip_grad_norm_(parameters, self.config.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def autocast(self):
        """The autocast of sampling and class images: accelerate's, or bf16 autocast where the training step
        runs without one (bf16_autocast off), so bf16 UNet latents meet the fp32 VAE as in every other run."""
        if self.step_autocast:
            return self.accelerator.autocast()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def raw_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer itself, without accelerate's wrapper (for its state and param groups)."""
        return self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer

    # --- saving --------------------------------------------------------------------------------------
    def live_components(self) -> ModelComponents:
        unwrap = self.accelerator.unwrap_model
        return dataclasses.replace(self.models, unet=unwrap(self.wrapped["unet"]),
                                   text_encoder=unwrap(self.wrapped["text_encoder"])
                                   if "text_encoder" in self.wrapped else self.models.text_encoder)

    def save_state(self, step: int) -> Path:
        """Write the resumable state of ``step`` as state/step-N (in the background); returns that folder."""
        folder = state_folder(self.plan.output_dir, step)
        optimizer = self.raw_optimizer()
        sharded = self.averaging_inside_backward and self.config.shard_optimizer  # each process: its parts only
        if sharded:
            optimizer.collect_state_on_main()
        if self.accelerator.is_main_process:
            scaler = self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None
            write = training_state_writer(
                folder, TrainingProgress(step, self.plan.total_steps, self.config.seed),
                {name: self.accelerator.unwrap_model(m) for name, m in self.wrapped.items()},
                optimizer, self.lr_scheduler, scaler, self.noise_generator,
                json.dumps(self.config.to_dict(), indent=2) + "\n")
            self.saver.submit(write, lambda: self.report_state(step, folder))
        if sharded:
            optimizer.keep_own_parts_only()
        self.accelerator.wait_for_everyone()
        return folder

    def report_state(self, step: int, folder: Path) -> None:
        """A state is complete: say so, and keep at most checkpoints_total_limit of them."""
        self.emit(CheckpointSaved(step, str(folder), "state"))
        limit = self.config.checkpoints_total_limit
        if limit is not None:
            for old in prune_states(self.plan.output_dir, limit, up_to_step=step):
                self.emit.log(f"removed {STATE_DIR_NAME}/{old.name} (checkpoints_total_limit={limit})")

    def restore_state(self, folder: Path) -> int:
        optimizer = self.raw_optimizer()
        try:
            progress, scaler_state = load_training_state(
                folder, {name: self.accelerator.unwrap_model(m) for name, m in self.wrapped.items()}, optimizer,
                self.lr_scheduler, self.noise_generator)
        except ResumeError as error:  # a state that does not fit this run: a message, not a traceback
            raise TrainingError(str(error)) from None
        if scaler_state is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(scaler_state)
        self.emit.log(f"resumed from {folder} at step {progress.step}")
        return progress.step

    def release_optimizer_memory(self) -> None:
        optimizer = self.raw_optimizer()
        optimizer.zero_grad(set_to_none=True)
        release_state = getattr(optimizer, "release_state", None)  # InBackwardAdamW keeps state beside .state
        if release_state is not None:
            release_state()
        else:
            optimizer.state.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def check_weights_across_processes(self, step: int) -> None:
        """With the in-backward AdamW every process keeps its own copy of the weights (updated there, or its part
        updated there and the rest received): say so loudly if they have come apart, since only the main
        process's are saved."""
        if not self.averaging_inside_backward:
            return
        from dreamcore.training.gradient_average import first_weight_differing_across_processes

        differing = first_weight_differing_across_processes(self.trained)
        if differing is not None:
            self.emit.log(f"the processes' weights differ after step {step} (first: {differing}): their updates "
                          "diverged, so the run was not the data-parallel training it should be. The main "
                          "process's weights are saved; please report this with the run's config.json.", "error")

    @contextlib.contextmanager
    def sampling(self) -> Iterator[tuple[ModelComponents, Any]]:
        """The live models and a pipeline of them, in eval mode with the VAE on the device; training mode (and
        the parked VAE) restored after."""
        from dreamcore.models import build_pipeline

        components = self.live_components()
        for module in self.wrapped.values():
            module.eval()
        if self.vae_parked:
            self.models.vae.to(self.device)
        try:
            yield components, build_pipeline(components)
        finally:
            for module in self.wrapped.values():
                module.train()
            if self.vae_parked:
                self.models.vae.to("cpu")

    def make_samples(self, pipeline: Any, step: int) -> Path | None:
        """The samples of ``step`` into samples/step-N; returns that folder in the main process (None elsewhere).
        Each process draws every N-th sample; the main process gathers and writes them."""
        config, accelerator = self.config, self.accelerator
        prompt = config.save_sample_prompt or self.plan.concepts[0].concept.instance_prompt
        with self.autocast():
            samples = generate_samples(pipeline, prompt, config.save_sample_negative_prompt,
                                       list(range(accelerator.process_index, config.n_save_sample,
                                                  accelerator.num_processes)),
                                       config.seed, config.save_guidance_scale, config.save_infer_steps,
                                       config.resolution, config.sample_batch_size)
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            samples = gather_object(samples)
        if not accelerator.is_main_process:
            return None
        sample_folder = self.plan.output_dir / "samples" / f"step-{step:06d}"
        paths = write_samples(samples, sample_folder, config.seed)
        self.emit(SamplesSaved(step, tuple(str(p) for p in paths), prompt))
        return sample_folder

    def validate(self, step: int) -> None:
        """Samples only, no checkpoint (validation_steps)."""
        with self.sampling() as (_, pipeline):
            self.make_samples(pipeline, step)
        self.accelerator.wait_for_everyone()

    def save_checkpoint(self, step: int, final: bool) -> dict[str, str]:
        """Samples plus the single-file model (and, at the end, the diffusers folder)."""
        from dreamcore.convert import save_single_file
        from dreamcore.convert.single_file import single_file_writer
        from dreamcore.models import save_diffusers_folder

        config, plan = self.config, self.plan
        outputs: dict[str, str] = {}
        if final:  # no step follows: the optimizer's moments (4-8 bytes a weight) make room for the samples
            self.release_optimizer_memory()
            self.check_weights_across_processes(step)
        with self.sampling() as (components, pipeline):
            sample_folder = self.make_samples(pipeline, step)
            if sample_folder is not None:  # the main process
                prompt = config.save_sample_prompt or plan.concepts[0].concept.instance_prompt
                outputs["samples"] = str(sample_folder)
                if self.likeness is not None:
                    with self.autocast():
                        self.likeness.evaluate(pipeline, step)
                    self.emit.log("likeness per checkpoint:\n" + self.likeness.table())
                    outputs["likeness"] = str(self.likeness.out_dir)
                metadata = self.export_metadata(step)
                user_metadata = {"description": f"dreamcore DreamBooth of '{prompt}', {step} steps",
                                 "activation text": ", ".join(c.concept.instance_prompt for c in plan.concepts),
                                 "sd version": {"sd1": "SD1", "sd2": "SD2", "sd2-v": "SD2"}.get(components.family, ""),
                                 "notes": f"Trained by dreamcore from {config.pretrained_model_name_or_path}"}
                if config.use_lora:  # the adapters alone: the WebUI's LoRA file (+ the diffusers LoRA folder)
                    outputs.update(export_training_lora(components, plan.output_dir, plan.model_name, step, final,
                                                        metadata, user_metadata, config.save_half))
                    path = Path(outputs["lora"])
                elif final:
                    folder = save_diffusers_folder(components, plan.output_dir / "diffusers")
                    (folder / CONFIG_FILE_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
                    outputs["diffusers"] = str(folder)
                    path = plan.output_dir / f"{plan.model_name}.safetensors"
                else:
                    path = plan.output_dir / "checkpoints" / f"{plan.model_name}-step-{step:06d}.safetensors"
                config.save(path.parent / CONFIG_FILE_NAME)
                if config.use_lora or final:  # LoRA files are small; after the last step nothing runs beside
                    if not config.use_lora:
                        save_single_file(components, path, half=config.save_half, metadata=metadata,
                                         user_metadata=user_metadata)
                    self.report_checkpoint(step, path, final)
                else:  # the weights copied to the host now, the file written while training goes on
                    write = single_file_writer(components, path, half=config.save_half, metadata=metadata,
                                               user_metadata=user_metadata)
                    self.saver.submit(write, lambda: self.report_checkpoint(step, path, final))
                if not config.use_lora:
                    outputs["single_file"] = str(path)
        self.accelerator.wait_for_everyone()
        return outputs

    def report_checkpoint(self, step: int, path: Path, final: bool) -> None:
        """A model file is complete: say so, and keep at most checkpoints_total_limit of the step files."""
        self.emit(CheckpointSaved(step, str(path), "final" if final else "checkpoint"))
        if not final:
            self._apply_checkpoint_limit()

    def export_metadata(self, step: int) -> dict[str, str]:
        from dreamcore.convert import training_metadata

        config = self.config
        metadata = training_metadata(Path(config.pretrained_model_name_or_path).name,
                                     [c.concept.instance_prompt for c in self.plan.concepts], step, config.resolution)
        metadata.update({"dreamcore.class_prompts": ", ".join(c.concept.class_prompt for c in self.plan.concepts),
                         "dreamcore.family": self.models.family, "dreamcore.seed": str(config.seed)})
        return metadata

    def _apply_checkpoint_limit(self) -> None:
        limit = self.config.checkpoints_total_limit
        if limit is None:
            return
        folder = self.plan.output_dir / "checkpoints"
        files = sorted(folder.glob(f"{self.plan.model_name}-step-*.safetensors"))
        for old in files[:-limit]:
            old.unlink()
            for companion in (".json", ".yaml"):  # the WebUI card and an SD2-v config beside the file
                old.with_suffix(companion).unlink(missing_ok=True)
            self.emit.log(f"removed {old.name} (checkpoints_total_limit={limit})")


def _training_noise_scheduler(scheduler: Any):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config)


def load_models(config: TrainConfig) -> ModelComponents:
    from dreamcore.models import load_base_model

    return load_base_model(config.pretrained_model_name_or_path, vae=config.pretrained_vae_name_or_path,
                           revision=config.revision, variant=config.variant,
                           family="auto" if config.model_family == "auto" else config.model_family,
                           tokenizer=config.tokenizer_name)


def low_precision_modules(config: TrainConfig, frozen_dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The modules training holds in a half dtype anyway, with that dtype. Casting them before the class images
    are generated gives the same weights, and generation then needs half the memory (LoRA's frozen base, a
    frozen text encoder, pure-bf16 weights)."""
    casts: dict[str, torch.dtype] = {}
    if config.pure_bf16:
        casts["unet"] = torch.bfloat16
        if config.text_encoder_trains:
            casts["text_encoder"] = torch.bfloat16
    if frozen_dtype != torch.float32:
        if config.use_lora:
            casts["unet"] = frozen_dtype
        if config.use_lora or not config.text_encoder_trains:
            casts["text_encoder"] = frozen_dtype
    return casts


def ensure_class_images(trainer: Trainer, emit: Emitter, stop: StopSignal | None) -> list[list[Path]]:
    """Class images per concept (empty lists without prior preservation), generating the missing ones.

    With several processes each generates every N-th missing image; all list the folder before any writes.
    """
    from dreamcore.models import build_pipeline

    config, plan, accelerator = trainer.config, trainer.plan, trainer.accelerator
    if not config.with_prior_preservation:
        return [[] for _ in plan.concepts]
    # The stage starts once every process has loaded its models: waiting for a slower process is loading time.
    accelerator.wait_for_everyone()
    counts = sorted({c.num_class_images for c in plan.concepts})
    emit(Stage("class_images", f"{counts[0]} per concept" if len(counts) == 1 else
               "per concept: " + ", ".join(str(c.num_class_images) for c in plan.concepts)))
    warn = lambda message: emit.log(message, "warning")  # noqa: E731
    pipeline = None
    result = []
    for concept_plan in plan.concepts:
        prompt = concept_plan.concept.class_prompt
        wanted = concept_plan.num_class_images
        existing, indices = missing_class_images(concept_plan.class_dir, prompt, wanted, warn)
        accelerator.wait_for_everyone()
        if indices:
            if pipeline is None:
                low_precision = low_precision_modules(config, trainer.frozen_dtype)
                for name in ("unet", "text_encoder", "vae"):
                    # cast while moving: the full-precision copy of a module trained in half never reaches the GPU
                    getattr(trainer.models, name).to(trainer.device, dtype=low_precision.get(name))
                pipeline = build_pipeline(trainer.models)
                # Decode one image at a time: 512 px images through the VAE at once need several hundred MB each.
                pipeline.vae.enable_slicing()
            done = len(existing)
            # "n of N" before the first batch: the models are on the device and generation starts now.
            emit(ClassImagesProgress(done, wanted))

            def on_batch(count: int) -> None:
                nonlocal done
                done += count * accelerator.num_processes
                emit(ClassImagesProgress(min(done, wanted), wanted))

            with trainer.autocast():
                generate_class_images(pipeline, concept_plan.class_dir, prompt, config.class_negative_prompt,
                                      indices[accelerator.process_index::accelerator.num_processes],
                                      config.sample_batch_size, config.seed, config.class_guidance_scale,
                                      config.class_infer_steps, config.resolution, on_batch, stop)
            accelerator.wait_for_everyone()
        images = usable_class_images(concept_plan.class_dir, warn)
        if len(images) < wanted and not (stop is not None and stop.is_set()):
            shared = (" Each process writes its share of them there: with several machines the folder must be on "
                      "storage every machine sees." if accelerator.num_processes > 1 else "")
            raise TrainingError(f"class images: only {len(images)} of {wanted} usable in "
                                f"{concept_plan.class_dir}; see the warnings above.{shared}")
        result.append(sorted(images)[:wanted])
    if pipeline is not None and torch.cuda.is_available():
        # Sampling's activations stay in the allocator's cache; hand them back before training allocates.
        del pipeline
        torch.cuda.empty_cache()
    return result


def _with_memory_preset(plan: RunPlan, emit: Emitter) -> RunPlan:
    """The plan with its memory preset applied (picked from the GPU's free memory for "auto")."""
    from dreamcore.presets import apply_memory_preset, cuda_free_bytes

    config, message = apply_memory_preset(plan.config, cuda_free_bytes())
    if message:
        emit.log(message)
    return dataclasses.replace(plan, config=config.validate())


def _with_resume_checked(plan: RunPlan, emit: Emitter) -> RunPlan:
    """The plan with the state it resumes from, checked against the run before any model loads. "latest" with no
    saved state yet starts a new run, as diffusers does (scripts pass it on every launch)."""
    from dreamcore.config import ConfigError
    from dreamcore.training.state import read_progress, saved_states

    config = plan.config
    start = 0
    if config.resume_from_checkpoint:
        try:
            folder = resolve_state_folder(config.resume_from_checkpoint, plan.output_dir)
            progress = None if folder is None else read_progress(folder)
        except ResumeError as error:
            raise ConfigError([str(error)]) from None
        if folder is None:
            emit.log(f"resume_from_checkpoint latest: no saved training state in {plan.output_dir / STATE_DIR_NAME} "
                     "yet, so this is a new run.")
        else:
            if progress.seed != config.seed:
                raise ConfigError([f"seed: the state in {folder} was saved by a run with seed {progress.seed}, this "
                                   f"one has {config.seed}; resume with the same seed to continue the same run."])
            if progress.step > plan.total_steps:
                raise ConfigError([f"max_train_steps: the state in {folder} is at step {progress.step}, beyond this "
                                   f"run's {plan.total_steps}; give max_train_steps above {progress.step} to train on."])
            if progress.step == plan.total_steps:
                emit.log(f"the state in {folder} is at step {progress.step}, this run's max_train_steps: nothing "
                         "is left to train, so only the final model is written again. A larger max_train_steps "
                         "continues the run.")
            plan = dataclasses.replace(plan, resume_folder=folder)
            start = progress.step
    later = [f"step-{step}" for step, _ in saved_states(plan.output_dir / STATE_DIR_NAME) if step > start]
    if later:
        emit.log(f"{plan.output_dir / STATE_DIR_NAME} holds states of an earlier run beyond this run's start (step "
                 f"{start}): {', '.join(later)}. This run replaces each when it reaches its step; until then "
                 "'resume_from_checkpoint latest' would pick them.", "warning")
    return plan


def _with_runnable_cuda_graph(plan: RunPlan, num_processes: int, emit: Emitter) -> RunPlan:
    """The plan with cuda_graph off where this machine cannot record the step (the reason is logged)."""
    if not plan.config.cuda_graph:
        return plan
    from dreamcore.training.graph_step import cuda_graph_problem

    problem = cuda_graph_problem(plan.config, num_processes)
    if problem is None:
        return plan
    emit.log(f"cuda_graph: {problem}; the step runs eagerly (same results, slower).", "warning")
    return dataclasses.replace(plan, config=plan.config.replace(cuda_graph=False))


def _trainer_class(config: TrainConfig) -> type[Trainer]:
    if config.cuda_graph:
        from dreamcore.training.graph_step import GraphTrainer

        return GraphTrainer
    if config.fast_step:
        from dreamcore.training.fast_step import FastTrainer

        return FastTrainer
    return Trainer


def likeness_tracker(plan: RunPlan):
    """The likeness scorer of a run (dreamcore[faces]); a clear error before training if it cannot run."""
    from dreamcore.config import ConfigError
    from dreamcore.likeness import scoring_available

    available, message = scoring_available()
    if not available:
        raise ConfigError([f"score_likeness: {message}"])
    from dreamcore.likeness.scores import LikenessError
    from dreamcore.likeness.tracker import LikenessTracker
    from dreamcore.training.setup import usable_photos

    # The user's own photos, at their full size (the training crops may be too small for face identity).
    folder = Path(plan.concepts[0].concept.instance_data_dir)
    tracker = LikenessTracker.from_config(plan.config, usable_photos(folder, lambda message: None))
    try:
        tracker.reference  # embeds the photos now: a folder without a usable face fails before training
    except LikenessError as error:
        raise ConfigError([f"score_likeness: {error}"]) from error
    return tracker


def export_best_checkpoint(trainer: Trainer, last_step: int, emit: Emitter) -> dict[str, str]:
    """With keep_best, the exported single file is the checkpoint that looked most like the subject."""
    from dreamcore.fileio import atomic_path

    plan, best = trainer.plan, trainer.likeness.best
    if best is None or best.step == last_step or not trainer.accelerator.is_main_process:
        return {}
    source = plan.output_dir / "checkpoints" / f"{plan.model_name}-step-{best.step:06d}.safetensors"
    if not source.is_file():
        emit.log(f"keep_best: the best checkpoint (step {best.step}) is no longer on disk "
                 "(checkpoints_total_limit); exporting the last step instead.", "warning")
        return {}
    target = plan.output_dir / f"{plan.model_name}.safetensors"
    for suffix in (".safetensors", ".json"):
        if source.with_suffix(suffix).is_file():
            with atomic_path(target.with_suffix(suffix)) as temp:
                temp.write_bytes(source.with_suffix(suffix).read_bytes())
    emit.log(f"keep_best: exported the step-{best.step} checkpoint (likeness {best.likeness:.3f}) as {target}; "
             "diffusers/ holds the last step.")
    return {"single_file": str(target), "best_step": str(best.step)}


def save_run_report(path: Path, config: TrainConfig, report: dict[str, Any]) -> None:
    """train_config.json with a ``run_report`` section (TrainConfig.load skips it)."""
    from dreamcore.fileio import atomic_write_text

    atomic_write_text(path, json.dumps({**config.to_dict(), RUN_REPORT_KEY: report}, indent=2) + "\n")


def leave_process_group() -> None:
    """End this process's part in a several-process launch after ``train`` returned: destroys the process group
    that accelerate joined (torchrun's launch), which NCCL otherwise warns about at exit as a possible leak. For the
    program that owns the process (the CLI); a library caller that trains again in the same process keeps it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def train(config: TrainConfig, callbacks: list[Callable] | None = None, stop: StopSignal | None = None) -> TrainResult:
    """Train DreamBooth as ``config`` says. Events go to ``callbacks``; ``stop.is_set()`` ends the run
    cleanly (resumable state and a usable checkpoint are saved). Raises ConfigError / TrainingError."""
    from accelerate import PartialState

    # With several processes only the main one reports; the others would repeat every event.
    is_main = PartialState(cpu=not torch.cuda.is_available()).is_main_process
    emit = Emitter(callbacks if is_main else [])
    emit(Stage("validate"))
    config = config.with_absolute_paths()  # its train_config.json then runs from any folder
    plan = plan_run(config, warn=lambda m: emit.log(m, "warning"))
    plan = _with_memory_preset(plan, emit)
    plan = _with_resume_checked(plan, emit)
    plan = _with_runnable_cuda_graph(plan, PartialState().num_processes, emit)
    config = plan.config
    use_expandable_segments(config, emit.log)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    config.save(plan.output_dir / CONFIG_FILE_NAME)
    emit(Stage("load", config.pretrained_model_name_or_path))
    models = load_models(config)
    for word, pieces in split_identifier_words(models.tokenizer, [c.concept for c in plan.concepts]).items():
        emit.log(f"instance_prompt: {word!r} is {len(pieces)} tokens to the text encoder ({', '.join(pieces)}), so the "
                 "subject is learnt as a mix of words that mean something already; a rare word of one token, such "
                 "as 'sks', is cleaner.", "warning")
    trainer = _trainer_class(config)(plan, models, emit, stop)
    if trainer.device.type == "cpu" and is_full_size(models.unet):
        emit.log("Training a full-size model on the CPU: expect minutes per step, i.e. days for a full run. "
                 "Use a CUDA GPU; the ETA below is measured from the first steps.", "warning")
    if config.score_likeness:
        trainer.likeness = likeness_tracker(plan)
    class_images = ensure_class_images(trainer, emit, stop)
    trainer.prepare_models()
    trainer.prepare_data(class_images)
    try:
        return run_steps(trainer, emit, stop)
    except BaseException:
        trainer.saver.finish_after_error(emit.log)  # the files of a save in flight are completed, not cut
        raise


def run_steps(trainer: Trainer, emit: Emitter, stop: StopSignal | None) -> TrainResult:
    """The training loop of a prepared trainer, from its first (or resumed) step to the exported model."""
    plan, config = trainer.plan, trainer.config
    start_step = 0 if plan.resume_folder is None else trainer.restore_state(plan.resume_folder)

    processes = trainer.accelerator.num_processes
    emit(Stage("train", f"{plan.total_steps} steps on {trainer.device}"
               + (f" x {processes} processes" if processes > 1 else "")))
    losses: list[float] = []
    outputs: dict[str, str] = {}
    status = "completed"
    started = time.perf_counter()
    step = start_step
    micro_steps = config.gradient_accumulation_steps

    def report(launched: tuple[int, LateValues]) -> None:
        """Check and announce a finished step's loss (read one step late: see late_read.py)."""
        done, late = launched
        values = late.values()
        micro_losses, micro_priors, learning_rate = values[:micro_steps], values[micro_steps:-1], values[-1]
        # summed on the host in micro-step order, as Python floats (float64)
        accumulated = sum(value / micro_steps for value in micro_losses)
        accumulated_prior = sum(value / micro_steps for value in micro_priors)
        if not math.isfinite(accumulated):
            raise TrainingError(
                f"the loss became {accumulated} at step {done}. Likely causes: fp16 overflow (use "
                "mixed_precision bf16, or keep the VAE in fp32 as dreamcore does), a learning rate too high "
                f"({config.learning_rate}; the guide uses 1e-6), or a damaged base model. No checkpoint was "
                "written from this step; resume from the last saved state after changing the setting.")
        losses.append(accumulated)
        elapsed = time.perf_counter() - started
        rate = (done - start_step) / elapsed if elapsed > 0 else 0.0
        emit(Progress(done, plan.total_steps, accumulated, learning_rate, rate,
                      (plan.total_steps - done) / rate if rate > 0 else 0.0,
                      accumulated_prior if config.with_prior_preservation else None))

    unread: tuple[int, LateValues] | None = None  # the last launched step, whose values are still on the GPU
    while step < plan.total_steps:
        if stop is not None and stop.is_set():
            status = "stopped"
            break
        step_losses, step_priors = [], []
        for micro in range(micro_steps):
            index = step * micro_steps + micro
            with accumulate(trainer.accelerator, list(trainer.wrapped.values())):
                loss, prior_loss = trainer.micro_step(index)
            step_losses.append(loss)
            if prior_loss is not None:
                step_priors.append(prior_loss)
        trainer.optimizer_step()
        trainer.saver.poll()  # a save that finished is reported; one that failed is raised here
        step += 1
        launched = (step, LateValues([*step_losses, *step_priors, trainer.lr_scheduler.get_last_lr()[0]]))
        if unread is not None:  # this step is queued behind it, so the GPU stays busy while the host reads
            report(unread)
        unread = launched
        state_due = bool(config.checkpointing_steps) and step % config.checkpointing_steps == 0
        checkpoint_due = bool(config.save_interval) and step % config.save_interval == 0 and \
            step >= config.save_min_steps
        samples_due = bool(config.validation_steps) and step % config.validation_steps == 0 and not checkpoint_due
        if (state_due or checkpoint_due or samples_due) and step < plan.total_steps:
            report(unread)  # nothing is saved from a step whose loss was not checked
            unread = None
            if state_due:
                trainer.save_state(step)
            if samples_due:
                trainer.validate(step)
            if checkpoint_due:
                trainer.save_checkpoint(step, final=False)
                if trainer.likeness is not None and trainer.likeness.should_stop():
                    emit.log(f"likeness has not risen for {config.likeness_early_stop} checkpoints: stopping early "
                             f"at step {step} (likeness_early_stop).")
                    break
    if unread is not None:
        report(unread)

    state = None
    if status == "stopped":
        emit(Stage("export", f"stopped at step {step}: saving a resumable state and a checkpoint"))
        state = trainer.save_state(step)
        outputs = trainer.save_checkpoint(step, final=False)
        trainer.saver.wait()
    else:
        emit(Stage("export", "final model"))
        trainer.saver.wait()  # the last checkpoint's files are complete before the final export reads or prunes
        if config.checkpointing_steps and step > start_step:
            # a state of the last step too, so that a longer run continues from it (copied to the host now,
            # written while the final model is exported; the export frees the optimizer's memory after it)
            state = trainer.save_state(step)
        outputs = trainer.save_checkpoint(step, final=True)
        trainer.saver.wait()
        if trainer.likeness is not None and config.keep_best:
            outputs.update(export_best_checkpoint(trainer, step, emit))
    if trainer.likeness is not None:
        save_run_report(plan.output_dir / CONFIG_FILE_NAME, config, {"likeness": trainer.likeness.report()})
    outputs["state"] = str(state) if state is not None else ""
    outputs["config"] = str(plan.output_dir / CONFIG_FILE_NAME)
    outputs = {k: v for k, v in outputs.items() if v}
    if trainer.photo_loader is not None:
        trainer.photo_loader.shutdown()
    emit(Finished(status, step, outputs))
    return TrainResult(status, step, outputs, losses)
