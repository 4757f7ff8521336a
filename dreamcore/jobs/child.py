"""The training child: ``python -m dreamcore.jobs.child JOB_FOLDER``.

Runs ``dreamcore.train`` on the job's ``train_config.json`` and appends every event to the job's
``events.jsonl``. A stop request arrives as the job's stop file (written by any JobManager) or as SIGINT /
SIGTERM; either makes training stop at the next step and save a resumable state. An error is written as a
``job_error`` event with advice and then re-raised, so the exit code and the log show it too. The family of
the model the job trains is written as a ``job_model`` event, for the UIs and the REST API.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from dreamcore.config import TrainConfig
from dreamcore.events import Event, Finished, Log, Stage, StopRequest
from dreamcore.jobs.advice import advice_for_error
from dreamcore.jobs.events_file import JOB_MODEL, JOB_STARTED, EventWriter
from dreamcore.jobs.folder import JobFolder


class StopFileOrSignal:
    """Set when the job's stop file exists or SIGINT/SIGTERM arrived (a file check per step is cheap)."""

    def __init__(self, stop_file: Path):
        self.stop_file = stop_file
        self.by_signal = StopRequest()

    def is_set(self) -> bool:
        return self.by_signal.is_set() or self.stop_file.exists()


class FamilyRecorder:
    """Writes the family of the job's model into its events: when training loads the base model, as read from
    its files (as training reads it to choose a resolution), and again at the end from the model the run wrote,
    which names the family it trained (an SD2-v single file without dreamcore's metadata reads as SD2 until
    it is loaded)."""

    def __init__(self, writer: EventWriter, config: TrainConfig):
        self.writer = writer
        self.config = config
        self.family = ""

    def __call__(self, event: Event) -> None:
        if isinstance(event, Stage) and event.name == "load":
            from dreamcore.models import base_model_family

            config = self.config
            # a model that cannot be read raises here as its loading would a moment later, with the same message
            family = base_model_family(config.pretrained_model_name_or_path, config.revision,
                                       config.model_family).name
        elif isinstance(event, Finished):
            family = written_family(event.outputs) or self.family
        else:
            return
        if family != self.family:
            self.family = family
            self.writer.write({"kind": JOB_MODEL, "family": family})


def written_family(outputs: dict[str, str]) -> str:
    """The family a run's exported model names in its metadata (its LoRA, else its single file); empty when
    the run exported none (a run stopped before its first save) or the file does not say."""
    lora, single_file = outputs.get("lora", ""), outputs.get("single_file", "")
    if lora and Path(lora).is_file():
        from dreamcore.lora.files import lora_family

        return lora_family(lora) or ""
    if single_file and Path(single_file).is_file():
        from safetensors import safe_open

        from dreamcore.convert.single_file import FAMILY_KEY

        with safe_open(single_file, framework="pt", device="cpu") as handle:
            return (handle.metadata() or {}).get(FAMILY_KEY, "")
    return ""


def run_job(folder: JobFolder, attempt: int) -> int:
    writer = EventWriter(folder.events)
    writer.write({"kind": JOB_STARTED, "attempt": attempt, "pid": os.getpid()})
    config: TrainConfig | None = None
    try:
        stop = StopFileOrSignal(folder.stop_file)
        _stop_on_signals(stop.by_signal)
        config = TrainConfig.load(folder.config).validate()
        import dreamcore

        dreamcore.train(config, callbacks=[writer, FamilyRecorder(writer, config), _print_messages], stop=stop)
    except Exception as error:
        writer.error(error, advice_for_error(type(error).__name__, str(error), config))
        raise
    finally:
        writer.close()
    return 0


def _print_messages(event: Event) -> None:
    """Log and stage events also go to the job's log file (the child's stdout)."""
    if isinstance(event, Log):
        print(f"[{event.level}] {event.message}", flush=True)
    elif event.kind == "stage":
        print(f"--- {event.to_dict()['name']} {event.to_dict().get('detail', '')}".rstrip(), flush=True)


def _stop_on_signals(stop: StopRequest) -> None:
    """The first SIGINT/SIGTERM asks training to stop cleanly; a second one ends the process at once."""

    def handle(signum: int, frame: Any) -> None:
        if stop.is_set():
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        print(f"{signal.Signals(signum).name} received: stopping after this step and saving the state.", flush=True)
        stop.set()

    for name in ("SIGINT", "SIGTERM"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dreamcore.jobs.child",
                                     description="Run one dreamcore job (started by JobManager).")
    parser.add_argument("job_folder", type=Path)
    parser.add_argument("--attempt", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from dreamcore.console import quiet_console

    quiet_console()  # the job's log.txt (the tab's Log) without the libraries' notices and bars
    return run_job(JobFolder(args.job_folder), args.attempt)


if __name__ == "__main__":
    sys.exit(main())
