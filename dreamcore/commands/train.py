"""``python -m dreamcore train``: the guide's train_dreambooth.py command, flag for flag."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

from dreamcore.console import format_duration
from dreamcore.events import SAVING_STAGE, Event, Finished, Progress, Stage, describe

HELP = "Train DreamBooth (accepts the guide's train_dreambooth.py flags; --config FILE.json too)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dreamcore.config import add_config_arguments

    add_config_arguments(parser)
    compatibility = parser.add_argument_group(
        "flags of other train_dreambooth.py scripts", "Accepted so their commands run unchanged; each says what "
        "dreamcore does instead.")
    for flag, takes_value in COMPATIBILITY_FLAGS.items():
        if takes_value == "+":
            compatibility.add_argument(flag, dest=_compat_dest(flag), default=None, nargs="+", metavar="VALUE",
                                       help=COMPATIBILITY_NOTES[flag])
        elif takes_value:
            compatibility.add_argument(flag, dest=_compat_dest(flag), default=None, metavar="VALUE",
                                       help=COMPATIBILITY_NOTES[flag])
        else:
            compatibility.add_argument(flag, dest=_compat_dest(flag), action="store_true",
                                       help=COMPATIBILITY_NOTES[flag])
    parser.add_argument("--num_processes", type=int, default=1,
                        help="Train data-parallel in this many processes on this machine (one per GPU; gloo on "
                             "CPUs). The global batch is train_batch_size x num_processes. For several machines "
                             "use `accelerate launch -m dreamcore train ...` with accelerate's config.")


# Flags of diffusers' and ShivamShrirao's scripts that have no TrainConfig field: flag -> takes a value
# (False: a switch, True: one value, "+": one or more).
COMPATIBILITY_FLAGS = {
    "--enable_xformers_memory_efficient_attention": False, "--set_grads_to_none": False,
    "--not_cache_latents": False, "--pad_tokens": False, "--report_to": True, "--logging_dir": True,
    "--local_rank": True, "--prior_generation_precision": True, "--push_to_hub": False, "--hub_token": True,
    "--hub_model_id": True, "--skip_save_text_encoder": False, "--pre_compute_text_embeddings": False,
    "--validation_images": "+", "--validation_scheduler": True, "--class_labels_conditioning": True,
    "--log_interval": True,
}
COMPATIBILITY_NOTES = {
    "--enable_xformers_memory_efficient_attention": "dreamcore uses PyTorch's SDPA attention (as fast; no xformers).",
    "--set_grads_to_none": "gradients are always released with set_to_none.",
    "--not_cache_latents": "the same as --no-cache_latents.",
    "--pad_tokens": "prompts are always padded to 77 tokens.",
    "--report_to": "tensorboard writes TensorBoard scalars; every run writes log.txt and events.jsonl.",
    "--logging_dir": "TensorBoard's folder inside the output folder (default logs); log.txt and events.jsonl are "
                     "in the output folder itself.",
    "--local_rank": "set by the launcher; dreamcore reads it through accelerate.",
    "--prior_generation_precision": "class images are generated in the run's mixed precision.",
    "--push_to_hub": "refused: dreamcore never uploads anything.",
    "--hub_token": "refused: dreamcore never contacts a model hub.",
    "--hub_model_id": "refused: dreamcore never contacts a model hub.",
    "--skip_save_text_encoder": "the text encoder is always written: the single file and the diffusers folder "
                                "need it (untrained, it is the base model's).",
    "--pre_compute_text_embeddings": "done already: with a frozen text encoder each prompt is encoded once, before "
                                     "training.",
    "--validation_images": "for DeepFloyd IF's upscaler; samples here are drawn from --validation_prompt alone.",
    "--validation_scheduler": "samples use DDIM with the model's own noise schedule.",
    "--class_labels_conditioning": "for DeepFloyd IF's upscaler; SD1/SD2 UNets take no class labels.",
    "--log_interval": "the loss and learning rate are shown at every step.",
}
NO_HUB_FLAGS = ("--push_to_hub", "--hub_token", "--hub_model_id")


def _compat_dest(flag: str) -> str:
    return "compat_" + flag.lstrip("-")


def compatibility_messages(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(notes, errors) for the compatibility flags that were given."""
    notes, errors = [], []
    for flag in COMPATIBILITY_FLAGS:
        value = getattr(args, _compat_dest(flag), None)
        if value in (None, False):
            continue
        if flag in NO_HUB_FLAGS:
            errors.append(f"{flag}: {COMPATIBILITY_NOTES[flag]}")
        elif flag in ("--report_to", "--logging_dir"):
            continue  # they do something here: report_to_messages says what
        else:
            notes.append(f"{flag}: {COMPATIBILITY_NOTES[flag]}")
    return notes, errors


