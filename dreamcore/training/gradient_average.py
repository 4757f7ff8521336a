"""Gradients averaged across processes inside backward, for the AdamW that runs there.

Why: with several processes (data parallel), each weight's update must use the gradient averaged over every
process's part of the global batch. PyTorch's DistributedDataParallel averages whole buckets of gradients and
leaves them for an optimizer step after backward, so it needs the full gradients held, and its bucket logic runs
on the host, which a CUDA graph cannot record. Here the in-backward AdamW hands each gradient to a
``GradientQueue`` as soon as backward has finished it; the queue starts its all-reduce and gives the weight back
for its update once that all-reduce is done, while backward goes on: the communication overlaps the rest of
backward, only the gradients in flight are held, and the whole step, all-reduces included, can be recorded and
replayed (NCCL collectives can be captured in a graph).

Small gradients are all-reduced together: SD1.5's UNet and text encoder have ~320 weight matrices, most of
them under a megabyte, and each all-reduce has a fixed cost. With 8 MB buckets NCCL runs 123 all-reduces a step
instead of 356, in 11.7 ms of kernel time instead of 15.4; the step gained only 0.6 ms (BENCHMARKS.md, run Y).
The in-flight limit matters more: at 16 MB the step was 3.7 ms slower than at 128 MB (no faster at 512 MB).

Every process then holds the same averaged gradients and applies the same update with the same rounding noise
(the fused kernel's noise is a function of the seed, the step and the element; the PyTorch form's generator is
seeded alike everywhere and drawn in the same order), so the weights stay identical across processes without
ever being sent again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

# Gradients smaller than this are copied into a shared buffer and all-reduced together, once the buffer holds
# about this much; larger ones are all-reduced where they lie.
BUCKET_BYTES = 8 << 20
# Gradients whose all-reduce may be in flight while backward goes on: enough for NCCL to fall behind backward
# for a while and catch up (run Y: 16 MB cost 3.7 ms a step, 512 MB gained nothing over 128), little beside the
# weights and Adam's moments (SD1.5 in bf16: 2 GB of gradients a step).
IN_FLIGHT_BYTES = 128 << 20


@dataclass
class PendingAverage:
    tensor: torch.Tensor
    work: "dist.Work"


class ProcessAverage:
    """Averages tensors in place over the processes of torch.distributed's default group."""

    def __init__(self, bucket_bytes: int | None = None, in_flight_bytes: int | None = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("ProcessAverage needs torch.distributed initialized (several processes)")
        self.world_size = dist.get_world_size()
        # read here rather than as default values, so a benchmark can set the module's constants first
        self.bucket_bytes = BUCKET_BYTES if bucket_bytes is None else bucket_bytes
        self.in_flight_bytes = IN_FLIGHT_BYTES if in_flight_bytes is None else in_flight_bytes

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


@dataclass
class _InFlight:
    """One all-reduce: the weights whose gradients it averages and, when it averages a copy (a bucket, or a
    gradient that is not one dense block), the gradients to copy the result back into."""
    weights: list[torch.Tensor]
    pending: PendingAverage
    bytes: int
    copy_back_into: list[torch.Tensor] = field(default_factory=list)


def _flat(gradient: torch.Tensor) -> torch.Tensor | None:
    """The gradient as a 1-D view in memory order, or None when it is not one dense block."""
    dense = gradient.is_contiguous() or (gradient.dim() == 4 and
                                         gradient.is_contiguous(memory_format=torch.channels_last))
    return gradient.as_strided((gradient.numel(),), (1,)) if dense else None


class GradientQueue:
    """Weights whose gradients are being averaged, in the order backward finished them.

    ``put`` takes a weight whose ``.grad`` backward has just finished and returns the weights whose ``.grad`` now
    holds the average over the processes (the oldest first, all in ``put`` order), once more than
    ``in_flight_bytes`` of gradients are in flight; ``drain`` returns the rest (end of backward). Gradients
    under ``bucket_bytes`` wait in a bucket until it holds that much, then go as one all-reduce of their copy.
    """

    def __init__(self, average: ProcessAverage) -> None:
        self.average = average
        self._bucket: list[tuple[torch.Tensor, torch.Tensor]] = []  # (weight, its flat gradient), not sent yet
        self._bucket_bytes = 0
        self._in_flight: deque[_InFlight] = deque()
        self._in_flight_bytes = 0

    def put(self, weight: torch.Tensor) -> list[torch.Tensor]:
        gradient = weight.grad
        if gradient is None:
            return []
        size = gradient.numel() * gradient.element_size()
        flat = _flat(gradient)
        if flat is None:  # a copy in one block (backends all-reduce dense tensors), averaged, copied back
            self._send_bucket()
            self._send([weight], gradient.contiguous(), size, [gradient])
        elif size >= self.average.bucket_bytes:
            self._send_bucket()
            self._send([weight], flat, size)  # in place, through a view (channels-last ones too)
        else:
            if self._bucket and (self._bucket[0][1].dtype, self._bucket[0][1].device) != (flat.dtype, flat.device):
                self._send_bucket()  # one buffer holds one dtype
            self._bucket.append((weight, flat))
            self._bucket_bytes += size
            if self._bucket_bytes >= self.average.bucket_bytes:
                self._send_bucket()
        return self._finish_while_over(self.average.in_flight_bytes)

    def drain(self) -> list[torch.Tensor]:
        self._send_bucket()
        return self._finish_while_over(-1)

    def __len__(self) -> int:
        """Weights not given back yet."""
        return sum(len(sent.weights) for sent in self._in_flight) + len(self._bucket)

    def _send(self, weights: list[torch.Tensor], tensor: torch.Tensor, size: int,
              copy_back_into: list[torch.Tensor] | None = None) -> None:
        self._in_flight.append(_InFlight(weights, self.average.start(tensor), size, copy_back_into or []))
        self._in_flight_bytes += size

    def _send_bucket(self) -> None:
        if not self._bucket:
            return
        weights, gradients = [w for w, _ in self._bucket], [g for _, g in self._bucket]
        size = self._bucket_bytes
        self._bucket, self._bucket_bytes = [], 0
        if len(weights) == 1:
            self._send(weights, gradients[0], size)  # in place
            return
        self._send(weights, torch.cat(gradients), size, gradients)

    def _finish_while_over(self, limit: int) -> list[torch.Tensor]:
        ready: list[torch.Tensor] = []
        while self._in_flight and self._in_flight_bytes > limit:
            sent = self._in_flight.popleft()
            self._in_flight_bytes -= sent.bytes
            averaged = self.average.finish(sent.pending)
            if sent.copy_back_into:
                pieces = averaged.reshape(-1).split([t.numel() for t in sent.copy_back_into])
                torch._foreach_copy_(sent.copy_back_into,
                                     [piece.view(t.shape) for piece, t in zip(pieces, sent.copy_back_into)])
            ready.extend(sent.weights)
        return ready


def broadcast_weights(modules: list[torch.nn.Module]) -> None:
    """Every process starts from the main process's weights (as DistributedDataParallel does when it wraps a
    model): all load the same files, but nothing else would catch a difference."""
    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)


def first_weight_differing_across_processes(modules: dict[str, torch.nn.Module]) -> str | None:
    """The name ("unet.conv_in.weight") of the first weight some process holds differently from the main process,
    or None when all hold the main process's weights bit for bit. The in-backward AdamW never sends weights, so
    this checks its premise (same averaged gradients, same rounding noise: same weights) once, after training:
    one broadcast of the weights and one small all-reduce."""
    names: list[str] = []
    differs: list[torch.Tensor] = []
    with torch.no_grad():
        for module_name, module in modules.items():
            for name, weight in module.named_parameters():
                mine = weight.detach()
                main = mine.clone()
                dist.broadcast(main, src=0)
                # NaN == NaN here: a NaN in every process is the same weight
                differs.append((main.ne(mine) & ~(main.isnan() & mine.isnan())).any())
                names.append(f"{module_name}.{name}")
        if not differs:
            return None
        flags = torch.stack(differs).to(torch.int32)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        differing = flags.nonzero()
    return names[int(differing[0])] if len(differing) else None
