"""The lock the WebUI holds while it runs a generation or changes the model list."""

from __future__ import annotations

import threading
from typing import Any, Callable

queue_lock = threading.Lock()


def wrap_queued_call(function: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``function`` under queue_lock, as the host wraps its model reload on a checkpoint change."""

    def queued(*args: Any, **kwargs: Any) -> Any:
        # The host would wait forever; the stand-in fails instead, so a test shows the deadlock.
        if not queue_lock.acquire(timeout=10):
            raise RuntimeError("stand-in: queue_lock is held; in the WebUI this would deadlock")
        try:
            return function(*args, **kwargs)
        finally:
            queue_lock.release()

    return queued
