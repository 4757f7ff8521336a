"""Pictures from a model, as the WebUI's txt2img makes them: prompt, negative prompt, seed, guidance scale,
steps, sampler, size and batch count.

Every PNG carries its settings in a ``parameters`` text chunk written the way AUTOMATIC1111 writes it, so the
WebUI's PNG Info reads it back (and "Send to txt2img" fills in the same settings), and no PNG is ever written
over another: names are numbered ``00000-<seed>.png``, ``00001-<seed>.png``, ... as in the WebUI.

A loaded model stays in a ``PipelineCache`` between calls (a model is gigabytes and loading it takes longer
than a picture); ``PipelineCache.release()`` hands its memory back, which training needs first.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from dreamcore.fileio import OutputWriteError

MAX_SEED = 2**32 - 1  # the WebUI's seed range
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_BATCH_COUNT = 100
SIZE_RANGE = (64, 2048)
PARAMETERS_CHUNK = "parameters"  # the PNG text chunk the WebUI's PNG Info reads


class GenerateError(ValueError):
    """The settings cannot make a picture; ``problems`` lists every one, each naming its field."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Sampler:
    """A WebUI sampler as a diffusers scheduler: the class, the options that make it that sampler, and the
    names the WebUI writes for it (``Sampler:`` and, from A1111 1.9 on, ``Schedule type:``)."""

    name: str
    scheduler_class: str
    options: tuple[tuple[str, Any], ...]
    webui_sampler: str
    schedule_type: str

    def scheduler(self, model_scheduler_config: Mapping[str, Any]) -> Any:
        """The sampler's scheduler over the model's noise schedule and prediction type."""
        import diffusers

        return getattr(diffusers, self.scheduler_class).from_config(model_scheduler_config, **dict(self.options))


# The WebUI's k-diffusion samplers step through sigmas spaced evenly in timestep from the last to the first
# ("Uniform", what "Automatic" picks for SD 1.x/2.x): diffusers' "linspace" spacing. Its Karras schedule
# spans the model's own sigma range, as use_karras_sigmas does. Its DDIM takes every (1000/steps)-th
# timestep from 1 up ("leading" with an offset of 1), deterministic (eta 0), as the original DDIM sampler.
SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("DPM++ 2M Karras", "DPMSolverMultistepScheduler",
            (("algorithm_type", "dpmsolver++"), ("solver_order", 2), ("use_karras_sigmas", True)),
            "DPM++ 2M", "Karras"),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", (("timestep_spacing", "linspace"),), "Euler a", "Automatic"),
    Sampler("DDIM", "DDIMScheduler",
            (("timestep_spacing", "leading"), ("steps_offset", 1), ("set_alpha_to_one", False),
             ("clip_sample", False)),
            "DDIM", "Automatic"),
)}
DEFAULT_SAMPLER = "DPM++ 2M Karras"


