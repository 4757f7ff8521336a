"""The training child: ``python -m dreamcore.jobs.child JOB_FOLDER``.

Runs ``dreamcore.train`` on the job's ``train_config.json`` and appends every event to the job's
``events.jsonl``. A stop request arrives as the job's stop file (written by any JobManager) or as SIGINT /
SIGTERM; either makes training stop at the next step and save a resumable state. An error is written as a
``job_error`` event with advice and then re-raised, so the exit code and the log show it too.
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
from dreamcore.events import Event, Log, StopRequest
from dreamcore.jobs.advice import advice_for_error
from dreamcore.jobs.events_file import JOB_STARTED, EventWriter
from dreamcore.jobs.folder import JobFolder


class StopFileOrSignal:
    """Set when the job's stop file exists or SIGINT/SIGTERM arrived (a file check per step is cheap)."""

    def __init__(self, stop_file: Path):
        self.stop_file = stop_file
        self.by_signal = StopRequest()

    def is_set(self) -> bool:
        return self.by_signal.is_set() or self.stop_file.exists()


def run_job(folder: JobFolder, attempt: int) -> int:
    writer = EventWriter(folder.events)
    writer.write({"kind": JOB_STARTED, "attempt": attempt, "pid": os.getpid()})
    config: TrainConfig | None = None
    try:
        stop = StopFileOrSignal(folder.stop_file)
        _stop_on_signals(stop.by_signal)
        config = TrainConfig.load(folder.config).validate()
        import dreamcore

        dreamcore.train(config, callbacks=[writer, _print_messages], stop=stop)
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
