"""Saves that do not stop training: a snapshot on the host now, the files written by a thread.

A save copies what it writes off the GPU (the only part training waits for), then a single writer thread
serialises and writes the files, atomically as every write here is. At most one save is in flight: a second
waits for the first. What a finished save reports (its events) is handed back to the training thread, which
emits it, so callbacks always run on the thread that called ``train()``. A failed write is raised in the
training thread at the next save, poll or finish, never dropped.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch


def host_copy(value: Any) -> Any:
    """``value`` with every tensor copied to the host (a copy even when it is there already: training updates
    its tensors in place), in the same nesting of dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: host_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(host_copy(item) for item in value)
    return value


class BackgroundWriter:
    """One writer for slow file writes, run one after another in the order submitted; ``submit`` a write,
    ``poll`` for what finished. A save submits all its writes at once (its state and its checkpoint), so
    training waits for none of them; the caller ``wait``s before the next save's host copies, so at most one
    save's copies are held at a time."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None  # the last write submitted; it runs after the one before
        self._finished: list[Callable[[], None]] = []  # what each finished write reports, run by the caller
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def submit(self, write: Callable[[], Any], report: Callable[[], None] | None = None) -> None:
        """Run ``write`` on a writer thread once every write submitted before it is done; ``report`` (what to say
        when it has finished) is called by ``poll`` on the training thread."""
        self.poll()
        before = self._thread

        def run() -> None:
            if before is not None:
                before.join()
            with self._lock:
                if self._error is not None:  # a write before this one failed: this save is not complete
                    return
            try:
                write()
            except BaseException as error:  # handed to the training thread, which raises it
                with self._lock:
                    self._error = error
                return
            if report is not None:
                with self._lock:
                    self._finished.append(report)

        self._thread = threading.Thread(target=run, name="dreamcore-save", daemon=False)
        self._thread.start()

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def poll(self) -> None:
        """Report the writes that finished; raise the error of one that failed."""
        with self._lock:
            finished, self._finished = self._finished, []
            error, self._error = self._error, None
        for report in finished:
            report()
        if error is not None:
            raise error

    def wait(self) -> None:
        """Wait for the write in flight (if any), then ``poll``."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.poll()

    def finish_after_error(self, log: Callable[[str, str], None]) -> None:
        """Training failed: let the write in flight complete its files; its own failure is logged, since the
        training error is the one raised."""
        try:
            self.wait()
        except Exception as error:  # the training error propagates; this one must still be seen
            log(f"a checkpoint or state being written when training failed could not be written: "
                f"{type(error).__name__}: {error}", "error")