@dataclass(frozen=True)
class GenerationSettings:
    """What to draw and how. ``seed`` None draws a random seed (recorded in every image); image ``i`` of a
    batch uses ``seed + i``, as the WebUI's batch count does. ``width``/``height`` None: the model's size."""

    prompt: str
    negative_prompt: str = ""
    seed: int | None = None
    guidance_scale: float = 7.5
    num_inference_steps: int = 30
    sampler: str = DEFAULT_SAMPLER
    width: int | None = None
    height: int | None = None
    batch_count: int = 1

    def problems(self) -> list[str]:
        """Every problem of these settings, each naming its field and what to do; empty when they can run."""
        problems = []
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            problems.append("prompt: empty; describe the picture, e.g. 'portrait photo of sks person'.")
        if not isinstance(self.negative_prompt, str):
            problems.append("negative_prompt: must be text.")
        if self.seed is not None and not (_is_int(self.seed) and 0 <= self.seed <= MAX_SEED):
            problems.append(f"seed: {self.seed!r} must be a whole number from 0 to {MAX_SEED}, or random.")
        if not (_is_number(self.guidance_scale) and 0 <= self.guidance_scale <= MAX_GUIDANCE):
            problems.append(f"guidance_scale: {self.guidance_scale!r} must be a number from 0 to {MAX_GUIDANCE:g} "
                            "(7.5 is usual).")
        if not (_is_int(self.num_inference_steps) and 1 <= self.num_inference_steps <= MAX_STEPS):
            problems.append(f"num_inference_steps: {self.num_inference_steps!r} must be a whole number from 1 to "
                            f"{MAX_STEPS} (20-30 is usual).")
        if not isinstance(self.sampler, str) or self.sampler not in SAMPLERS:
            problems.append(f"sampler: {self.sampler!r} is not one of {', '.join(SAMPLERS)}.")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and SIZE_RANGE[0] <= value <= SIZE_RANGE[1]
                                          and value % 8 == 0):
                problems.append(f"{name}: {value!r} must be a multiple of 8 from {SIZE_RANGE[0]} to {SIZE_RANGE[1]} "
                                "pixels (or left out for the model's own size).")
        if not (_is_int(self.batch_count) and 1 <= self.batch_count <= MAX_BATCH_COUNT):
            problems.append(f"batch_count: {self.batch_count!r} must be a whole number from 1 to {MAX_BATCH_COUNT}.")
        return problems

    def check(self) -> None:
        problems = self.problems()
        if problems:
            raise GenerateError(problems)


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(GenerationSettings))


def settings_from_dict(values: Mapping[str, Any], source: str = "settings") -> GenerationSettings:
    """GenerationSettings from plain values (a REST body, a form): unknown keys, wrong types and bad values
    are all reported at once in one GenerateError. ``seed`` may be a number, "random", -1 or None."""
    problems = [f"{source}: unknown key {key!r}; the keys are {', '.join(SETTING_NAMES)}."
                for key in sorted(set(values) - set(SETTING_NAMES))]
    known = {key: value for key, value in values.items() if key in SETTING_NAMES}
    seed = known.get("seed")
    if seed in ("random", -1):
        known["seed"] = None
    elif isinstance(seed, str) and seed.strip().isdigit():
        known["seed"] = int(seed)
    settings = GenerationSettings(**{"prompt": "", **known})
    if "prompt" not in known:
        problems.append("prompt: missing; describe the picture, e.g. 'portrait photo of sks person'.")
    problems += [problem for problem in settings.problems()
                 if not ("prompt" not in known and problem.startswith("prompt:"))]
    if problems:
        raise GenerateError(problems)
    return settings


# --- the parameters text -----------------------------------------------------------------------------

def parameters_text(settings: GenerationSettings, seed: int, width: int, height: int, model_name: str,
                    model_hash: str | None = None, lora_name: str | None = None) -> str:
    """The settings of one image as the WebUI writes them: the prompt, ``Negative prompt: ...`` (when there is
    one), then one line of ``Key: value`` pairs. A value holding a comma, colon or line break is written as a
    JSON string, which the WebUI's parser reads back as it was. ``model_name`` and ``model_hash`` are the base
    model's; a LoRA drawn with it (``lora_name``, its file's name) is written into the prompt as the WebUI's
    ``<lora:name:1>``, so sending the text to txt2img draws with the base model and that LoRA again."""
    sampler = SAMPLERS[settings.sampler]
    fields: dict[str, Any] = {
        "Steps": settings.num_inference_steps,
        "Sampler": sampler.webui_sampler,
        "Schedule type": sampler.schedule_type,
        "CFG scale": f"{float(settings.guidance_scale):g}",
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
        "Model": model_name,
    }
    line = ", ".join(f"{key}: {_quoted(value)}" for key, value in fields.items() if value not in (None, ""))
    negative = f"\nNegative prompt: {settings.negative_prompt}" if settings.negative_prompt else ""
    prompt = settings.prompt
    if lora_name and f"<lora:{lora_name}:" not in prompt:
        prompt = f"{prompt} <lora:{lora_name}:1>" if prompt else f"<lora:{lora_name}:1>"
    return f"{prompt}{negative}\n{line}"


