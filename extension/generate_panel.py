"""The standalone app's Generate panel: pictures from any job's final model or saved checkpoint, or a model
file, without a WebUI; and a job's checkpoint grid ("Compare checkpoints").

In a WebUI nothing here is shown: txt2img is the host's. The panel drives ``dreamcore.jobs.generate_api``'s
GenerateService, so it answers as the REST route does and gives the GPU up to training in the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamcore.generate import DEFAULT_SAMPLER, SAMPLERS, GenerationSettings, ModelSource, settings_from_dict
from dreamcore.jobs.generate_api import GenerateService

SEED_RANDOM = "random"
PANEL_TITLE = "Generate"


@dataclass(frozen=True)
class PanelImages:
    gallery: list[tuple[str, str]]   # (path, its parameters text) for gr.Gallery
    parameters: str                  # every image's parameters, one block each
    message: str
    last_seed: str                   # the first image's seed, for "Reuse seed"


class GeneratePanel:
    """What the panel's controls do, without gradio (tests call these as the buttons do)."""

    def __init__(self, service: GenerateService, model_folder: Path, lora_folder: Path | None = None):
        """``lora_folder``: LoRA files inside ``model_folder`` that the list leaves out (each cannot draw on its
        own; its job's entry draws with it on its base model)."""
        self.service = service
        self.model_folder = Path(model_folder)
        self.lora_folder = Path(lora_folder) if lora_folder is not None else None

    def choices(self) -> list[str]:
        return [choice.label for choice in self.service.model_choices((self.model_folder,))
                if self.lora_folder is None or choice.job or not choice.source.path.is_relative_to(self.lora_folder)]

    def prompt_for(self, model: str) -> str:
        """The instance prompt of the job the model comes from; "" for a model file."""
        choice = next((c for c in self.service.model_choices() if c.label == model), None)
        return self.service.instance_prompt(choice.job) if choice is not None and choice.job else ""

    def source_for(self, model: str) -> ModelSource:
        """The model a label names, or the path typed in. Raises FileNotFoundError naming it."""
        model = (model or "").strip()
        for choice in self.service.model_choices((self.model_folder,)):
            if choice.label == model:
                return choice.source
        path = Path(model).expanduser()
        if model and path.exists():
            return ModelSource(path)
        raise FileNotFoundError(f"Model: {model!r} is neither a listed model nor a model file or diffusers folder "
                                "on this computer; pick one from the list or type its full path.")

    def generate(self, model: str, prompt: str, negative_prompt: str, seed: str, guidance_scale: float,
                 steps: float, sampler: str, width: float, height: float, batch_count: float) -> PanelImages:
        from dreamcore.generate import GenerateError
        from dreamcore.jobs.generate_api import TrainingFirstError
        from dreamcore.models import ModelLoadError

        values = {"prompt": prompt, "negative_prompt": negative_prompt or "", "seed": _seed(seed),
                  "guidance_scale": float(guidance_scale), "num_inference_steps": _whole(steps), "sampler": sampler,
                  "width": _whole(width) or None, "height": _whole(height) or None,
                  "batch_count": _whole(batch_count)}
        try:
            settings = settings_from_dict(values)
            images = self.service.generate(self.source_for(model), settings)
        except GenerateError as error:
            return PanelImages([], "", "**Please fix:**\n" + "\n".join(f"- {p}" for p in error.problems), seed)
        except (FileNotFoundError, ModelLoadError, TrainingFirstError) as error:
            return PanelImages([], "", f"**{error}**", seed)
        gallery = [(str(image.path), image.parameters) for image in images]
        text = "\n\n".join(image.parameters for image in images)
        where = images[0].path.parent if images else self.service.out_dir
        return PanelImages(gallery, text, f"{len(images)} image(s) saved in `{where}`.", str(images[0].seed))

    def compare(self, job: str, hint: str = "Pick the column you like in the Model list above.") -> tuple[str | None, str]:
        """The job's checkpoint grid at its seed: (PNG path, message). Every saved model against the instance
        prompt, a scene, a style and the class prompt."""
        from dreamcore.generate import GenerateError, parameters_text, save_png
        from dreamcore.grid import GridError, default_prompts, render_grid, run_models
        from dreamcore.jobs.folder import JobFolder
        from dreamcore.jobs.generate_api import TrainingFirstError
        from dreamcore.jobs.manager import JobNotFoundError
        from dreamcore.models import ModelLoadError

        if not job:
            return None, "**Pick a job to compare its checkpoints.**"
        try:
            self.service.check_gpu_free()
            models = run_models(JobFolder(self.service.manager.get(job).folder).output)
            prompts = default_prompts(models.instance_prompt, models.class_prompt)
            settings = GenerationSettings(prompts[0], seed=models.seed, width=models.resolution,
                                          height=models.resolution)
            grid = render_grid(models.checkpoints, prompts, settings, cache=self.service.cache,
                               class_prompt=models.class_prompt, photos_dir=models.photos_dir)
            first = models.checkpoints[0].source
            text = parameters_text(settings, models.seed, models.resolution, models.resolution, first.name,
                                   lora_name=first.lora_name)
            path = save_png(grid.image, models.output_dir / "grids", models.seed, text)
        except (GridError, GenerateError, ModelLoadError, TrainingFirstError, JobNotFoundError) as error:
            return None, f"**{error}**"
        scores = ", ".join(f"{c.label} {s:.2f}" for c, s in zip(grid.checkpoints, grid.likeness) if s is not None)
        note = f" Likeness: {scores}." if scores else (f" ({grid.note})" if grid.note else "")
        return str(path), (f"{len(grid.checkpoints)} checkpoints x {len(prompts)} prompts at seed {models.seed}, "
                           f"saved as `{path}`.{note} {hint}")

    def jobs(self) -> list[str]:
        return [info.name for info in sorted(self.service.manager.list(), key=lambda i: i.created_at, reverse=True)]


