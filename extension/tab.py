"""The "DreamBooth" tab: gradio components and the handlers wired to them.

Only what gradio 3.41 (A1111), 3.43 (SD.Next), 4.40 (Forge) and the newest release share is used:
Blocks/Row/Column/Tab/Accordion, Textbox/Number/Checkbox/Dropdown/File/Gallery/HTML/Markdown/Button,
``gr.update`` and generator handlers. The loss plot is SVG in an HTML component. The handlers are plain
methods of ``TabHandlers`` that take and return plain values, so tests call exactly what the buttons call.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
from pathlib import Path
from typing import Any, Iterator

from dreamcore.config import ConfigError, field_type
from dreamcore.presets import preset_names, preset_overrides

from .controller import FINAL_MODEL, FINAL_STATUSES, TrainingController
from .form import (MAIN_FIELDS, OPTIONAL_SWITCH, TabForm, advanced_fields, advanced_groups, default_ui_value,
                   is_optional_switch, ui_value, uses_text_box)
from .host import CheckpointNotLoaded
from .views import loss_plot_svg, progress_html

logger = logging.getLogger("dreamcore.webui")

TAB_TITLE = "DreamBooth"
TAB_ELEM_ID = "dreamcore_tab"
FORM_INPUTS = ("base_model", "photos_dir", "uploads", "token", "class_word", "job_name", "preset")
# javascript/dreamcore.js defines the function inside a WebUI; the standalone app has no txt2img page.
USE_IN_TXT2IMG_JS = ("(prompt, title) => { if (typeof dreamcoreUseInTxt2img === 'function') "
                     "{ return dreamcoreUseInTxt2img(prompt, title); } return []; }")
# What a watching handler yields, in this order.
WATCH_OUTPUTS = ("message", "progress", "loss_plot", "samples", "log", "job")


def uploaded_paths(files: Any) -> list[str]:
    """gr.File(file_count="multiple") gives tempfile objects with ``.name`` (3.x) or path strings (4.x+)."""
    if not files:
        return []
    return [file if isinstance(file, str) else getattr(file, "path", None) or file.name for file in files]


class TabHandlers:
    """Everything the tab's buttons do. Each method returns the values of its outputs, in order."""

    def __init__(self, controller: TrainingController, default_preset: str):
        self.controller = controller
        self.default_preset = default_preset
        self.advanced = advanced_fields()

    # --- form ------------------------------------------------------------------------------------
    def form_from_values(self, values: list[Any]) -> TabForm:
        main = dict(zip(FORM_INPUTS, values[:len(FORM_INPUTS)]))
        advanced_values = values[len(FORM_INPUTS):]
        if len(advanced_values) != len(self.advanced):
            raise ValueError(f"the tab sent {len(advanced_values)} advanced values for {len(self.advanced)} fields")
        return TabForm(
            base_model=main["base_model"] or "", photos_dir=main["photos_dir"] or "",
            uploaded_photos=uploaded_paths(main["uploads"]), token=main["token"] or "",
            class_word=main["class_word"] or "", job_name=main["job_name"] or "",
            advanced={f.name: value for f, value in zip(self.advanced, advanced_values)},
            preset=main["preset"] or "")

    def preset_values(self, name: str) -> list[Any]:
        """The advanced controls' values for a preset: defaults, then the preset's fields."""
        overrides = preset_overrides(name)
        return [ui_value(f, overrides[f.name]) if f.name in overrides else default_ui_value(f)
                for f in self.advanced]

    def refresh_models(self) -> list[str]:
        self.controller.host.refresh_checkpoints()
        return self.controller.host.checkpoint_choices()

    def base_model_choices(self) -> tuple[list[str], str | None]:
        """The checkpoint list and the base model to start with: the WebUI's loaded checkpoint, else the
        only one listed, else none (the person chooses)."""
        host = self.controller.host
        choices = host.checkpoint_choices()
        loaded = host.loaded_checkpoint()
        if loaded in choices:
            return choices, loaded
        return choices, choices[0] if len(choices) == 1 else None

    def preset_for_model(self, base_model: str, preset: str) -> str:
        """The preset to show once a base model is chosen: its family's own (SDXL LoRA for SDXL, Portrait for
        SD1/SD2) while the preset shown is another family's starting one; a preset the person picked is kept.
        A model that cannot be read keeps the preset too: Start names the problem."""
        from dreamcore.models import ModelLoadError
        from dreamcore.presets import FAMILY_DEFAULT_PRESETS, PORTRAIT_PRESET, default_preset

        checkpoint = self.controller.host.checkpoint_path(base_model) if base_model else None
        if checkpoint is None or preset not in {PORTRAIT_PRESET, *FAMILY_DEFAULT_PRESETS.values()}:
            return preset
        from dreamcore.models import base_model_family

        try:
            family = base_model_family(str(checkpoint))
        except (ModelLoadError, OSError, ValueError) as error:
            logger.info("dreamcore: the preset stays %s: %s", preset, error)
            return preset
        return default_preset(family.name)

    # --- training --------------------------------------------------------------------------------
    def start(self, *values: Any) -> Iterator[tuple[Any, ...]]:
        """Start button: queue the job, then follow it until it ends (yields WATCH_OUTPUTS)."""
        from dreamcore.jobs import JobError

        form = self.form_from_values(list(values))
        try:
            info, note = self.controller.start(form)
        except (ConfigError, JobError, ValueError, LookupError, OSError) as error:
            # Bad settings, a taken job name, an unwritable folder: shown where the person looks.
            yield (_problem_markdown(error), "", "", [], "", "")
            return
        yield from self.watch(info.name, first_message=note)

    def watch(self, name: str, first_message: str = "") -> Iterator[tuple[Any, ...]]:
        """Follow a job (also after a page reload): progress, loss plot, samples, log; publish when done."""
        name = (name or "").strip()
        if not name:
            yield ("Choose a job to watch.", "", "", [], "", "")
            return
        message = first_message
        try:
            for info in self.controller.watch(name):
                if info.status in FINAL_STATUSES:
                    message = _final_message(info, self.controller)
                yield (message, _progress(info), loss_plot_svg(info.losses), _gallery(info),
                       "\n".join(info.log_tail), info.name)
        except (LookupError, OSError, ConfigError) as error:
            yield (_problem_markdown(error), "", "", [], "", name)

    def follow_shown_job(self) -> Iterator[tuple[Any, ...]]:
        """On each page load (a reload too): the running job followed, else the newest shown as it ended; the
        panel stays empty while there is no job."""
        _names, current = self.jobs_overview()
        if current is None:
            yield ("", "", "", [], "", "")
            return
        yield from self.watch(current)

    def prepare(self, photos_dir: str, uploads: Any, token: str, job_name: str, size: Any,
                framing: str, class_word: str = "person", base_model: str = "",
                preset: str = "") -> tuple[str, list[tuple[str, str]], str]:
        """"Prepare photos": square crops (around the face for a person, the salient region otherwise), their
        preview and the report. The crops are as large as training will take them: the resolution under
        Advanced when changed from the preset's, else the base model's family's. Returns (report markdown,
        preview gallery, photo folder to train from: the prepared one, or the old one on error)."""
        from dreamcore.images import ImageLoadError

        try:
            pixels, why = self.controller.prepare_size(int(size) if size else None, base_model or "", preset or "")
            report = self.controller.prepare_photos(photos_dir or "", uploaded_paths(uploads), job_name or "",
                                                    pixels, framing, token or "", class_word or "person",
                                                    size_reason=why)
        except ImportError as error:
            return (f"**Photo preparation is not available here:** {error}. Training still works on photos "
                    "you crop yourself (square, the face filling about a third of the width).", [], photos_dir)
        except (ValueError, OSError, ImageLoadError, RuntimeError) as error:
            return _problem_markdown(error), [], photos_dir
        return _prepare_markdown(report), _prepare_gallery(report), str(report.out_dir)

    def check_token(self, token: str) -> str:
        """"Check token": is the trigger word one rare CLIP token ("ukj" is two: uk + j)?"""
        try:
            from dreamcore.prepare import check_token
        except ImportError as error:
            return f"The token check is not available here: {error}"
        try:
            result = check_token(token or "")
        except ValueError as error:
            return _problem_markdown(error)
        suggestions = f" Single rare tokens: {', '.join(f'`{s}`' for s in result.suggestions)}." \
            if result.suggestions and not result.ok else ""
        return ("OK: " if result.ok else "Consider another token: ") + result.message + "." + suggestions

    def resume(self, name: str) -> Iterator[tuple[Any, ...]]:
        from dreamcore.jobs import JobError

        try:
            info = self.controller.resume((name or "").strip())
        except (JobError, LookupError, ValueError, OSError) as error:
            yield (_problem_markdown(error), "", "", [], "", name)
            return
        yield from self.watch(info.name, first_message=f"Resuming {info.name}.")

    def cancel(self, name: str) -> str:
        name = (name or "").strip()
        if not name:
            return "Choose the job to cancel."
        from dreamcore.jobs import JobError

        try:
            info = self.controller.cancel(name)
        except (JobError, LookupError) as error:  # no such job, or it has already ended
            return _problem_markdown(error)
        return f"Cancelling {info.name}: it stops at the next step and keeps a state you can resume."

    def use_in_txt2img(self, name: str, checkpoint: str | None = FINAL_MODEL) -> tuple[str, str, str]:
        """Have the WebUI load the job's model (or its saved checkpoint labelled ``checkpoint``, e.g. "step 500")
        for txt2img; returns (message, prompt, checkpoint title) for the page. Unless the WebUI has loaded it,
        prompt and title are empty and the page leaves txt2img alone."""
        try:
            result = self.controller.use_in_txt2img((name or "").strip(), checkpoint or FINAL_MODEL)
        except CheckpointNotLoaded as error:
            return f"**Not selected:** {error}", "", ""
        except (LookupError, OSError, RuntimeError, ConfigError) as error:
            return _problem_markdown(error), "", ""
        if not result.title:  # a LoRA: nothing to select, the prompt calls it
            if result.warning:
                return (f"**Base model does not fit:** {result.warning} Then use the prompt `{result.prompt}`",
                        result.prompt, "")
            return (f"The LoRA is in the WebUI's Lora folder; keep your base model and use the prompt "
                    f"`{result.prompt}`", result.prompt, "")
        return (f"The WebUI has loaded **{result.title}** for txt2img. Prompt: `{result.prompt}`", result.prompt,
                result.title)

    def compare_checkpoints(self, name: str) -> tuple[str | None, str, list[str]]:
        """The job's checkpoint grid: (PNG path, message, the saved models' labels to choose from)."""
        name = (name or "").strip()
        if not name:
            return None, "**Pick a job to compare its checkpoints.**", []
        try:
            labels = self.controller.saved_models(name)
        except (LookupError, OSError, ConfigError) as error:
            return None, _problem_markdown(error), []
        path, message = self.controller.compare_checkpoints(name)
        return path, message, labels

    def job_choices(self) -> list[str]:
        return self.controller.job_names()

    def jobs_overview(self) -> tuple[list[str], str | None]:
        """The job list and the job to show: the running one, else the newest."""
        return self.controller.jobs_overview()


