"""A checkpoint grid: every saved checkpoint of a run (columns, in step order, the final model last) against a
few prompts (rows), all from one seed, labelled, in one picture - the WebUI's X/Y plot of checkpoints against
prompts, made without a WebUI, to pick the checkpoint to keep by eye.

Each column's prompts are drawn in one batch from the same seed; a cell is the picture ``generate`` makes of
that prompt at that seed (one generator per prompt, so batching does not change the starting noise). With the
faces extra installed, each column is scored for likeness to the run's photos and the score is written under it.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from dreamcore.generate import GenerationSettings, ModelSource, PipelineCache, draw, shared_cache

# Rows besides the instance and class prompts: one scene and one style, where an overfitted checkpoint shows
# it (it keeps drawing the training photos' background and look). "{}" is the instance prompt.
DEFAULT_EXTRA_PROMPTS = ("{}, walking in a busy city street at night", "{}, oil painting")
STEP_IN_NAME = re.compile(r"-step-(\d+)$")


class GridError(ValueError):
    """The folder or settings cannot make a grid; the message names the file and what to do."""


@dataclass(frozen=True)
class RunCheckpoint:
    label: str            # "step 500", "final"
    step: int | None      # None for the final model
    source: ModelSource


@dataclass(frozen=True)
class RunModels:
    """What a run's output folder holds to compare: its checkpoints and the prompts it was trained with."""

    output_dir: Path
    checkpoints: list[RunCheckpoint]
    instance_prompt: str
    class_prompt: str
    photos_dir: Path | None
    seed: int
    resolution: int


@dataclass
class Grid:
    image: Any                          # PIL.Image.Image
    checkpoints: list[RunCheckpoint]
    prompts: list[str]
    cells: list[list[Any]]              # cells[column][row]: the PIL image of that checkpoint and prompt
    likeness: list[float | None] = field(default_factory=list)  # per column; empty when not scored
    note: str = ""                      # why likeness is not shown, when it is not


def run_models(output_dir: str | Path) -> RunModels:
    """The checkpoints of the run in ``output_dir`` (training's ``output_dir``; a job's ``<job>/output``), in
    step order, the final model last. Raises GridError when the folder is not a run's or holds no model."""
    from dreamcore.config import CONFIG_FILE_NAME, ConfigError, TrainConfig

    output_dir = Path(output_dir)
    config_path = output_dir / CONFIG_FILE_NAME
    if not config_path.is_file():
        raise GridError(f"{output_dir} is not the output folder of a training run (no {CONFIG_FILE_NAME} in it); "
                        "give the output_dir of a run (a job's is <jobs folder>/<job>/output)")
    try:
        config = TrainConfig.load(config_path)
        concept = config.concepts()[0]
    except ConfigError as error:
        raise GridError(f"{config_path}: cannot read the run's settings: {error}") from error
    model_name = config.model_name or output_dir.resolve().name
    base = Path(config.pretrained_model_name_or_path)

    def source(path: Path) -> ModelSource:
        # A LoRA run saves adapters only: each is drawn fused into the run's base model.
        return ModelSource(base, lora=path) if config.use_lora else ModelSource(path)

    steps = []
    for path in (output_dir / "checkpoints").glob(f"{model_name}-step-*.safetensors"):
        match = STEP_IN_NAME.search(path.stem)
        if match:
            steps.append((int(match.group(1)), path))
    checkpoints = [RunCheckpoint(f"step {step}", step, source(path)) for step, path in sorted(steps)]
    final = output_dir / f"{model_name}.safetensors"
    if final.is_file():
        checkpoints.append(RunCheckpoint("final", None, source(final)))
    elif (output_dir / "diffusers" / "model_index.json").is_file():
        checkpoints.append(RunCheckpoint("final", None, ModelSource(output_dir / "diffusers")))
    if not checkpoints:
        raise GridError(f"{output_dir} holds no saved model yet (no checkpoints/{model_name}-step-*.safetensors, "
                        f"no {model_name}.safetensors); wait for the first save (save_interval) or the end of training")
    photos = Path(concept.instance_data_dir) if concept.instance_data_dir else None
    return RunModels(output_dir, checkpoints, concept.instance_prompt, concept.class_prompt, photos, config.seed,
                     config.resolution)


def default_prompts(instance_prompt: str, class_prompt: str) -> list[str]:
    """The instance prompt, a scene, a style, and the class prompt (to show drift), without repeats."""
    return expand_prompts([instance_prompt, *DEFAULT_EXTRA_PROMPTS, class_prompt], instance_prompt)


def expand_prompts(prompts: Sequence[str], instance_prompt: str) -> list[str]:
    """``{}`` in a prompt stands for the instance prompt; empty prompts and repeats are left out."""
    expanded = []
    for prompt in prompts:
        text = prompt.replace("{}", instance_prompt).strip()
        if text and text not in expanded:
            expanded.append(text)
    return expanded


