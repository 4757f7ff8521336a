"""A training run: plan it, set it up, loop over the steps, export. ``train(config)`` is the entry point.

Everything that can be checked before a model loads is checked first (``plan_run``, the memory preset, the
resume state); then the model loads, class images are made, the trainer prepares its models and data,
and ``run_steps`` is the loop: one readable function, with saving and sampling as named calls.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dreamcore.components import ModelComponents
from dreamcore.config import CONFIG_FILE_NAME, TrainConfig
from dreamcore.events import (SAVING_STAGE, ClassImagesProgress, Emitter, Finished, Progress, Stage, StepClock,
                              StopSignal)
from dreamcore.families import get_family
from dreamcore.training.checkpoints import Checkpoints, export_best_checkpoint, save_run_report
from dreamcore.training.class_images import generate_class_images, missing_class_images, usable_class_images
from dreamcore.training.compat import accumulate
from dreamcore.training.late_read import LateValues
from dreamcore.training.setup import RunPlan, TrainingError, is_full_size, plan_run, use_expandable_segments
from dreamcore.training.state import STATE_DIR_NAME, ResumeError, resolve_state_folder
from dreamcore.training.tokens import split_identifier_words
from dreamcore.training.trainer import Trainer


@dataclass
class TrainResult:
    status: str  # "completed" or "stopped"
    step: int
    outputs: dict[str, str]
    losses: list[float] = field(default_factory=list)


def load_models(config: TrainConfig) -> ModelComponents:
    from dreamcore.models import load_base_model

    return load_base_model(config.pretrained_model_name_or_path, vae=config.pretrained_vae_name_or_path,
                           revision=config.revision, variant=config.variant, family=config.model_family,
                           tokenizer=config.tokenizer_name)


def low_precision_modules(config: TrainConfig, frozen_dtype: torch.dtype,
                          text_encoders: tuple[str, ...] = ("text_encoder",)) -> dict[str, torch.dtype]:
    """The modules training holds in a half dtype anyway, with that dtype. Casting them before the class images
    are generated gives the same weights, and generation then needs half the memory (LoRA's frozen base, a
    frozen text encoder, pure-bf16 weights). ``text_encoders``: the model's text encoders, by field name."""
    casts: dict[str, torch.dtype] = {}
    if config.pure_bf16:
        casts["unet"] = torch.bfloat16
        if config.text_encoder_trains:
            casts.update(dict.fromkeys(text_encoders, torch.bfloat16))
    if frozen_dtype != torch.float32:
        if config.use_lora:
            casts["unet"] = frozen_dtype
        if config.use_lora or not config.text_encoder_trains:
            casts.update(dict.fromkeys(text_encoders, frozen_dtype))
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
                text_encoders = trainer.family.text_encoder_names
                low_precision = low_precision_modules(config, trainer.frozen_dtype, text_encoders)
                for name in ("unet", *text_encoders, "vae"):
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


def with_family_resolution(config: TrainConfig, emit: Emitter) -> TrainConfig:
    """``config`` at its model family's training resolution (SDXL 1024 px) when the person chose none, so that
    photos are prepared, class images made and samples drawn at it. The family is read from the model's files
    (key names and shapes only) whether or not the resolution was chosen, so that a refiner is refused here,
    before any photo is cropped into the output folder."""
    from dreamcore.models import base_model_family

    config.validate()  # every settings problem at once, before the model's files are read
    family = base_model_family(config.pretrained_model_name_or_path, config.revision, config.model_family)
    if config.chose("resolution") or family.training_resolution == config.resolution:
        return config
    emit.log(f"resolution: {family.training_resolution} px, what {family.label} is trained at (no resolution "
             "given); set resolution to train at another size.")
    return config.replace(resolution=family.training_resolution)


def _with_memory_preset(plan: RunPlan, emit: Emitter) -> RunPlan:
    """The plan with its memory preset applied (picked from the GPU's free memory for "auto")."""
    from dreamcore.presets import apply_memory_preset, cuda_free_bytes

    config = plan.config
    free = cuda_free_bytes()
    scale = 1.0
    if config.memory_preset == "auto" and free is not None and not config.use_lora:
        from dreamcore.models import base_model_family

        scale = base_model_family(config.pretrained_model_name_or_path, config.revision,
                                  config.model_family).memory_scale
    config, message = apply_memory_preset(config, free, scale)
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