def framing_choices() -> list[str]:
    """dreamcore.prepare's framings (portrait = the guide's head and shoulders); empty if it cannot load."""
    try:
        from dreamcore.prepare.framing import FRAMINGS
    except ImportError as error:
        logger.warning("dreamcore: photo preparation unavailable (%s)", error)
        return []
    return list(FRAMINGS)


def _prepare_markdown(report: Any) -> str:
    lines = [f"**{len(report.kept)} of {len(report.photos)} photos kept** in `{report.out_dir}` "
             f"(suggested max_train_steps: {report.suggested_max_train_steps}). Training will use them."]
    if report.size_reason:
        lines.append(f"- size: {report.size} px, {report.size_reason}")
    if report.token_check is not None and not report.token_check.ok:
        lines.append(f"- token: {report.token_check.message}")
    lines += [f"- {warning}" for warning in report.warnings]
    lines += [f"- rejected {photo.source.name}: {photo.verdict}" for photo in report.rejected]
    return "\n".join(lines)


def _prepare_gallery(report: Any) -> list[tuple[str, str]]:
    items = [(str(photo.output), f"{photo.source.name}: {photo.verdict}") for photo in report.kept
             if photo.output is not None]
    if report.contact_sheet_path is not None:
        items.append((str(report.contact_sheet_path), "contact sheet: every photo, kept and rejected"))
    return items


