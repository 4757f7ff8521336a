"""Differences between the library versions the WebUIs pin and the newest ones, handled in one place.

A1111 1.10 pins accelerate 0.21, whose ``Accelerator.accumulate`` takes a single model; from 0.24 on it
takes several. dreamcore trains the UNet and (optionally) the text encoder together, so both must be
covered by one sync decision per micro-step.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, ContextManager, Iterator


def accumulate(accelerator: Any, models: list[Any]) -> ContextManager[None]:
    """``accelerator.accumulate(*models)``, also on accelerate versions whose accumulate takes one model."""
    parameters = inspect.signature(accelerator.accumulate).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return accelerator.accumulate(*models)
    return _accumulate_each(accelerator, models)


@contextlib.contextmanager
def _accumulate_each(accelerator: Any, models: list[Any]) -> Iterator[None]:
    # What accumulate(*models) does in newer accelerate: one step count and sync decision per micro-step,
    # then no gradient all-reduce on any model until the step that completes the accumulation.
    accelerator._do_sync()
    with contextlib.ExitStack() as stack:
        if not accelerator.sync_gradients:
            for model in models:
                stack.enter_context(accelerator.no_sync(model))
        yield
