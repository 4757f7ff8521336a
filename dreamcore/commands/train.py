"""``python -m dreamcore train``: the guide's train_dreambooth.py command, flag for flag."""

from __future__ import annotations

import argparse
import os
import signal
import sys

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
    "--report_to": "progress goes to the console, the events of the Python API and the job log.",
    "--logging_dir": "the log and events live in the output folder (or the job folder).",
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
        else:
            notes.append(f"{flag}: {COMPATIBILITY_NOTES[flag]}")
    return notes, errors


def resume_command(argv: list[str]) -> str:
    """The command line that continues this run from its last saved state: the same flags, resuming latest."""
    import shlex

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


class ConsoleReporter:
    """Prints stages and warnings, and draws a progress bar with step, loss, it/s and ETA."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if event.kind == "progress":
            if self.bar is None:
                self.bar = tqdm(total=event.total_steps, initial=event.step - 1, unit="step", dynamic_ncols=True)
            self.bar.update(event.step - self.bar.n)
            postfix = {"loss": f"{event.loss:.4f}", "lr": f"{event.learning_rate:.2e}"}
            if event.prior_loss is not None:
                postfix["prior"] = f"{event.prior_loss:.4f}"
            self.bar.set_postfix(postfix)
        elif event.kind == "log":
            self._write(("WARNING: " if event.level == "warning" else "") + event.message)
        elif event.kind == "stage":
            self._write(f"== {event.name}" + (f": {event.detail}" if event.detail else ""))
        elif event.kind == "class_images":
            self._write(f"class images: {event.done}/{event.total}")
        elif event.kind == "samples":
            self._write(f"step {event.step}: samples in {event.paths[0].rsplit('/', 1)[0]}")
        elif event.kind == "checkpoint":
            self._write(f"step {event.step}: {event.what} saved to {event.path}")
        elif event.kind == "finished":
            self.close()
            print(f"\nTraining {event.status} at step {event.step}. Outputs:")
            for name, path in event.outputs.items():
                print(f"  {name:12s} {path}")

    def _write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text) if self.bar is not None else print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args: argparse.Namespace) -> int:
    from dreamcore.config import ConfigError, config_from_arguments
    from dreamcore.events import StopRequest
    from dreamcore.fileio import OutputWriteError
    from dreamcore.images import ImageLoadError
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
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.num_processes > 1 and "LOCAL_RANK" not in os.environ:
        import subprocess

        return subprocess.call(relaunch_command(args.argv, args.num_processes))
    stop = StopRequest()
    reporter = ConsoleReporter()

    def request_stop(signum, frame):  # first Ctrl+C stops cleanly, a second one aborts
        print("\nStopping after this step (saving a resumable state); press Ctrl+C again to abort.",
              file=sys.stderr)
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        result = train(config, callbacks=[reporter], stop=stop)
    except (ConfigError, TrainingError, ModelLoadError, ImageLoadError, OutputWriteError) as error:
        reporter.close()
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.status == "stopped" and os.environ.get("RANK", "0") == "0":
        print(f"\nTo continue this run:\n  {resume_command(args.argv)}", flush=True)
    # Only after a run that ended well: after an error the other processes may still wait in a collective, and
    # torchrun ends them when this one exits.
    leave_process_group()
    return 0