def _progress(info: Any) -> str:
    return progress_html(info.name, info.status, info.step, info.total_steps, info.steps_per_second,
                         info.eta_seconds, info.loss, getattr(info, "stage", ""))


def _gallery(info: Any) -> list[tuple[str, str]]:
    items = []
    for step, paths in info.samples:
        items.extend((path, f"step {step}") for path in paths if Path(path).is_file())
    plot = _likeness_file(info, "likeness.png")
    if plot is not None:
        items.append((str(plot), "likeness, class drift and variety per checkpoint"))
    return items


def _likeness_file(info: Any, name: str) -> Path | None:
    """A file of the job's likeness report (score_likeness), if the run wrote one."""
    folder = info.outputs.get("likeness") if isinstance(info.outputs, dict) else None
    path = Path(folder) / name if folder else None
    return path if path is not None and path.is_file() else None


def likeness_status() -> str:
    """For the Likeness settings: whether scoring can run here, and how to enable it if not."""
    from dreamcore.likeness import scoring_available

    available, message = scoring_available()
    if available:
        return "Likeness scoring is available: turn on *score_likeness* to score each saved checkpoint."
    return f"**Likeness scoring is not available here.** {message}"


def _final_message(info: Any, controller: TrainingController) -> str:
    """What the job's end means and what to do next, naming only buttons this page shows (the standalone app
    has no txt2img: its Generate tab draws from the model)."""
    if info.status == "completed":
        published = controller.published(info.name)
        where = f" and copied to `{published.path}`" if published else ""
        table = _likeness_file(info, "table.txt")
        scores = f"\n\nLikeness per checkpoint:\n```\n{table.read_text(encoding='utf-8')}\n```" if table else ""
        call = f"`{published.activation_text if published else 'its instance prompt'}`"
        if controller.host.flavor == "standalone":
            use = (f"Draw from it in the *Generate* tab (choose it under *Model*; press *Refresh models* if it is "
                   f"not listed yet); call the subject with {call}.")
        else:
            use = f"Press *Use in txt2img* to select it; call the subject with {call}."
        return f"**{info.name} finished**{where}. {use}{scores}"
    if info.status == "cancelled":
        return (f"**{info.name} was cancelled.** Its state is saved: with the job chosen under *Job*, press "
                "*Resume* to continue it.")
    return f"**{info.name} failed:** {info.error}\n\n{info.advice}"