def _seed(text: Any) -> Any:
    """"random", empty or -1: a random seed; a whole number: itself; anything else is passed on to be refused."""
    value = str(text if text is not None else "").strip()
    if value.lower() in ("", SEED_RANDOM, "-1"):
        return SEED_RANDOM
    return int(value) if value.isdigit() else value


def _whole(value: Any) -> Any:
    """A slider's or number box's float as the whole number it shows; other values are left to be refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# --- gradio ----------------------------------------------------------------------------------------------

def with_generate_panel(train_blocks: Any, service: GenerateService, model_folder: Path,
                        train_title: str = "Train", lora_folder: Path | None = None) -> tuple[Any, GeneratePanel]:
    """The app's page: the training tab and the Generate panel, each on a tab of its own."""
    import gradio as gr

    panel = GeneratePanel(service, model_folder, lora_folder)
    with gr.Blocks(analytics_enabled=False, title=getattr(train_blocks, "title", None)) as page:
        with gr.Tab(train_title):
            train_blocks.render()
        with gr.Tab(PANEL_TITLE):
            build_panel(panel, page)
    return page, panel


def build_panel(panel: GeneratePanel, page: Any) -> None:
    """The panel's controls, inside ``page`` (the gr.Blocks being built, whose load refreshes the lists)."""
    import gradio as gr

    with gr.Row():
        with gr.Column():
            with gr.Row():
                model = gr.Dropdown(choices=[], label="Model (a job's final model or checkpoint, or a model file path)",
                                    allow_custom_value=True, elem_id="dreamcore_generate_model")
                refresh = gr.Button("Refresh models")
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="dreamcore_generate_prompt")
            negative = gr.Textbox(label="Negative prompt", lines=1)
            with gr.Row():
                seed = gr.Textbox(label="Seed (a number, or random)", value=SEED_RANDOM,
                                  elem_id="dreamcore_generate_seed")
                random_seed = gr.Button("Random seed")
                reuse_seed = gr.Button("Reuse seed")
            with gr.Row():
                sampler = gr.Dropdown(choices=list(SAMPLERS), value=DEFAULT_SAMPLER, label="Sampler")
                steps = gr.Slider(1, 150, value=30, step=1, label="Sampling steps")
                guidance = gr.Slider(0, 30, value=7.5, step=0.5, label="CFG scale")
            with gr.Row():
                width = gr.Number(value=0, precision=0, label="Width (0: the model's size)")
                height = gr.Number(value=0, precision=0, label="Height (0: the model's size)")
                batch_count = gr.Slider(1, 16, value=1, step=1, label="Batch count")
            generate = gr.Button("Generate", variant="primary", elem_id="dreamcore_generate_button")
            with gr.Accordion("Compare checkpoints: every saved model of a job against a few prompts", open=False):
                with gr.Row():
                    job = gr.Dropdown(choices=[], label="Job")
                    compare = gr.Button("Compare checkpoints")
                grid_message = gr.Markdown()
                grid_image = gr.Image(label="Checkpoint grid", type="filepath", interactive=False)
        with gr.Column():
            message = gr.Markdown(elem_id="dreamcore_generate_message")
            gallery = gr.Gallery(label="Images", columns=2, height=480, elem_id="dreamcore_generate_gallery")
            parameters = gr.Textbox(label="Parameters", lines=6, interactive=False,
                                    elem_id="dreamcore_generate_parameters")
            last_seed = gr.State(SEED_RANDOM)

    def refresh_choices() -> tuple[Any, Any, Any]:
        # The newest job's final model first: after a job finishes, Refresh puts it (and its prompt) in.
        labels = panel.choices()
        chosen = labels[0] if labels else None
        return (gr.update(choices=labels, value=chosen), gr.update(value=panel.prompt_for(chosen) if chosen else ""),
                gr.update(choices=panel.jobs()))

    def run(*values: Any) -> tuple[Any, ...]:
        result = panel.generate(*values)
        return result.gallery, result.parameters, result.message, result.last_seed

    page.load(refresh_choices, inputs=[], outputs=[model, prompt, job])
    refresh.click(refresh_choices, inputs=[], outputs=[model, prompt, job])
    # Picking a job's model puts its instance prompt in; a model file leaves the prompt as typed.
    model.input(lambda label: panel.prompt_for(label) or gr.update(), inputs=[model], outputs=[prompt])
    random_seed.click(lambda: SEED_RANDOM, inputs=[], outputs=[seed])
    reuse_seed.click(lambda previous: previous, inputs=[last_seed], outputs=[seed])
    generate.click(run, inputs=[model, prompt, negative, seed, guidance, steps, sampler, width, height, batch_count],
                   outputs=[gallery, parameters, message, last_seed])
    compare.click(panel.compare, inputs=[job], outputs=[grid_image, grid_message])
