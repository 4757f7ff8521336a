"""Pictures from the jobs' models: ``POST /dreamcore/v1/generate`` and the standalone app's Generate panel.

    service = GenerateService(manager)
    status, body = service.handle({"job": "anna", "prompt": "portrait photo of sks person", "seed": 7})

The request names a model one of two ways: ``"job"`` (a job's final model, or ``"checkpoint": STEP`` for one
of its saved checkpoints) or ``"model"`` (a model file or diffusers folder on the server). The settings are
``dreamcore.generate.GenerationSettings``' fields: prompt, negative_prompt, seed (a number or "random"),
guidance_scale, num_inference_steps, sampler, width, height, batch_count. Images are written, numbered, into
the service's folder (``<jobs folder>/../generated`` by default) with their parameters in the WebUI's format.

Training comes first on the GPU: while a job is queued or running, a request is refused (409) and the loaded
model is released; a watcher releases it as soon as a job appears, whoever queued it.

Answers: 200 ``{"images": [{"path", "seed", "parameters"}], "model": path}``; 404 unknown job or
checkpoint; 409 a job is training; 422 every problem of the body at once. Error bodies are
``{"detail": {"message": ..., "problems": [...]}}``, as the job routes answer.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamcore.generate import (SETTING_NAMES, GeneratedImage, GenerateError, GenerationSettings, ModelSource,
                                PipelineCache, generate_images, settings_from_dict, shared_cache)
from dreamcore.grid import GridError, RunCheckpoint, run_models
from dreamcore.jobs.folder import JobFolder
from dreamcore.jobs.manager import JobManager, JobNotFoundError
from dreamcore.jobs.names import JobNameError

logger = logging.getLogger(__name__)

MODEL_KEYS = ("model", "job", "checkpoint")
GENERATE_KEYS = MODEL_KEYS + SETTING_NAMES
PROBLEMS_MESSAGE = "the request has problems; fix them and send it again"


class CheckpointNotFoundError(LookupError):
    """The job has no saved model of that step (or none yet)."""


class TrainingFirstError(RuntimeError):
    """A job is queued or running on the GPU; generating waits until it has ended."""


@dataclass(frozen=True)
class ModelChoice:
    """A model to offer: a job's checkpoint or final model, or a model file."""

    label: str          # "anna: final", "anna: step 500", "base/v1-5.safetensors"
    source: ModelSource
    job: str | None = None
    step: int | None = None


