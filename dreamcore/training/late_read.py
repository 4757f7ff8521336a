"""Step values (losses, learning rate) read on the host one step late, so the GPU never waits for the host.

Why: ``loss.item()`` right after a step makes the host wait for the GPU to finish that step; meanwhile nothing
else is queued, so the GPU then idles while the host draws the next batch and launches the next step (the
recorded step on an H100: 19.4 -> 20.3 it/s without that wait, BENCHMARKS.md run J). Here the values are copied
to pinned host memory without blocking, behind the step's kernels, and an event marks when they have arrived.
The loop launches the next step first and only then waits for that event: the GPU always has a step queued.

On the CPU the values are ready at once and nothing changes.
"""

from __future__ import annotations

import torch


class LateValues:
    """Scalars produced by the GPU, copied to the host in the background; ``values()`` waits for them."""

    def __init__(self, scalars: list[torch.Tensor | float]):
        self._floats = [None if isinstance(s, torch.Tensor) else float(s) for s in scalars]
        tensors = [s.detach().reshape(()).float() for s in scalars if isinstance(s, torch.Tensor)]
        self._ready: torch.cuda.Event | None = None
        if not tensors:
            self._host = torch.empty(0)
            return
        stacked = torch.stack(tensors)
        if stacked.device.type == "cuda":
            self._host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
            self._host.copy_(stacked, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = stacked.cpu()

    def values(self) -> list[float]:
        """The scalars as floats, in the order given (waits for the GPU only up to the step that made them)."""
        if self._ready is not None:
            self._ready.synchronize()
            self._ready = None
        arrived = iter(self._host.tolist())
        return [next(arrived) if value is None else value for value in self._floats]