def resume_command(argv: list[str]) -> str:
    """The command line that continues this run from its last saved state: the same flags, resuming latest."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume_from_checkpoint":
            skip = True
        elif not arg.startswith("--resume_from_checkpoint="):
            rest.append(arg)
    return shlex.join(["python", "-m", "dreamcore", *rest, "--resume_from_checkpoint", "latest"])


def relaunch_command(argv: list[str], num_processes: int) -> list[str]:
    """The torchrun command that runs this same training in ``num_processes`` processes."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--num_processes":
            skip = True
        elif not arg.startswith("--num_processes="):
            rest.append(arg)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
            "-m", "dreamcore", *rest]


class TrainingProgressPrinter:
    """The console of a training run: one line per stage, message and save, and one progress bar of the training
    steps with loss, learning rate, rate and ETA (the run's StepClock: no rate during the first steps, saves left
    out). While training pauses to save, the bar says what it saves; at the export it is closed, not left at 100%.
    Without a terminal (output to a file) the bar is a line every hundredth of the run."""

    BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"

    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.bar = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Progress):
            self._progress(event)
            return
        if isinstance(event, Stage) and event.name == SAVING_STAGE and self.bar is not None:
            self.bar.set_description_str(f"{describe(event)} ")  # cleared by the next step
            return
        if isinstance(event, Stage) and event.name in ("export", "done"):
            self.close()
        if isinstance(event, Finished):
            self.close()
            print(file=sys.stdout)
        line = describe(event)
        if line is not None:
            self._write(line)

    def _progress(self, event: Progress) -> None:
        if not self.interactive:
            from dreamcore.jobs.events_file import is_log_step, progress_line

            if is_log_step(event.step, event.total_steps):
                print(progress_line(event), file=self.stream, flush=True)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=event.total_steps, initial=event.step - 1, unit="step", file=self.stream,
                            dynamic_ncols=True, bar_format=self.BAR_FORMAT)
        self.bar.set_description_str("", refresh=False)
        self.bar.update(event.step - self.bar.n)
        postfix = f"loss {event.loss:.4f}"
        if event.prior_loss is not None:
            postfix += f", prior {event.prior_loss:.4f}"
        postfix += f", lr {event.learning_rate:.2e}"
        if event.eta_seconds is not None:  # none from the warm-up steps
            postfix += f", {_rate_text(event.steps_per_second)}, ETA {format_duration(event.eta_seconds)}"
        self.bar.set_postfix_str(postfix)

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _rate_text(steps_per_second: float) -> str:
    return f"{steps_per_second:.2f} step/s" if steps_per_second >= 1 else f"{1 / steps_per_second:.2f} s/step"


def report_to_messages(value: str | None, output_dir: Path, logging_dir: str | None) -> tuple[bool, list[str]]:
    """(write TensorBoard scalars, notes) for --report_to, as diffusers' scripts take it ("all" includes
    tensorboard). Any other tracker is explained in one line each: dreamcore sends nothing to online services."""
    from dreamcore.jobs.events_file import EVENTS_FILE_NAME

    if not value:
        return False, []
    names = [name.strip() for name in value.split(",") if name.strip()]
    tensorboard = any(name in ("tensorboard", "all") for name in names)
    notes = [f"--report_to {name}: dreamcore sends nothing to online trackers; the loss, learning rate and step "
             f"time of every step are in {output_dir / EVENTS_FILE_NAME} (and TensorBoard's with --report_to "
             "tensorboard)." for name in names if name not in ("tensorboard", "all")]
    if tensorboard and not tensorboard_available():
        notes.append("--report_to tensorboard: the tensorboard package is not installed, so no TensorBoard scalars "
                     f"are written (the loss is in {output_dir / EVENTS_FILE_NAME}). Install it with "
                     "`pip install tensorboard` (or dreamcore's extra: `pip install 'dreamcore[tensorboard]'`).")
        tensorboard = False
    elif tensorboard:
        notes.append(f"--report_to tensorboard: scalars in {tensorboard_dir(output_dir, logging_dir)} (`tensorboard "
                     f"--logdir {tensorboard_dir(output_dir, logging_dir)}`).")
    return tensorboard, notes


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def tensorboard_dir(output_dir: Path, logging_dir: str | None) -> Path:
    """Where TensorBoard's files go: --logging_dir inside the output folder, as diffusers' scripts put them."""
    return output_dir / (logging_dir or "logs")