def _quoted(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


# --- models, loaded once ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSource:
    """A model to draw with: a diffusers folder or single file, and optionally a LoRA fused into it."""

    path: Path
    lora: Path | None = None
    label: str = ""  # how the base model is named in the parameters text; default: the file's name

    @property
    def name(self) -> str:
        """The base model's name, as the parameters text's ``Model``."""
        if self.label:
            return self.label
        return self.path.stem if self.path.is_file() else self.path.name

    @property
    def lora_name(self) -> str | None:
        """The LoRA's name as the WebUI's ``<lora:name:1>`` names it (its file's name), or None."""
        if self.lora is None:
            return None
        return self.lora.stem if self.lora.is_file() else self.lora.name

    @property
    def title(self) -> str:
        """Both names, for messages: "base + lora"."""
        return self.name if self.lora is None else f"{self.name} + {self.lora_name}"

    def key(self) -> tuple[Any, ...]:
        """Changes when a file is written again (a re-run's checkpoint), so the cache reloads it."""
        return tuple((str(p.resolve()), _mtime(p)) for p in (self.path, self.lora) if p is not None)


@dataclass
class LoadedModel:
    source: ModelSource
    pipeline: Any
    native_size: int
    model_hash: str | None
    device: str
    noise_schedule: Any  # the model's own scheduler config, which every sampler's scheduler is built over


class PipelineCache:
    """Loaded pipelines by model, the most recently used kept (one by default: a model is gigabytes).

    Models load as fp32 on the CPU, or in fp16 on a CUDA GPU (as the WebUI runs them). One generation runs
    at a time: ``use()`` holds the cache's lock while it draws, so ``release()`` waits for it."""

    def __init__(self, capacity: int = 1, device: str | None = None):
        if capacity < 1:
            raise ValueError("PipelineCache capacity must be at least 1")
        self.capacity = capacity
        self._device = device
        self._models: OrderedDict[tuple[Any, ...], LoadedModel] = OrderedDict()
        self._lock = threading.RLock()

    @property
    def device(self) -> str:
        if self._device is None:
            import torch

            self._device = "cuda" if torch.cuda.is_available() else "cpu"
        return self._device

    @contextmanager
    def use(self, source: ModelSource) -> Iterator[LoadedModel]:
        """The loaded model (loading it if needed), held for the caller alone until the block ends."""
        with self._lock:
            key = source.key()
            if key in self._models:
                self._models.move_to_end(key)
            else:
                while len(self._models) >= self.capacity:
                    self._models.popitem(last=False)
                    _free_memory()
                self._models[key] = _load(source, self.device)
            yield self._models[key]

    def loaded(self) -> list[ModelSource]:
        return [model.source for model in self._models.values()]

    def holds_gpu(self) -> bool:
        return bool(self._models) and self.device != "cpu"

    def release(self) -> list[str]:
        """Unload every model (after the generation running now, if any); returns their names."""
        with self._lock:
            names = [model.source.title for model in self._models.values()]
            self._models.clear()
            _free_memory()
        return names


_SHARED_CACHE: PipelineCache | None = None
_SHARED_LOCK = threading.Lock()


def shared_cache() -> PipelineCache:
    """The process's cache: one, because the GPU it fills is one (the app's panel, the REST route and the
    grid share it, and one release frees it for training)."""
    global _SHARED_CACHE
    with _SHARED_LOCK:
        if _SHARED_CACHE is None:
            _SHARED_CACHE = PipelineCache()
        return _SHARED_CACHE


def _load(source: ModelSource, device: str) -> LoadedModel:
    import torch

    from dreamcore.models import build_pipeline, load_base_model

    components = load_base_model(str(source.path))
    if source.lora is not None:
        from dreamcore.lora.kohya import LoraFormatError
        from dreamcore.lora.merge import apply_lora
        from dreamcore.models import ModelLoadError

        try:
            apply_lora(components, source.lora)
        except LoraFormatError as error:  # every caller reports a model that cannot be drawn from
            raise ModelLoadError(str(error)) from None
    pipeline = build_pipeline(components)
    # fp16 on a GPU, as the WebUI runs a model; the CPU keeps the fp32 it loaded (it has no fast fp16).
    pipeline.to(device, torch.float16) if device.startswith("cuda") else pipeline.to(device)
    native = components.unet.config.sample_size * pipeline.vae_scale_factor
    return LoadedModel(source, pipeline, native, _model_hash(source.path), device, components.scheduler.config)


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_HASHES: dict[tuple[str, int], str] = {}


def _model_hash(path: Path) -> str | None:
    """The WebUI's short model hash (the first 10 hex digits of the file's sha256), by which its "Send to
    txt2img" selects the checkpoint; None for a diffusers folder, which the WebUI does not load."""
    if not path.is_file():
        return None
    key = (str(path.resolve()), _mtime(path))
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()[:10]
    return _HASHES[key]


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


# --- drawing ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GeneratedImage:
    image: Any  # PIL.Image.Image, its "parameters" in image.info too
    seed: int
    parameters: str
    path: Path | None = None


def generate_images(source: ModelSource | str | Path, settings: GenerationSettings, *,
                    out: str | Path | None = None, cache: PipelineCache | None = None) -> list[GeneratedImage]:
    """Draw ``settings.batch_count`` images, image i from seed ``seed + i`` (one random seed when
    ``settings.seed`` is None), each with its parameters text; saved under ``out`` (numbered, never over
    another file) when it is given. Raises GenerateError (every problem at once) or ModelLoadError."""
    settings.check()
    source = source if isinstance(source, ModelSource) else ModelSource(Path(source))
    _check_exists(source)
    cache = cache or shared_cache()
    with cache.use(source) as model:
        return _draw_batch_count(model, settings, out)


def _draw_batch_count(model: LoadedModel, settings: GenerationSettings, out: str | Path | None) -> list[GeneratedImage]:
    seed = settings.seed if settings.seed is not None else secrets.randbelow(MAX_SEED + 1)
    width, height = settings.width or model.native_size, settings.height or model.native_size
    results = []
    for index in range(settings.batch_count):
        image = draw(model, [settings.prompt], settings, seed + index, width, height)[0]
        text = parameters_text(settings, seed + index, width, height, model.source.name, model.model_hash,
                               model.source.lora_name)
        image.info[PARAMETERS_CHUNK] = text
        path = save_png(image, Path(out), seed + index, text) if out is not None else None
        results.append(GeneratedImage(image, seed + index, text, path))
    return results


def draw(model: LoadedModel, prompts: list[str], settings: GenerationSettings, seed: int, width: int,
         height: int) -> list[Any]:
    """One image per prompt, every one from the same ``seed`` (a generator each, on the CPU, so the starting
    noise is the same on any device and at any batch size), in one batch."""
    import torch

    pipeline = model.pipeline
    pipeline.scheduler = SAMPLERS[settings.sampler].scheduler(model.noise_schedule)
    generators = [torch.Generator(device="cpu").manual_seed(seed) for _ in prompts]
    negative = [settings.negative_prompt] * len(prompts) if settings.negative_prompt else None
    with torch.no_grad():
        return list(pipeline(prompt=prompts, negative_prompt=negative, guidance_scale=settings.guidance_scale,
                             num_inference_steps=settings.num_inference_steps, generator=generators,
                             height=height, width=width).images)


def _check_exists(source: ModelSource) -> None:
    from dreamcore.models import ModelLoadError

    for what, path in (("model", source.path), ("LoRA", source.lora)):
        if path is not None and not path.exists():
            raise ModelLoadError(f"{path}: no such {what} file or folder; give a .safetensors/.ckpt file or a "
                                 "diffusers folder")


# --- files -----------------------------------------------------------------------------------------

NUMBERED_NAME = re.compile(r"^(\d{5,})-")


def save_png(image: Any, folder: Path, seed: int, parameters: str) -> Path:
    """Write ``image`` as ``<folder>/NNNNN-<seed>.png`` with the next free number, its parameters in the PNG
    text chunk the WebUI reads. The file appears complete and never replaces another: it is written under a
    temporary name, then linked to its final name, which fails if that name exists (then the next is taken)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_CHUNK, parameters)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Named as fileio names its temporaries (name, then the writer's pid), so a cleanup after a crash finds it.
        handle, temp_name = tempfile.mkstemp(prefix=f".tmp-{seed}.png.{os.getpid()}.", dir=folder)
        os.close(handle)
    except OSError as error:
        raise OutputWriteError(error.errno, f"could not write images into {folder}: {error.strerror}; choose a "
                                            "folder you can write to") from error
    temp = Path(temp_name)
    try:
        image.save(temp, format="PNG", pnginfo=info)
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temp, 0o644)
        number = next_number(folder)
        while True:
            path = folder / f"{number:05d}-{seed}.png"
            try:
                _claim(temp, path)
                return path
            except FileExistsError:
                number += 1  # another writer took this number meanwhile
    except OSError as error:
        raise OutputWriteError(error.errno, f"could not write an image into {folder}: {error.strerror}") from error
    finally:
        temp.unlink(missing_ok=True)


def next_number(folder: Path) -> int:
    numbers = [int(match.group(1)) for p in folder.iterdir() if (match := NUMBERED_NAME.match(p.name))]
    return max(numbers, default=-1) + 1


def _claim(temp: Path, path: Path) -> None:
    """Give the finished file ``temp`` the name ``path`` unless that name exists (FileExistsError)."""
    try:
        os.link(temp, path)
        return
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
    # A filesystem without hard links (FAT, exFAT): reserve the name, then move the finished file onto it.
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    os.replace(temp, path)


# --- the one-call form ------------------------------------------------------------------------------

def generate(model: str | Path | Any, prompt: str, *, negative_prompt: str = "", seed: int | None = 1337,
             guidance_scale: float = 7.5, num_inference_steps: int = 30, num_images: int = 1,
             resolution: int | None = None, width: int | None = None, height: int | None = None,
             sampler: str = DEFAULT_SAMPLER, out: str | Path | None = "generated",
             cache: PipelineCache | None = None) -> list:
    """Generate ``num_images`` images (image i from seed ``seed + i``; ``seed=None``: a random one).

    ``model`` is a diffusers folder, a single file, or loaded ModelComponents. ``resolution`` sets width and
    height at once. Returns the written paths, or the PIL images (parameters in ``image.info``) when ``out``
    is None."""
    from dreamcore.components import ModelComponents

    settings = GenerationSettings(prompt=prompt, negative_prompt=negative_prompt, seed=seed,
                                  guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                                  sampler=sampler, width=width or resolution, height=height or resolution,
                                  batch_count=num_images)
    if isinstance(model, ModelComponents):
        settings.check()
        images = _generate_from_components(model, settings, out)
    else:
        images = generate_images(model, settings, out=out, cache=cache)
    return [image.path if out is not None else image.image for image in images]


def _generate_from_components(components: Any, settings: GenerationSettings,
                              out: str | Path | None) -> list[GeneratedImage]:
    """Modules already in memory (a library caller's, e.g. just trained): drawn as they are, not cached."""
    import torch

    from dreamcore.models import build_pipeline

    pipeline = build_pipeline(components).to("cuda" if torch.cuda.is_available() else "cpu")
    native = components.unet.config.sample_size * pipeline.vae_scale_factor
    model = LoadedModel(ModelSource(Path("model")), pipeline, native, None, str(pipeline.device),
                        components.scheduler.config)
    return _draw_batch_count(model, settings, out)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