def render_grid(checkpoints: Sequence[RunCheckpoint], prompts: Sequence[str], settings: GenerationSettings,
                cache: PipelineCache | None = None, class_prompt: str = "", photos_dir: Path | None = None,
                progress: Callable[[str], None] = lambda message: None) -> Grid:
    """Draw every prompt with every checkpoint from ``settings.seed`` and lay them out, labelled.

    ``settings`` gives the seed, steps, guidance, sampler, negative prompt and size (its prompt and batch count
    are not used). The row of ``class_prompt``, if among ``prompts``, counts as class drift for likeness."""
    settings.check()
    if settings.seed is None:
        raise GridError("seed: a grid needs one fixed seed for every cell, not a random one per cell")
    if not checkpoints or not prompts:
        raise GridError("a grid needs at least one checkpoint and one prompt")
    cache = cache or shared_cache()
    reference, note = _likeness_reference(photos_dir)
    cells, likeness = [], []
    for checkpoint in checkpoints:
        progress(f"drawing {checkpoint.label} ({checkpoint.source.title}) ...")
        with cache.use(checkpoint.source) as model:
            width, height = settings.width or model.native_size, settings.height or model.native_size
            images = draw(model, list(prompts), settings, settings.seed, width, height)
        cells.append(images)
        if reference is not None:
            likeness.append(_likeness(images, prompts, class_prompt, reference))
    image = compose(cells, [c.label for c in checkpoints], list(prompts), likeness, caption(settings))
    return Grid(image, list(checkpoints), list(prompts), cells, likeness, note)


def caption(settings: GenerationSettings) -> str:
    negative = f", negative: {settings.negative_prompt}" if settings.negative_prompt else ""
    return (f"seed {settings.seed}, {settings.num_inference_steps} steps, {settings.sampler}, "
            f"CFG {settings.guidance_scale:g}{negative}")


def compose(cells: list[list[Any]], column_labels: list[str], row_labels: list[str], scores: list[float | None],
            title: str) -> Any:
    """The cells on a white sheet: column labels above, prompts on the left, scores (if any) below."""
    from PIL import Image, ImageDraw

    cell_w, cell_h = cells[0][0].size
    font = _font(max(12, cell_h // 20))
    line = font.size + 4 if hasattr(font, "size") else 16
    margin = line // 2
    label_w = max(cell_w, 160)
    chars = max(12, int(label_w / (line * 0.55)))
    wrapped = [textwrap.wrap(label, chars)[:max(1, (cell_h - margin) // line)] for label in row_labels]
    top = 2 * line + margin
    bottom = line + margin if scores else margin
    sheet = Image.new("RGB", (label_w + len(cells) * cell_w + margin, top + len(row_labels) * cell_h + bottom),
                      "white")
    pen = ImageDraw.Draw(sheet)
    pen.text((margin, margin // 2), title, fill="black", font=font)
    for column, images in enumerate(cells):
        x = label_w + column * cell_w
        pen.text((x + margin, line + margin // 2), column_labels[column], fill="black", font=font)
        for row, image in enumerate(images):
            sheet.paste(image.convert("RGB"), (x, top + row * cell_h))
        if scores and scores[column] is not None:
            pen.text((x + margin, top + len(row_labels) * cell_h + margin // 2), f"likeness {scores[column]:.2f}",
                     fill="black", font=font)
    for row, lines in enumerate(wrapped):
        for index, text in enumerate(lines):
            pen.text((margin, top + row * cell_h + margin + index * line), text, fill="black", font=font)
    return sheet


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _likeness_reference(photos_dir: Path | None) -> tuple[Any, str]:
    """The run's photos' faces, or None and why likeness is left out (the faces extra, or the photos)."""
    from dreamcore.likeness import scoring_available

    available, message = scoring_available()
    if not available:
        return None, f"likeness not scored: {message}"
    if photos_dir is None or not photos_dir.is_dir():
        return None, f"likeness not scored: the run's photo folder {photos_dir} is not there"
    from dreamcore.images import scan_images
    from dreamcore.likeness.scores import LikenessError, embed_photos

    photos, _skipped = scan_images(photos_dir)
    try:
        return embed_photos(photos), ""
    except LikenessError as error:
        return None, f"likeness not scored: {error}"


def _likeness(images: list[Any], prompts: Sequence[str], class_prompt: str, reference: Any) -> float | None:
    from dreamcore.likeness.scores import score_loaded_images

    instance = {prompt: [image] for prompt, image in zip(prompts, images) if prompt != class_prompt}
    if not instance:
        return None
    return score_loaded_images(instance, [], reference).likeness
