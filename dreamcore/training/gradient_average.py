"""Gradients averaged across processes one weight at a time, for the AdamW that runs inside backward.

Why: with several processes (data parallel), each weight's update must use the gradient averaged over every
process's part of the global batch. PyTorch's DistributedDataParallel averages whole buckets of gradients and
leaves them for an optimizer step after backward, so it needs the full gradients held, and its bucket logic runs
on the host, which a CUDA graph cannot record. Here the in-backward AdamW starts an all-reduce of each weight's
gradient as soon as backward has finished it and updates the weight a few gradients later, once that all-reduce
is done: the communication overlaps the rest of backward, only a few gradients are held at a time, and the
whole step, all-reduces included, can be recorded and replayed (NCCL collectives can be captured in a graph).

Every process then holds the same averaged gradients and applies the same update with the same rounding noise
(the fused kernel's noise is a function of the seed, the step and the element; the PyTorch form's generator is
seeded alike everywhere and drawn in the same order), so the weights stay identical across processes without
ever being sent again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

# Gradients whose all-reduce may be in flight while backward goes on: enough to overlap a weight's all-reduce
# with the next weights' backward, few enough that the held gradients stay small (SD1.5's largest is 29 MB).
IN_FLIGHT = 3


@dataclass
class PendingAverage:
    tensor: torch.Tensor
    work: "dist.Work"


class ProcessAverage:
    """Averages tensors in place over the processes of torch.distributed's default group."""

    def __init__(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("ProcessAverage needs torch.distributed initialized (several processes)")
        self.world_size = dist.get_world_size()

    def start(self, tensor: torch.Tensor) -> PendingAverage:
        """Begin summing ``tensor`` over the processes (asynchronous: ``finish`` waits for it)."""
        # SUM then a division, not ReduceOp.AVG: gloo (CPU) has no AVG.
        return PendingAverage(tensor, dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True))

    def finish(self, pending: PendingAverage) -> torch.Tensor:
        """Wait for the sum (on the GPU: the current stream waits, not the host) and divide it into the mean."""
        pending.work.wait()
        return pending.tensor.div_(self.world_size)

    def now(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.finish(self.start(tensor))


def broadcast_weights(modules: list[torch.nn.Module]) -> None:
    """Every process starts from the main process's weights (as DistributedDataParallel does when it wraps a
    model): all load the same files, but nothing else would catch a difference."""
    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)
