"""The trainer: the live state of one run and its training step.

The step is the one of diffusers' train_dreambooth.py: encode the photo to latents, add noise at a random
timestep, predict the noise (or v) from the prompt's conditioning (which the model family makes), and take
the MSE; with prior preservation the batch also holds class images and their loss is added with
``prior_loss_weight``. ``run.py`` drives the trainer; ``checkpoints.py`` saves what it trained; the step
executors (``fast_step.py``, ``graph_step.py``) are subclasses that run the same step faster.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from dreamcore.components import ModelComponents
from dreamcore.events import Emitter, Stage, StopSignal
from dreamcore.families import get_family
from dreamcore.images import load_rgb_image
from dreamcore.lora.adapters import LoraSettings, add_lora_adapters
from dreamcore.training.data import (ConceptExamples, Example, ExampleSchedule, example_generator,
                                     image_to_tensor, needs_random_augmentation)
from dreamcore.training.memory_layout import apply_memory_layout
from dreamcore.training.optim import build_lr_scheduler, build_optimizer, optimizer_spec, parameter_groups
from dreamcore.training.saving import BackgroundWriter, HostStaging
from dreamcore.training.setup import (RunPlan, TrainingError, check_precision_supported, effective_precision,
                                      weight_dtype)
from dreamcore.training.tokens import identifier_token_ids, train_only_rows


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
    # token ids for each text encoder, or the prompts' cached encodings (the family's ``encode``) when frozen
    encoder_input: tuple[torch.Tensor, ...]
    with_prior: bool  # the second half of the batch holds class images


class Trainer:
    """Holds the live state of one run; ``run.train()`` drives it."""

    def __init__(self, plan: RunPlan, models: ModelComponents, emit: Emitter, stop: StopSignal | None):
        from accelerate import Accelerator

        self.plan = plan
        self.config = plan.config
        self.emit = emit
        self.stop = stop
        self.saver = BackgroundWriter()  # checkpoints and states written while training goes on
        self.staging = HostStaging(self.emit.log)  # where saves copy to the host; released when training ends
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
        self.family = get_family(models.family)
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
        config, models = self.config, self.models
        text_encoders = models.text_encoders()
        positions = models.text_encoder.config.max_position_embeddings
        if config.tokenizer_max_length is not None and config.tokenizer_max_length > positions:
            raise TrainingError(f"tokenizer_max_length: {config.tokenizer_max_length} tokens, but this text encoder "
                                f"reads at most {positions}; set it to {positions} or less, or leave it empty.")
        models.vae.requires_grad_(False).to(self.device).eval()
        if models.vae.dtype != torch.float32:
            models.vae.to(dtype=torch.float32)  # the VAE stays fp32 in every precision: no black images
        models.unet.requires_grad_(True).train()
        for text_encoder in text_encoders.values():
            text_encoder.requires_grad_(config.train_text_encoder)
            if config.text_encoder_trains:
                text_encoder.train()
            else:
                text_encoder.to(self.device, dtype=self.frozen_dtype).eval()
        if config.token_embedding_trains:
            # the tokenizers of a family share one vocabulary: the same rows train in each text encoder
            identifiers = identifier_token_ids(models.tokenizer, [c.concept for c in self.plan.concepts])
            for text_encoder in text_encoders.values():
                train_only_rows(text_encoder.get_input_embeddings().weight, identifiers)
            if config.train_token_embedding is None:  # the default recipe: say what it trains
                tokens = models.tokenizer.convert_ids_to_tokens(identifiers)  # decode() warns about spaces
                words = ", ".join(repr(token.removesuffix("</w>")) for token in tokens)
                self.emit.log(f"train_token_embedding: the embedding of {words} trains (the rest of the text "
                              "encoder is frozen); --no-train_token_embedding keeps it frozen too.")
        if config.gradient_checkpointing:
            self.enable_gradient_checkpointing()
        apply_memory_layout(models, config, self.device)  # pure bf16 weights, channels-last (speed presets)
        if config.use_lora:  # PEFT adapters; only they train, the base stays frozen (dreamcore/lora)
            add_lora_adapters(models.unet, list(text_encoders.values()) if config.train_text_encoder else None,
                              LoraSettings.from_config(config), models.family, self.frozen_dtype)
        self.trained = {"unet": models.unet}
        if config.text_encoder_trains:
            self.trained.update(text_encoders)
        learning_rate = config.learning_rate
        if config.scale_lr:
            learning_rate *= (config.train_batch_size * config.gradient_accumulation_steps
                              * self.accelerator.num_processes)
        self.optimizer_spec = optimizer_spec(config)
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
        return self.optimizer_spec.updates_in_backward and self.accelerator.num_processes > 1

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
        # what the step encodes prompts with: the trained (wrapped) text encoders, or the frozen ones
        self.step_text_encoders = [self.wrapped.get(name, self.models.text_encoders()[name])
                                   for name in self.family.text_encoder_names]
        if config.compile_unet or config.compile_text_encoder:
            from dreamcore.training.compiling import compile_for_training, keep_compiled_kernels

            compiled = [name for name, on in (("the UNet", config.compile_unet),
                                              ("the text encoder", config.compile_text_encoder)) if on]
            if config.compile_unet:
                self.step_unet = compile_for_training(self.wrapped["unet"], self.device)
            if config.compile_text_encoder:
                self.step_text_encoders = [compile_for_training(encoder, self.device)
                                           for encoder in self.step_text_encoders]
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
            for text_encoder in self.models.text_encoders().values():
                text_encoder.gradient_checkpointing_enable()

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
        self.prompt_cache: dict[str, tuple[torch.Tensor, ...]] | None = None
        if not config.text_encoder_trains:
            prompts = {e.prompt for c in concepts for e in (*c.instances, *c.classes)}
            encoders = list(self.models.text_encoders().values())
            with torch.no_grad():
                self.prompt_cache = {p: tuple(t[0] for t in self._encode_prompts(encoders, self._tokenize([p])))
                                     for p in prompts}

    # --- one step ------------------------------------------------------------------------------------
    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        """The prompts' token ids for each of the family's text encoders, on the device."""
        ids = self.family.token_ids(self.models, prompts, self.config.tokenizer_max_length)
        return tuple(t.to(self.device) for t in ids)

    def _encode_prompts(self, text_encoders: list[Any], token_ids: tuple[torch.Tensor, ...]
                        ) -> tuple[torch.Tensor, ...]:
        """The family's encoding of tokenized prompts (with text_encoder_use_attention_mask: not attending to
        the padding)."""
        masks = None
        if self.config.text_encoder_use_attention_mask:
            masks = [prompt_attention_mask(ids, getattr(self.models, name).eos_token_id)
                     for ids, name in zip(token_ids, self.family.tokenizer_names)]
        return self.family.encode(text_encoders, token_ids, masks)

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

    def _encoder_input(self, examples: list[Example]) -> tuple[torch.Tensor, ...]:
        """Token ids of the prompts, or their cached encodings when the text encoders are frozen."""
        if self.prompt_cache is not None:
            return tuple(torch.stack(parts) for parts in zip(*(self.prompt_cache[e.prompt] for e in examples)))
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
            encoded = batch.encoder_input if self.prompt_cache is not None else \
                self._encode_prompts(self.step_text_encoders, batch.encoder_input)
            if not self.step_autocast:
                encoded = tuple(t.to(torch.bfloat16) for t in encoded)  # cached or from a frozen encoder
            conditioning = self.family.unet_conditioning(encoded, self.config.resolution)
            model_pred = self.step_unet(noisy_latents, batch.timesteps, **conditioning.unet_kwargs()).sample
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


    # --- after the steps -------------------------------------------------------------------------------
    def live_components(self) -> ModelComponents:
        """The model as trained so far: the trained modules unwrapped, the rest as loaded."""
        unwrap = self.accelerator.unwrap_model
        return dataclasses.replace(self.models, **{name: unwrap(module) for name, module in self.wrapped.items()})

    def release_step_memory(self) -> None:
        """No step follows: give back what only steps need (the step executors add their own)."""
        self.release_optimizer_memory()

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


def _training_noise_scheduler(scheduler: Any):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config)

