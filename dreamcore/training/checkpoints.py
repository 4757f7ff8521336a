"""What a run saves: resumable states, samples, checkpoints and the final model, each written atomically
(checkpoints and states by a background writer while training goes on)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreamcore.config import CONFIG_FILE_NAME, RUN_REPORT_KEY, TrainConfig
from dreamcore.events import CheckpointSaved, Emitter, SamplesSaved
from dreamcore.families import get_family
from dreamcore.lora.export import export_training_lora
from dreamcore.training.sampling import generate_samples, write_samples
from dreamcore.training.setup import TrainingError
from dreamcore.training.state import (STATE_DIR_NAME, ResumeError, TrainingProgress, load_training_state,
                                      prune_states, state_folder, training_state_writer)

if TYPE_CHECKING:
    from dreamcore.training.trainer import Trainer


class Checkpoints:
    """Saving and restoring for one trainer: ``run.py`` calls these at the steps the config names."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.config = trainer.config
        self.plan = trainer.plan
        self.emit = trainer.emit
        self._warned_about_disk = False

    def save_state(self, step: int) -> Path:
        """Write the resumable state of ``step`` as state/step-N (in the background); returns that folder."""
        folder = state_folder(self.plan.output_dir, step)
        optimizer = self.trainer.raw_optimizer()
        sharded = self.trainer.averaging_inside_backward and self.config.shard_optimizer  # each process: its parts only
        if sharded:
            optimizer.collect_state_on_main()
        if self.trainer.accelerator.is_main_process:
            scaler = self.trainer.accelerator.scaler.state_dict() if self.trainer.accelerator.scaler is not None else None
            write = training_state_writer(
                folder, TrainingProgress(step, self.plan.total_steps, self.config.seed),
                {name: self.trainer.accelerator.unwrap_model(m) for name, m in self.trainer.wrapped.items()},
                optimizer, self.trainer.lr_scheduler, scaler, self.trainer.noise_generator,
                json.dumps(self.config.to_dict(), indent=2) + "\n", self.trainer.staging.copier("state"))
            self.trainer.saver.submit(write, lambda: self.report_state(step, folder))
        if sharded:
            optimizer.keep_own_parts_only()
        self.trainer.accelerator.wait_for_everyone()
        return folder

    def report_state(self, step: int, folder: Path) -> None:
        """A state is complete: say so, and keep at most checkpoints_total_limit of them."""
        self.emit(CheckpointSaved(step, str(folder), "state"))
        limit = self.config.checkpoints_total_limit
        if limit is not None:
            for old in prune_states(self.plan.output_dir, limit, up_to_step=step):
                self.emit.log(f"removed {STATE_DIR_NAME}/{old.name} (checkpoints_total_limit={limit})")
        elif not self._warned_about_disk:
            self._warn_if_states_will_not_fit(step, folder)

    def _warn_if_states_will_not_fit(self, step: int, folder: Path) -> None:
        """Once the first state is on disk its size is known: say so now, not at a full disk hours later, when
        the states still to come (every checkpointing_steps and the last step, all kept) will not fit."""
        every, total = self.config.checkpointing_steps, self.plan.total_steps
        if not every or step >= total:
            return
        to_come = len(range(step + every, total, every)) + 1  # the numbered ones, and the last step's
        size = sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
        free = shutil.disk_usage(self.plan.output_dir).free
        if to_come * size > free:
            self._warned_about_disk = True
            self.emit.log(f"each resumable state is {size / 2**30:.1f} GiB and {to_come} more will be written "
                          f"(every {every} steps and at the end, all kept: {to_come * size / 2**30:.1f} GiB), but "
                          f"{free / 2**30:.1f} GiB is free on the disk of {self.plan.output_dir}; set "
                          "--checkpoints_total_limit 1 to keep only the newest, or a larger --checkpointing_steps.",
                          "warning")

    def restore_state(self, folder: Path) -> int:
        """Load a saved state into the trainer; returns its step."""
        optimizer = self.trainer.raw_optimizer()
        try:
            progress, scaler_state = load_training_state(
                folder, {name: self.trainer.accelerator.unwrap_model(m) for name, m in self.trainer.wrapped.items()}, optimizer,
                self.trainer.lr_scheduler, self.trainer.noise_generator)
        except ResumeError as error:  # a state that does not fit this run: a message, not a traceback
            raise TrainingError(str(error)) from None
        if scaler_state is not None and self.trainer.accelerator.scaler is not None:
            self.trainer.accelerator.scaler.load_state_dict(scaler_state)
        self.emit.log(f"resumed from {folder} at step {progress.step}")
        return progress.step

    def make_samples(self, pipeline: Any, step: int) -> Path | None:
        """The samples of ``step`` into samples/step-N; returns that folder in the main process (None elsewhere).
        Each process draws every N-th sample; the main process gathers and writes them."""
        config, accelerator = self.config, self.trainer.accelerator
        prompt = config.save_sample_prompt or self.plan.concepts[0].concept.instance_prompt
        with self.trainer.autocast():
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
        sample_folder = self.sample_folder(step)
        paths = write_samples(samples, sample_folder, config.seed)
        self.emit(SamplesSaved(step, tuple(str(p) for p in paths), prompt))
        return sample_folder

    def sample_folder(self, step: int) -> Path:
        return self.plan.output_dir / "samples" / f"step-{step:06d}"

    def validate(self, step: int) -> None:
        """Samples only, no checkpoint (validation_steps)."""
        with self.trainer.sampling() as (_, pipeline):
            self.make_samples(pipeline, step)
        self.trainer.accelerator.wait_for_everyone()

    def save_checkpoint(self, step: int, final: bool, samples: bool = True) -> dict[str, str]:
        """Samples plus the single-file model (and, at the end, the diffusers folder). ``samples`` False: this
        step's samples are made already (validation_steps), and are not drawn again."""
        from dreamcore.convert import save_single_file
        from dreamcore.convert.single_file import single_file_writer
        from dreamcore.models import save_diffusers_folder

        config, plan = self.config, self.plan
        outputs: dict[str, str] = {}
        if final:  # no step follows: the optimizer's moments (4-8 bytes a weight) make room for the samples
            self.trainer.release_step_memory()
            self.trainer.check_weights_across_processes(step)
        with self.trainer.sampling() as (components, pipeline):
            if samples:
                sample_folder = self.make_samples(pipeline, step)
            else:
                sample_folder = self.sample_folder(step) if self.trainer.accelerator.is_main_process else None
            if sample_folder is not None:  # the main process
                prompt = config.save_sample_prompt or plan.concepts[0].concept.instance_prompt
                outputs["samples"] = str(sample_folder)
                if self.trainer.likeness is not None:
                    with self.trainer.autocast():
                        self.trainer.likeness.evaluate(pipeline, step)
                    self.emit.log("likeness per checkpoint:\n" + self.trainer.likeness.table())
                    outputs["likeness"] = str(self.trainer.likeness.out_dir)
                metadata = self.export_metadata(step)
                user_metadata = {"description": f"dreamcore DreamBooth of '{prompt}', {step} steps",
                                 "activation text": ", ".join(c.concept.instance_prompt for c in plan.concepts),
                                 "sd version": get_family(components.family).webui_version,
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
                                               user_metadata=user_metadata,
                                               copy_to_host=self.trainer.staging.copier("checkpoint"))
                    self.trainer.saver.submit(write, lambda: self.report_checkpoint(step, path, final))
                if not config.use_lora:
                    outputs["single_file"] = str(path)
        self.trainer.accelerator.wait_for_everyone()
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
                         "dreamcore.family": self.trainer.models.family, "dreamcore.seed": str(config.seed)})
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


def export_best_checkpoint(trainer: "Trainer", last_step: int, emit: Emitter) -> dict[str, str]:
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

