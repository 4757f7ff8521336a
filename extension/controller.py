"""What the tab's buttons do, without gradio: start, watch, cancel, publish, use in txt2img.

Training runs through ``dreamcore.jobs.JobManager`` in a child process, so a crash or an out-of-memory
error in training cannot take the WebUI down. The WebUI's model leaves the GPU when a job is started and
comes back once no job is queued or running.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from dreamcore.config import TrainConfig

from .form import TabForm, build_config
from .host import Host
from .publish import PublishedModel, publish_checkpoint, publish_lora

logger = logging.getLogger("dreamcore.webui")

FINAL_STATUSES = ("completed", "failed", "cancelled")


FINAL_MODEL = "final"  # how dreamcore.grid labels a job's final model among its saved ones


@dataclass(frozen=True)
class UseInTxt2img:
    title: str    # the checkpoint's title in the WebUI's list, now loaded
    prompt: str   # a prompt that calls the subject
    warning: str = ""  # for a LoRA: why the loaded checkpoint cannot use it, when it cannot


class TrainingController:
    def __init__(self, host: Host, output_root: Callable[[], Path], poll_seconds: float = 1.0):
        """``output_root`` is read on each use, so a change in the WebUI's Settings applies at once."""
        self.host = host
        self.output_root = output_root
        self.poll_seconds = poll_seconds
        self._managers: dict[Path, Any] = {}
        self._lock = threading.Lock()
        self._published: dict[str, PublishedModel] = {}
        self._generation: Any = None  # the checkpoint grid's drawer, made at the first Compare checkpoints
        self._gpu_watch: threading.Thread | None = None

    # --- jobs ------------------------------------------------------------------------------------
    @property
    def jobs_dir(self) -> Path:
        return Path(self.output_root()) / "jobs"

    @property
    def uploads_dir(self) -> Path:
        return Path(self.output_root()) / "uploads"

    def manager(self) -> Any:
        from dreamcore.jobs import JobManager  # imports the runner only when a job is touched

        root = self.jobs_dir.resolve()
        with self._lock:
            if root not in self._managers:
                self._managers[root] = JobManager(root)
            return self._managers[root]

    def job_names(self) -> list[str]:
        """The jobs' names, newest first."""
        return self.jobs_overview()[0]

    def jobs_overview(self) -> tuple[list[str], str | None]:
        """The jobs' names, newest first, and the one worth showing: the running job, else the newest."""
        if not self.jobs_dir.is_dir():  # no job yet: do not create the folder just to list it
            return [], None
        infos = sorted(self.manager().list(), key=lambda info: info.created_at, reverse=True)
        running = next((info.name for info in infos if info.status == "running"), None)
        return [info.name for info in infos], running or (infos[0].name if infos else None)

    def build_config(self, form: TabForm) -> TrainConfig:
        return build_config(form, self.host.checkpoint_path, self.uploads_dir)

    def start(self, form: TabForm) -> tuple[Any, str]:
        """Queue a job; returns its JobInfo and a note on the WebUI's model. Raises ConfigError/JobError."""
        config = self.build_config(form)
        info = self.manager().submit(config, form.job_name.strip())
        note = self.host.free_gpu()
        self._restore_gpu_when_idle()
        return info, note

    def prepare_size(self, resolution: int | None, base_model: str, preset: str) -> tuple[int, str]:
        """The side of the prepared photos and why: the size training will use, so that it takes them as they
        are. The resolution under Advanced when the person changed it from the preset's (as Start records the
        choice), else the resolution the base model's family trains at (read from its files); without a base
        model chosen, the preset's. Raises ModelLoadError when the base model cannot be read."""
        from dreamcore.presets import preset_names, preset_overrides

        starting = (preset_overrides(preset) if preset in preset_names() else {}).get("resolution",
                                                                                       TrainConfig().resolution)
        if resolution is not None and resolution != starting:
            return resolution, "the resolution set under Advanced"
        if not base_model:
            return starting, "the preset's resolution (choose the base model to crop at its family's)"
        checkpoint = self.host.checkpoint_path(base_model)
        if checkpoint is None:
            raise FileNotFoundError(f"Base model: {base_model!r} is not in the WebUI's checkpoint list any more; "
                                    "press the refresh button and choose again.")
        from dreamcore.prepare.sizing import crop_size

        size = crop_size(None, None, str(checkpoint))
        return size.pixels, size.reason

    def prepare_photos(self, photos_dir: str, uploaded: list[str], job_name: str, size: int, framing: str,
                       token: str, class_word: str = "person", size_reason: str = "") -> Any:
        """Crop the photos into ``<output>/prepared/<job>`` (dreamcore.prepare): around the face for a person,
        around the salient region for any other class; returns its PrepareReport. Raises ImportError when
        dreamcore.prepare is absent, its errors otherwise."""
        from dreamcore.jobs import check_job_name
        from dreamcore.prepare import prepare_photos, subject_from_prompts

        from .form import class_prompt, instance_prompt

        name = check_job_name(job_name.strip())
        source = Path(photos_dir.strip()) if photos_dir.strip() else None
        if uploaded:
            from .form import collect_uploads

            source = collect_uploads(uploaded, self.uploads_dir / name)
        if source is None:
            raise FileNotFoundError("Photos: give a folder of photos, or upload them, before preparing.")
        word = class_word.strip() or "person"
        subject = subject_from_prompts(instance_prompt(token.strip(), word), class_prompt(word))
        return prepare_photos(source, Path(self.output_root()) / "prepared" / name, size=int(size),
                              framing=framing, token=token.strip() or None, subject=subject,
                              size_reason=size_reason)

    def job(self, name: str) -> Any:
        return self.manager().get(name)

    def cancel(self, name: str) -> Any:
        return self.manager().cancel(name)

    def resume(self, name: str) -> Any:
        info = self.manager().resume(name)
        self.host.free_gpu()
        self._restore_gpu_when_idle()
        return info

    def watch(self, name: str, timeout_seconds: float | None = None) -> Iterator[Any]:
        """Yield the job's info every poll until it ends (the last one is final); publish a finished model."""
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        while True:
            info = self.job(name)
            if info.status in FINAL_STATUSES:
                if info.status == "completed":
                    self.publish(info)
                yield info
                return
            yield info
            if deadline is not None and time.monotonic() > deadline:
                return
            time.sleep(self.poll_seconds)

    # --- results ---------------------------------------------------------------------------------
    def publish(self, info: Any, checkpoint: str = FINAL_MODEL) -> PublishedModel:
        """Copy a completed job's model, or its checkpoint labelled ``checkpoint`` ("step 500"), into the WebUI's
        checkpoint (or Lora) folder, once, and refresh the list."""
        key = info.name if checkpoint == FINAL_MODEL else f"{info.name}@{checkpoint}"
        if key in self._published and self._published[key].path.is_file():
            return self._published[key]
        config = TrainConfig.load(Path(info.folder) / "train_config.json")
        if checkpoint == FINAL_MODEL:
            name, lora, exported = info.name, info.outputs.get("lora"), info.outputs.get("single_file")
        else:
            chosen = self._saved_model(info, checkpoint)
            name = f"{info.name}-step-{chosen.step}"
            lora = chosen.source.lora
            exported = None if lora else chosen.source.path
        if lora:
            # A LoRA goes to the WebUI's Lora folder and is called from the prompt, not selected as a model.
            published = publish_lora(lora, self.host.lora_dir(), name, config.instance_prompt)
            self._published[key] = published
            return published
        if not exported:
            raise FileNotFoundError(f"Job {info.name} finished without a single-file model (outputs: "
                                    f"{', '.join(info.outputs) or 'none'}); see its log in {info.folder}.")
        published = publish_checkpoint(exported, self.host.checkpoint_dir(), name, config.instance_prompt)
        self.host.refresh_checkpoints()
        self._published[key] = published
        return published

    def published(self, name: str) -> PublishedModel | None:
        """The model this controller published for a job, if any."""
        return self._published.get(name)

    def saved_models(self, name: str) -> list[str]:
        """A job's saved models by label: its checkpoints in step order ("step 500"), then "final"."""
        return [saved.label for saved in self._saved_models(self.job(name))]

    def compare_checkpoints(self, name: str) -> tuple[str | None, str]:
        """The job's checkpoint grid (every saved model against a few prompts at the run's seed): (PNG path,
        message), as the standalone app's Compare checkpoints draws it."""
        from dreamcore.jobs.generate_api import GenerateService

        from .generate_panel import GeneratePanel

        if self._generation is None:
            self._generation = GeneratePanel(GenerateService(self.manager()), self.host.checkpoint_dir())
        return self._generation.compare(name, hint="Pick the one to keep under *Checkpoint to use* and press "
                                                   "*Use this checkpoint in txt2img*.")

    def use_in_txt2img(self, name: str, checkpoint: str = FINAL_MODEL) -> UseInTxt2img:
        """Publish the job's model (or its checkpoint labelled ``checkpoint``) and have the WebUI load it.
        Raises CheckpointNotLoaded (from the host) when the WebUI did not load it: then nothing may be put in
        txt2img."""
        info = self.job(name)
        if info.status != "completed":
            raise RuntimeError(f"Job {name} is {info.status}; only a completed job's model can be used.")
        published = self.publish(info, checkpoint)
        if published.prompt_snippet:  # a LoRA: the base model stays, the prompt calls the LoRA
            return UseInTxt2img("", f"{published.prompt_snippet}, portrait", self._lora_base_warning(published.path))
        title = self.host.select_checkpoint(published.path)
        return UseInTxt2img(title, f"portrait {published.activation_text}")

    def _saved_models(self, info: Any) -> list[Any]:
        from dreamcore.grid import GridError, run_models
        from dreamcore.jobs.folder import JobFolder

        try:
            return run_models(JobFolder(info.folder).output).checkpoints
        except GridError as error:
            raise LookupError(f"Job {info.name} has no saved model yet: {error}") from error

    def _saved_model(self, info: Any, label: str) -> Any:
        saved = self._saved_models(info)
        for model in saved:
            if model.label == label:
                return model
        raise LookupError(f"Job {info.name} has no saved model {label!r}; it has: "
                          f"{', '.join(model.label for model in saved)}.")

    def _lora_base_warning(self, lora: Path) -> str:
        """What is wrong with using the LoRA at ``lora`` on the WebUI's loaded checkpoint (an SDXL LoRA needs an
        SDXL checkpoint, an SD1 LoRA an SD1 one); empty when they fit or when either says nothing."""
        from dreamcore.convert.errors import ModelLoadError
        from dreamcore.families.registry import get_family
        from dreamcore.lora.files import lora_family
        from dreamcore.models import base_model_family

        wanted = lora_family(lora)
        title = self.host.loaded_checkpoint()
        if wanted is None or title is None:
            return ""
        checkpoint = self.host.checkpoint_path(title) or title
        try:
            loaded = base_model_family(checkpoint)
        except ModelLoadError as error:
            return f"The WebUI's loaded checkpoint {title} could not be read ({error}); this LoRA needs a " \
                   f"{get_family(wanted).label} checkpoint."
        if loaded.same_weights_as(get_family(wanted)):
            return ""
        return (f"This LoRA is for {get_family(wanted).label} models, but the WebUI has {title} loaded, a "
                f"{loaded.label} checkpoint: the LoRA would do nothing there. Select a {get_family(wanted).label} "
                "checkpoint in the WebUI's checkpoint list first.")

    # --- the WebUI's model -----------------------------------------------------------------------
    def _restore_gpu_when_idle(self) -> None:
        if self._gpu_watch is not None and self._gpu_watch.is_alive():
            return
        self._gpu_watch = threading.Thread(target=self._wait_then_restore, name="dreamcore-gpu-restore",
                                           daemon=True)
        self._gpu_watch.start()

    def _wait_then_restore(self) -> None:
        while any(info.status not in FINAL_STATUSES for info in self.manager().list()):
            time.sleep(self.poll_seconds)
        note = self.host.restore_gpu()
        if note:
            logger.info("dreamcore: %s", note)