class TensorBoardScalars:
    """Writes each step's loss, prior loss, learning rate and step time as TensorBoard scalars. The writer is made
    at the first step (``make_writer(folder)``; torch's SummaryWriter by default), so a refused run writes none."""

    def __init__(self, folder: Path, make_writer: Callable[[Path], Any] | None = None):
        self.folder = folder
        self.make_writer = make_writer or _summary_writer
        self.writer = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Progress):
            if self.writer is None:
                self.writer = self.make_writer(self.folder)
            self.writer.add_scalar("train/loss", event.loss, event.step)
            self.writer.add_scalar("train/learning_rate", event.learning_rate, event.step)
            if event.prior_loss is not None:
                self.writer.add_scalar("train/prior_loss", event.prior_loss, event.step)
            if event.step_seconds is not None:
                self.writer.add_scalar("train/step_seconds", event.step_seconds, event.step)
        elif isinstance(event, Finished):
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _summary_writer(folder: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(folder))


def run(args: argparse.Namespace) -> int:
    from dreamcore.config import ConfigError, config_from_arguments
    from dreamcore.events import StopRequest
    from dreamcore.fileio import OutputWriteError
    from dreamcore.images import ImageLoadError
    from dreamcore.jobs.advice import advice_for_error
    from dreamcore.jobs.events_file import RunFiles
    from dreamcore.models import ModelLoadError
    from dreamcore.training import TrainingError, leave_process_group, train

    if getattr(args, _compat_dest("--not_cache_latents"), False) and not hasattr(args, "cache_latents"):
        args.cache_latents = False  # ShivamShrirao's spelling of --no-cache_latents
    notes, errors = compatibility_messages(args)
    try:
        config = config_from_arguments(args)
        if errors:
            raise ConfigError(errors + config.problems())
        config.validate()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    output_dir = Path(config.with_absolute_paths().output_dir)
    tensorboard, report_notes = report_to_messages(getattr(args, _compat_dest("--report_to"), None), output_dir,
                                                   getattr(args, _compat_dest("--logging_dir"), None))
    for note in notes + report_notes:
        print(f"note: {note}", file=sys.stderr)
    if args.num_processes > 1 and "LOCAL_RANK" not in os.environ:
        import subprocess

        return subprocess.call(relaunch_command(args.argv, args.num_processes))
    stop = StopRequest()
    printer = TrainingProgressPrinter()
    run_files = RunFiles(output_dir, command=shlex.join(["python", "-m", "dreamcore", *args.argv]))
    callbacks: list[Callable[[Event], None]] = [run_files, printer]
    scalars = None
    if tensorboard:
        scalars = TensorBoardScalars(tensorboard_dir(output_dir, getattr(args, _compat_dest("--logging_dir"), None)))
        callbacks.append(scalars)

    def request_stop(signum, frame):  # first Ctrl+C stops cleanly, a second one aborts
        print("\nStopping after this step (saving a resumable state); press Ctrl+C again to abort.",
              file=sys.stderr)
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        result = train(config, callbacks=callbacks, stop=stop)
    except (ConfigError, TrainingError, ModelLoadError, ImageLoadError, OutputWriteError) as error:
        printer.close()
        run_files.error(error, advice_for_error(type(error).__name__, str(error), config))
        print(f"error: {error}", file=sys.stderr)
        return 1
    except BaseException as error:  # a bug or an abort: in the run's files too, then as Python reports it
        printer.close()
        run_files.error(error, "")
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        run_files.close()
        if scalars is not None:
            scalars.close()
    if result.status == "stopped" and os.environ.get("RANK", "0") == "0":
        print(f"\nTo continue this run:\n  {resume_command(args.argv)}", flush=True)
    # Only after a run that ended well: after an error the other processes may still wait in a collective, and
    # torchrun ends them when this one exits.
    leave_process_group()
    return 0