def _problem_markdown(error: BaseException) -> str:
    problems = getattr(error, "problems", None)
    if problems:
        return "**Please fix:**\n" + "\n".join(f"- {problem}" for problem in problems)
    return f"**{error}**"


# --- gradio ----------------------------------------------------------------------------------------------

def base_model_label() -> str:
    """The base model list's label, naming every family dreamcore trains (SD1.x / SD2.x / SDXL checkpoint)."""
    from dreamcore.families.registry import FAMILIES

    labels = list(dict.fromkeys(family.label.split()[0] for family in FAMILIES.values()))
    return f"Base model ({' / '.join(labels)} checkpoint)"


def build_tab(controller: TrainingController, default_preset: str, notice: str = "") -> tuple[Any, TabHandlers]:
    """The tab's gr.Blocks and the handlers wired into it."""
    import gradio as gr

    handlers = TabHandlers(controller, default_preset)
    js_keyword = "_js" if int(gr.__version__.split(".")[0]) < 4 else "js"
    with gr.Blocks(analytics_enabled=False) as blocks:
        if notice:
            gr.Markdown(notice)
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    # Standalone (newest gradio only) also takes a typed path; the WebUIs offer their list.
                    custom = {"allow_custom_value": True} if controller.host.flavor == "standalone" else {}
                    model_choices, model = handlers.base_model_choices()
                    base_model = gr.Dropdown(choices=model_choices, value=model, label=base_model_label(),
                                             elem_id="dreamcore_base_model", **custom)
                    refresh = gr.Button("Refresh list")
                photos_dir = gr.Textbox(label="Photos: a folder of 13-20 photos of the subject")
                uploads = gr.File(file_count="multiple", file_types=["image"], label="... or upload the photos")
                with gr.Accordion("Prepare photos: square crops around the face, with a report", open=False):
                    with gr.Row():
                        framings = framing_choices()
                        framing = gr.Dropdown(choices=framings, value=framings[0] if framings else None,
                                              label="Framing")
                        prepare = gr.Button("Prepare and preview")
                    prepare_report = gr.Markdown()
                    prepare_preview = gr.Gallery(label="Prepared photos", columns=5, height=240)
                with gr.Row():
                    token = gr.Textbox(label="Token (a rare word that becomes the subject)", value="sks")
                    class_word = gr.Textbox(label="Class", value="person")
                    check = gr.Button("Check token")
                token_report = gr.Markdown()
                job_name = gr.Textbox(label="Model name (also the job's name)", placeholder="anna-sd15")
                preset = gr.Dropdown(choices=preset_names(), value=default_preset, label="Preset")
                advanced_controls = []
                with gr.Accordion("Advanced: every training setting", open=False):
                    gr.Markdown(f"Set by the controls above: {', '.join(sorted(MAIN_FIELDS))}.")
                    preset_values = dict(zip((f.name for f in handlers.advanced),
                                             handlers.preset_values(default_preset)))
                    for group, fields in advanced_groups().items():
                        with gr.Tab(group):
                            if group == "Likeness":
                                gr.Markdown(likeness_status())
                            for f in fields:
                                advanced_controls.append(_control(gr, f, preset_values[f.name]))
                with gr.Row():
                    start = gr.Button("Start training", variant="primary")
                    cancel = gr.Button("Cancel")
                    resume = gr.Button("Resume")
            with gr.Column():
                message = gr.Markdown()
                progress = gr.HTML()
                loss_plot = gr.HTML()
                samples = gr.Gallery(label="Samples per saved step", columns=4, height=360)
                log = gr.Textbox(label="Log", lines=10, max_lines=20)
                with gr.Row():
                    job_names, current_job = handlers.jobs_overview()
                    job = gr.Dropdown(choices=job_names, value=current_job, label="Job")
                    refresh_jobs = gr.Button("Refresh jobs")
                    watch = gr.Button("Watch")
                # The standalone app has no txt2img: its models are listed in the notice above instead.
                use = gr.Button("Use in txt2img", variant="primary",
                                visible=controller.host.flavor != "standalone")
                prompt_out = gr.Textbox(visible=False)
                title_out = gr.Textbox(visible=False)
                # In a WebUI: choose among a job's saved checkpoints by eye (the standalone app has this in its
                # Generate tab).
                with gr.Accordion("Compare checkpoints: every saved model of the job against a few prompts",
                                  open=False, visible=controller.host.flavor != "standalone"):
                    compare = gr.Button("Compare checkpoints")
                    grid_message = gr.Markdown()
                    grid_image = gr.Image(label="Checkpoint grid", type="filepath", interactive=False)
                    with gr.Row():
                        keep = gr.Dropdown(choices=[], label="Checkpoint to use")
                        use_saved = gr.Button("Use this checkpoint in txt2img")

        form_inputs = [base_model, photos_dir, uploads, token, class_word, job_name, preset, *advanced_controls]
        watch_outputs = [message, progress, loss_plot, samples, log, job]

        def with_job_choices(updates: Iterator[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
            # The job list gains the new job: a Dropdown value outside its choices is dropped in gradio 4+.
            for outputs in updates:
                yield (*outputs[:-1], gr.update(choices=handlers.job_choices(), value=outputs[-1] or None))

        def start_and_follow(*values: Any) -> Iterator[tuple[Any, ...]]:
            yield from with_job_choices(handlers.start(*values))

        def follow(name: str) -> Iterator[tuple[Any, ...]]:
            yield from with_job_choices(handlers.watch(name))

        def resume_and_follow(name: str) -> Iterator[tuple[Any, ...]]:
            yield from with_job_choices(handlers.resume(name))

        def on_page_load() -> tuple[Any, Any]:
            # The tab is built once, at WebUI start (often before the WebUI has loaded its model); each page
            # load shows the model and jobs as they are now.
            model_choices, model = handlers.base_model_choices()
            job_names, current_job = handlers.jobs_overview()
            return (gr.update(choices=model_choices, value=model),
                    gr.update(choices=job_names, value=current_job))

        def follow_on_load() -> Iterator[tuple[Any, ...]]:
            yield from with_job_choices(handlers.follow_shown_job())

        # After a reload the page shows the running job (else the newest) as the Watch button would. Followed
        # for as long as the page is open, so in gradio 4+ it must not hold the event's one worker others wait on.
        unlimited = {"concurrency_limit": None} if int(gr.__version__.split(".")[0]) >= 4 else {}
        blocks.load(on_page_load, inputs=[], outputs=[base_model, job]).then(
            follow_on_load, inputs=[], outputs=watch_outputs, **unlimited)
        refresh.click(lambda: gr.update(choices=handlers.refresh_models()), inputs=[], outputs=[base_model])
        preset.change(lambda name: handlers.preset_values(name), inputs=[preset], outputs=advanced_controls)

        def preset_for_model(model: str, shown: str) -> Any:
            # An unchanged preset is left alone, so its change event does not reset the advanced settings.
            chosen = handlers.preset_for_model(model, shown)
            return gr.update() if chosen == shown else gr.update(value=chosen)

        base_model.change(preset_for_model, inputs=[base_model, preset], outputs=[preset])
        start.click(start_and_follow, inputs=form_inputs, outputs=watch_outputs)
        watch.click(follow, inputs=[job], outputs=watch_outputs)
        cancel.click(handlers.cancel, inputs=[job], outputs=[message])
        check.click(handlers.check_token, inputs=[token], outputs=[token_report])
        resume.click(resume_and_follow, inputs=[job], outputs=watch_outputs)
        resolution = advanced_controls[[f.name for f in handlers.advanced].index("resolution")]
        prepare.click(handlers.prepare, inputs=[photos_dir, uploads, token, job_name, resolution, framing, class_word,
                                                base_model, preset],
                      outputs=[prepare_report, prepare_preview, photos_dir])
        refresh_jobs.click(lambda: gr.update(choices=handlers.job_choices()), inputs=[], outputs=[job])
        use.click(handlers.use_in_txt2img, inputs=[job], outputs=[message, prompt_out, title_out]).then(
            None, inputs=[prompt_out, title_out], outputs=None, **{js_keyword: USE_IN_TXT2IMG_JS})

        def compare_and_list(name: str) -> tuple[Any, str, Any]:
            path, text, labels = handlers.compare_checkpoints(name)
            return path, text, gr.update(choices=labels, value=labels[-1] if labels else None)

        compare.click(compare_and_list, inputs=[job], outputs=[grid_image, grid_message, keep])
        use_saved.click(handlers.use_in_txt2img, inputs=[job, keep], outputs=[message, prompt_out, title_out]).then(
            None, inputs=[prompt_out, title_out], outputs=None, **{js_keyword: USE_IN_TXT2IMG_JS})
    return blocks, handlers


def _control(gr: Any, f: dataclasses.Field, value: Any) -> Any:
    label = f.name
    info = f.metadata["help"]
    kind = field_type(f)
    if f.metadata.get("choices"):
        return gr.Dropdown(choices=list(f.metadata["choices"]), value=value, label=label, info=info)
    if is_optional_switch(f):
        return gr.Dropdown(choices=list(OPTIONAL_SWITCH), value=value, label=label, info=info)
    if kind is bool:
        return gr.Checkbox(value=value, label=label, info=info)
    if uses_text_box(f):
        return gr.Textbox(value=value, label=label, info=info)
    return gr.Number(value=value, label=label, info=info, precision=0 if kind is int else None)


def build_error_tab(markdown: str) -> Any:
    """What shows when dreamcore cannot run here: the tab stays, with what is wrong and what to do."""
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as blocks:
        gr.Markdown(markdown, elem_id="dreamcore_problem")
    return blocks


def error_markdown(error: BaseException) -> str:
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    return (f"**The DreamBooth tab could not be built:** `{type(error).__name__}: {error}`\n\n"
            "Please report this with the details below (Extensions tab > dreamcore > issues).\n\n"
            f"```\n{''.join(lines)[-4000:]}\n```")