class GenerateService:
    """Generation for the jobs under one JobManager, sharing the process's pipeline cache."""

    def __init__(self, manager: JobManager, out_dir: str | Path | None = None, cache: PipelineCache | None = None,
                 allowed: Any = None, watch_seconds: float = 1.0):
        """``allowed``: where a ``"model"`` path may lie (an object with ``contains(path) -> bool``,
        ``folders`` and ``how_to_allow``, e.g. dreamcore.jobs.allowed.AllowedFolders); None: anywhere."""
        self.manager = manager
        self.out_dir = Path(out_dir) if out_dir is not None else manager.root.parent / "generated"
        self.cache = cache or shared_cache()
        self.allowed = allowed
        self.watch_seconds = watch_seconds
        self._watch: threading.Thread | None = None
        self._watch_lock = threading.Lock()

    # --- models -------------------------------------------------------------------------------------
    def job_checkpoints(self, name: str) -> list[RunCheckpoint]:
        """A job's saved models, step order, final last. Raises JobNotFoundError, CheckpointNotFoundError."""
        info = self.manager.get(name)
        try:
            return run_models(JobFolder(info.folder).output).checkpoints
        except GridError as error:
            raise CheckpointNotFoundError(f"job {name!r} has no saved model yet ({info.status}): {error}") from error

    def job_model(self, name: str, checkpoint: str | int = "final") -> ModelSource:
        """The job's final model, or its checkpoint of step ``checkpoint``."""
        saved = self.job_checkpoints(name)
        wanted = None if checkpoint == "final" else int(checkpoint)
        for entry in saved:
            if entry.step == wanted:
                return entry.source
        steps = ", ".join(entry.label for entry in saved)
        raise CheckpointNotFoundError(f"job {name!r} has no {'final model' if wanted is None else f'checkpoint of step {wanted}'}"
                                      f" (it has: {steps}); give one of those")

    def model_choices(self, model_folders: tuple[Path, ...] = ()) -> list[ModelChoice]:
        """Every job's saved models (newest job first, each job's final model first), then the model files in
        ``model_folders``."""
        choices = []
        for info in sorted(self.manager.list(), key=lambda info: info.created_at, reverse=True):
            try:
                saved = run_models(JobFolder(info.folder).output).checkpoints
            except GridError:
                continue  # nothing saved yet
            for entry in reversed(saved):
                choices.append(ModelChoice(f"{info.name}: {entry.label}", entry.source, info.name, entry.step))
        for folder in model_folders:
            if folder.is_dir():
                for path in sorted(folder.rglob("*")):
                    if path.suffix in (".safetensors", ".ckpt") and ".vae." not in path.name and path.is_file():
                        choices.append(ModelChoice(str(path.relative_to(folder)), ModelSource(path)))
        return choices

    def instance_prompt(self, name: str) -> str:
        """The prompt a job was trained to answer ("photo of sks person"); empty when it cannot be read."""
        from dreamcore.config import ConfigError, TrainConfig

        try:
            return TrainConfig.load(JobFolder(self.manager.get(name).folder).config).concepts()[0].instance_prompt
        except (ConfigError, OSError) as error:
            logger.warning("dreamcore: no instance prompt for job %s: %s", name, error)
            return ""

    # --- training first -----------------------------------------------------------------------------
    def training_jobs(self) -> list[str]:
        """The jobs queued or running now: while there are any, the GPU is theirs."""
        return [info.name for info in self.manager.list() if info.status in ("queued", "running")]

    def check_gpu_free(self) -> None:
        """Raise TrainingFirstError (after releasing the loaded model) when a job needs the GPU."""
        if self.cache.device == "cpu":
            return  # no GPU to share; the CPU is shared by time anyway
        training = self.training_jobs()
        if training:
            self.cache.release()
            raise TrainingFirstError(f"job {training[0]!r} is training on the GPU; generate once it has ended "
                                     "(training comes first: the model for pictures was unloaded to make room).")

    def _watch_for_jobs(self) -> None:
        """Release the loaded model when a job is queued, by this app or any other (CLI, REST, a second
        window), so the job's process finds the GPU memory free."""
        with self._watch_lock:
            if not self.cache.holds_gpu() or (self._watch is not None and self._watch.is_alive()):
                return
            self._watch = threading.Thread(target=self._release_when_training, name="dreamcore-generate-watch",
                                           daemon=True)
            self._watch.start()

    def _release_when_training(self) -> None:
        import time

        while self.cache.holds_gpu():
            training = self.training_jobs()
            if training:
                names = self.cache.release()
                logger.info("dreamcore: released %s from the GPU: job %s is training", ", ".join(names), training[0])
                return
            time.sleep(self.watch_seconds)

    # --- generating ---------------------------------------------------------------------------------
    def generate(self, source: ModelSource, settings: GenerationSettings) -> list[GeneratedImage]:
        """Images written into ``out_dir``. Raises TrainingFirstError, GenerateError or ModelLoadError."""
        self.check_gpu_free()
        images = generate_images(source, settings, out=self.out_dir, cache=self.cache)
        self._watch_for_jobs()
        return images

    def handle(self, body: Any) -> tuple[int, dict[str, Any]]:
        """Answer a parsed ``POST /generate`` body: (HTTP status, JSON body)."""
        from dreamcore.models import ModelLoadError

        if not isinstance(body, dict):
            return _refusal(422, "the body must be a JSON object of generation settings",
                            [f"got {type(body).__name__}"])
        problems = [f"unknown key {key!r}; the keys are {', '.join(GENERATE_KEYS)}"
                    for key in sorted(set(body) - set(GENERATE_KEYS))]
        problems += self._model_problems(body)
        settings = None
        try:
            settings = settings_from_dict({k: v for k, v in body.items() if k in SETTING_NAMES})
        except GenerateError as error:
            problems += error.problems
        if problems or settings is None:
            return _refusal(422, PROBLEMS_MESSAGE, problems)
        try:
            source = (ModelSource(Path(body["model"])) if "model" in body
                      else self.job_model(body["job"], body.get("checkpoint", "final")))
            images = self.generate(source, settings)
        except (JobNotFoundError, CheckpointNotFoundError) as error:
            return _refusal(404, str(error))
        except JobNameError as error:
            return _refusal(422, PROBLEMS_MESSAGE, [f"job: {error}"])
        except TrainingFirstError as error:
            return _refusal(409, str(error))
        except GenerateError as error:
            return _refusal(422, PROBLEMS_MESSAGE, error.problems)
        except ModelLoadError as error:
            return _refusal(422, PROBLEMS_MESSAGE, [f"model: {error}"])
        return 200, {"model": str(source.lora or source.path),
                     "images": [{"path": str(image.path), "seed": image.seed, "parameters": image.parameters}
                                for image in images]}

    def _model_problems(self, body: dict[str, Any]) -> list[str]:
        has_model, has_job = "model" in body, "job" in body
        if has_model == has_job:
            return ["model or job: give one of them: \"job\" (a job's name, with \"checkpoint\": a step to use one "
                    "of its checkpoints) or \"model\" (a model file or diffusers folder on the server)"]
        problems = []
        if has_model:
            model = body["model"]
            if not isinstance(model, str) or not model.strip():
                problems.append("model: must be the path of a model file or diffusers folder")
            elif self.allowed is not None and not self.allowed.contains(model):
                # The same words whether the path exists or not: the API does not tell what is on the disk.
                folders = ", ".join(str(folder) for folder in self.allowed.folders)
                problems.append(f"model: {model!r} is not inside a folder this server allows; give an absolute path "
                                f"inside {folders} (to allow another folder, {self.allowed.how_to_allow}).")
            if "checkpoint" in body:
                problems.append("checkpoint: only with \"job\" (a step of that job's saved checkpoints)")
        else:
            if not isinstance(body["job"], str) or not body["job"].strip():
                problems.append("job: must be a job's name")
            checkpoint = body.get("checkpoint", "final")
            if checkpoint != "final" and not (isinstance(checkpoint, int) and not isinstance(checkpoint, bool)
                                              and checkpoint >= 0):
                problems.append(f"checkpoint: {checkpoint!r} must be \"final\" or the step of a saved checkpoint "
                                "(a whole number)")
        return problems

    def release(self) -> list[str]:
        return self.cache.release()


def _refusal(status: int, message: str, problems: list[str] | None = None) -> tuple[int, dict[str, Any]]:
    return status, {"detail": {"message": message, "problems": problems or []}}