def trainer_class(config: TrainConfig) -> type[Trainer]:
    """The step executor the config asks for: the CUDA-graph step, the fast step, or the plain one."""
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
    config = with_family_resolution(config.with_absolute_paths(), emit)  # absolute: train_config.json runs anywhere
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
    trainer = trainer_class(config)(plan, models, emit, stop)
    if trainer.device.type == "cpu" and is_full_size(models.unet):
        emit.log("Training a full-size model on the CPU: expect minutes per step, i.e. days for a full run. "
                 "Use a CUDA GPU; the ETA below is measured from the first steps.", "warning")
    if config.score_likeness:
        trainer.likeness = likeness_tracker(plan)
    class_images = ensure_class_images(trainer, emit, stop)
    trainer.prepare_models()
    trainer.prepare_data(class_images)
    try:
        return run_steps(trainer, Checkpoints(trainer), emit, stop)
    except BaseException:
        trainer.saver.finish_after_error(emit.log)  # the files of a save in flight are completed, not cut
        raise
    finally:
        trainer.staging.release()  # every write that read the save buffers has finished by now


def run_steps(trainer: Trainer, checkpoints: Checkpoints, emit: Emitter, stop: StopSignal | None) -> TrainResult:
    """The training loop of a prepared trainer, from its first (or resumed) step to the exported model."""
    plan, config = trainer.plan, trainer.config
    start_step = 0 if plan.resume_folder is None else checkpoints.restore_state(plan.resume_folder)

    processes = trainer.accelerator.num_processes
    emit(Stage("train", f"{plan.total_steps} steps on {trainer.device}"
               + (f" x {processes} processes" if processes > 1 else "")))
    losses: list[float] = []
    outputs: dict[str, str] = {}
    status = "completed"
    clock = StepClock()  # the rate and ETA of training steps alone: warm-up steps and saves left out
    step = start_step
    micro_steps = config.gradient_accumulation_steps

    def report(launched: tuple[int, LateValues, float]) -> None:
        """Check and announce a finished step's loss (read one step late: see late_read.py)."""
        done, late, seconds = launched
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
        emit(Progress(done, plan.total_steps, accumulated, learning_rate, clock.steps_per_second,
                      clock.eta_seconds(plan.total_steps - done),
                      accumulated_prior if config.with_prior_preservation else None, seconds))

    unread: tuple[int, LateValues, float] | None = None  # the last launched step, whose values are still on the GPU
    # What the loop last saved, by step: a stop right after a save does not write or draw it again.
    saved_state: tuple[int, Path] | None = None
    saved_checkpoint: tuple[int, dict[str, str]] | None = None
    sampled_step: int | None = None
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
        launched = (step, LateValues([*step_losses, *step_priors, trainer.lr_scheduler.get_last_lr()[0]]),
                    clock.step_done())
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
            with clock.paused():
                trainer.saver.wait()  # the last save's files are written before this one's copies are made
                emit(Stage(SAVING_STAGE, f"step {step}: " + ", ".join(
                    what for what, due in (("state", state_due), ("samples", samples_due or checkpoint_due),
                                           ("checkpoint", checkpoint_due)) if due)))
                if state_due:
                    saved_state = (step, checkpoints.save_state(step))
                if samples_due:
                    checkpoints.validate(step)
                if checkpoint_due:
                    saved_checkpoint = (step, checkpoints.save_checkpoint(step, final=False))
                if samples_due or checkpoint_due:
                    sampled_step = step
            if checkpoint_due and trainer.likeness is not None and trainer.likeness.should_stop():
                emit.log(f"likeness has not risen for {config.likeness_early_stop} checkpoints: stopping early "
                         f"at step {step} (likeness_early_stop).")
                break
    if unread is not None:
        report(unread)

    state = None
    if status == "stopped":
        state = saved_state[1] if saved_state is not None and saved_state[0] == step else None
        checkpoint = saved_checkpoint[1] if saved_checkpoint is not None and saved_checkpoint[0] == step else None
        to_save = [what for what, saved in (("a resumable state", state), ("a checkpoint", checkpoint))
                   if saved is None]
        emit(Stage("export", f"stopped at step {step}" + (f": saving {' and '.join(to_save)}" if to_save else "")))
        trainer.saver.wait()
        if state is None:
            state = checkpoints.save_state(step)
        outputs = checkpoint if checkpoint is not None else \
            checkpoints.save_checkpoint(step, final=False, samples=sampled_step != step)
        trainer.saver.wait()
    else:
        emit(Stage("export", "final model"))
        trainer.saver.wait()  # the last checkpoint's files are complete before the final export reads or prunes
        if config.checkpointing_steps and step > start_step:
            # a state of the last step too, so that a longer run continues from it (copied to the host now,
            # written while the final model is exported; the export frees the optimizer's memory after it)
            state = checkpoints.save_state(step)
        outputs = checkpoints.save_checkpoint(step, final=True)
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
