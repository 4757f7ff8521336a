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

Each weight is updated by one process, its owner (``SHARD_UPDATES``, ZeRO stage 1): its gradient is reduced into
the owner only, the owner runs the update and sends the updated weight to the others, which then hold it bit
for bit. Each process runs 1/N of AdamW's updates (6.9 ms of SD1.5's step on one GPU) and keeps 1/N of its
state; the bytes sent are those of an all-reduce. Without it every process updates every weight from the same
averaged gradient with the same rounding noise (the fused kernel's noise is a function of the seed, the step
and the element; the PyTorch form's generator is seeded alike everywhere and drawn in the same order).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist

# Gradients smaller than this are copied into a shared buffer and all-reduced together, once the buffer holds
# about this much; larger ones are all-reduced where they lie.
BUCKET_BYTES = 8 << 20
# Gradients whose all-reduce may be in flight while backward goes on: enough for NCCL to fall behind backward
# for a while and catch up (run Y: 16 MB cost 3.7 ms a step, 512 MB gained nothing over 128), little beside the
# weights and Adam's moments (SD1.5 in bf16: 2 GB of gradients a step).
IN_FLIGHT_BYTES = 128 << 20
# Each weight updated by one process only, its owner, which keeps its optimizer state and sends the updated
# weight to the others (ZeRO stage 1): each process runs 1/N of AdamW's updates and holds 1/N of its state.
SHARD_UPDATES = True


@dataclass
class PendingAverage:
    tensor: torch.Tensor
    work: "dist.Work"
    owner: int | None = None  # a reduce to this process only (None: an all-reduce, every process gets the sum)


class ProcessAverage:
    """Averages tensors over the processes of torch.distributed's default group: in every process (all-reduce),
    or in one process, a weight's owner (reduce), which then sends the updated weight to the others."""

    def __init__(self, bucket_bytes: int | None = None, in_flight_bytes: int | None = None,
                 shard_updates: bool | None = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("ProcessAverage needs torch.distributed initialized (several processes)")
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()
        # read here rather than as default values, so a benchmark can set the module's constants first
        self.bucket_bytes = BUCKET_BYTES if bucket_bytes is None else bucket_bytes
        self.in_flight_bytes = IN_FLIGHT_BYTES if in_flight_bytes is None else in_flight_bytes
        self.shard_updates = SHARD_UPDATES if shard_updates is None else shard_updates

    def start(self, tensor: torch.Tensor, owner: int | None = None) -> PendingAverage:
        """Begin summing ``tensor`` over the processes, into every process or into ``owner``'s only
        (asynchronous: ``finish`` waits for it)."""
        # SUM then a division, not ReduceOp.AVG: gloo (CPU) has no AVG.
        if owner is None:
            return PendingAverage(tensor, dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True))
        return PendingAverage(tensor, dist.reduce(tensor, dst=owner, op=dist.ReduceOp.SUM, async_op=True), owner)

    def finish(self, pending: PendingAverage) -> torch.Tensor:
        """Wait for the sum (on the GPU: the current stream waits, not the host) and divide it into the mean (in a
        process that does not own a reduced tensor, what is left in it means nothing)."""
        pending.work.wait()
        if pending.owner is not None and pending.owner != self.rank:
            return pending.tensor
        return pending.tensor.div_(self.world_size)

    def now(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.finish(self.start(tensor))

    def send_from(self, tensor: torch.Tensor, owner: int) -> "dist.Work":
        """Begin copying ``owner``'s ``tensor`` into every other process's (asynchronous)."""
        return dist.broadcast(tensor, src=owner, async_op=True)


def owners_by_size(weights: list[torch.Tensor], world_size: int) -> dict[torch.Tensor, int]:
    """Each weight's owner, the process that updates it and keeps its optimizer state: in the weights' order
    (the same in every process), the process that owns the fewest elements so far. Each owns about
    1/world_size of the elements, and weights that backward finishes one after another mostly alternate, so
    every process has updates to run all through backward."""
    owned = [0] * world_size
    owners: dict[torch.Tensor, int] = {}
    for weight in weights:
        owner = min(range(world_size), key=owned.__getitem__)
        owners[weight] = owner
        owned[owner] += weight.numel()
    return owners


@dataclass
class _InFlight:
    """One collective: the weights it is for, what is sent (an averaged gradient, or updated weights), the
    process that owns them (None: every process updates them) and, when it sends a copy (a bucket, or a tensor
    that is not one dense block), the tensors to copy the result back into."""
    weights: list[torch.Tensor]
    pending: PendingAverage
    bytes: int
    owner: int | None = None
    copy_back_into: list[torch.Tensor] = field(default_factory=list)


def _flat(tensor: torch.Tensor) -> torch.Tensor | None:
    """The tensor as a 1-D view in memory order, or None when it is not one dense block."""
    dense = tensor.is_contiguous() or (tensor.dim() == 4 and
                                       tensor.is_contiguous(memory_format=torch.channels_last))
    return tensor.as_strided((tensor.numel(),), (1,)) if dense else None


def _copy_pieces(buffer: torch.Tensor, targets: list[torch.Tensor]) -> None:
    """Copy consecutive pieces of a 1-D ``buffer`` into ``targets`` (each 1-D, or read in logical order)."""
    pieces = buffer.reshape(-1).split([t.numel() for t in targets])
    torch._foreach_copy_(targets, [piece.view(t.shape) for piece, t in zip(pieces, targets)])


class GradientQueue:
    """Weights whose gradients are being averaged, in the order backward finished them.

    ``put`` takes a weight whose ``.grad`` backward has just finished; once its gradient holds the average over
    the processes, the queue calls ``update(weight)`` (which uses and frees the gradient), the oldest first, as
    soon as more than ``in_flight_bytes`` of gradients are in flight; ``drain`` does the rest (end of backward).
    Gradients under ``bucket_bytes`` wait in a bucket until it holds that much, then go as one collective.

    With ``owner_of`` (each weight's owning process, ``owners_by_size``), a gradient is reduced into its owner
    only, only the owner calls ``update``, and it then sends the updated weight to the others (the others free
    the gradient). Each process runs 1/world_size of the updates and keeps the optimizer state of its own
    weights only; the bytes sent are those of an all-reduce (a reduce, then a broadcast). ``drain`` returns once
    every weight is updated in every process (on the GPU: once the stream waits for it).
    """

    def __init__(self, average: ProcessAverage, update: Callable[[torch.Tensor], None],
                 owner_of: dict[torch.Tensor, int] | None = None) -> None:
        self.average = average
        self.update = update
        self.owner_of = owner_of
        # per owner (None: not sharded), (weight, its flat gradient) not sent yet
        self._buckets: dict[int | None, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._bucket_bytes: dict[int | None, int] = {}
        self._in_flight: deque[_InFlight] = deque()  # gradients
        self._in_flight_bytes = 0
        self._sending: deque[_InFlight] = deque()  # updated weights, from their owner
        self._sending_bytes = 0

    def put(self, weight: torch.Tensor) -> None:
        gradient = weight.grad
        if gradient is None:
            return
        owner = None if self.owner_of is None else self.owner_of[weight]
        size = gradient.numel() * gradient.element_size()
        flat = _flat(gradient)
        if flat is None:  # a copy in one block (backends reduce dense tensors), averaged, copied back
            self._send_bucket(owner)
            self._send([weight], gradient.contiguous(), owner, [gradient])
        elif size >= self.average.bucket_bytes:
            self._send_bucket(owner)
            self._send([weight], flat, owner)  # in place, through a view (channels-last ones too)
        else:
            bucket = self._buckets.get(owner)
            if bucket and (bucket[0][1].dtype, bucket[0][1].device) != (flat.dtype, flat.device):
                self._send_bucket(owner)  # one buffer holds one dtype
            self._buckets.setdefault(owner, []).append((weight, flat))
            self._bucket_bytes[owner] = self._bucket_bytes.get(owner, 0) + size
            if self._bucket_bytes[owner] >= self.average.bucket_bytes:
                self._send_bucket(owner)
        self._finish_while_over(self.average.in_flight_bytes)

    def drain(self) -> None:
        for owner in list(self._buckets):  # in the order they were begun: the same in every process
            self._send_bucket(owner)
        self._finish_while_over(-1)
        self._finish_sending_while_over(-1)

    def __len__(self) -> int:
        """Weights not updated yet."""
        return sum(len(sent.weights) for sent in self._in_flight) + sum(map(len, self._buckets.values()))

    def _send(self, weights: list[torch.Tensor], tensor: torch.Tensor, owner: int | None,
              copy_back_into: list[torch.Tensor] | None = None) -> None:
        size = tensor.numel() * tensor.element_size()
        self._in_flight.append(_InFlight(weights, self.average.start(tensor, owner), size, owner,
                                         copy_back_into or []))
        self._in_flight_bytes += size

    def _send_bucket(self, owner: int | None) -> None:
        bucket = self._buckets.pop(owner, [])
        self._bucket_bytes.pop(owner, None)
        if not bucket:
            return
        weights, gradients = [w for w, _ in bucket], [g for _, g in bucket]
        if len(weights) == 1:
            self._send(weights, gradients[0], owner)  # in place
            return
        self._send(weights, torch.cat(gradients), owner, gradients)

    def _finish_while_over(self, limit: int) -> None:
        while self._in_flight and self._in_flight_bytes > limit:
            sent = self._in_flight.popleft()
            self._in_flight_bytes -= sent.bytes
            averaged = self.average.finish(sent.pending)
            if sent.owner is None or sent.owner == self.average.rank:
                if sent.copy_back_into:
                    _copy_pieces(averaged, sent.copy_back_into)
                for weight in sent.weights:
                    self.update(weight)
            else:
                for weight in sent.weights:
                    weight.grad = None  # its owner updates it
            if sent.owner is not None:
                self._send_weights(sent.weights, sent.owner)
                self._finish_sending_while_over(self.average.in_flight_bytes)

    def _send_weights(self, weights: list[torch.Tensor], owner: int) -> None:
        """Begin sending the owner's updated ``weights`` to the other processes (in place where it can)."""
        values = [w.detach() for w in weights]
        flats = [_flat(v) for v in values]
        if len(values) == 1 and flats[0] is not None:
            tensor, copy_back_into = flats[0], []
        else:  # one buffer: the owner's weights in it, the others' received into it and copied out
            # (read in memory order where dense, else in logical order, alike on both sides)
            targets = [f if f is not None else v for f, v in zip(flats, values)]
            if owner == self.average.rank:
                tensor, copy_back_into = torch.cat([t.reshape(-1) for t in targets]), []
            else:
                tensor = torch.empty(sum(v.numel() for v in values), dtype=values[0].dtype, device=values[0].device)
                copy_back_into = targets
        size = tensor.numel() * tensor.element_size()
        work = self.average.send_from(tensor, owner)
        self._sending.append(_InFlight(weights, PendingAverage(tensor, work, owner), size, owner, copy_back_into))
        self._sending_bytes += size

    def _finish_sending_while_over(self, limit: int) -> None:
        while self._sending and self._sending_bytes > limit:
            sent = self._sending.popleft()
            self._sending_bytes -= sent.bytes
            sent.pending.work.wait()
            if sent.copy_back_into:
                _copy_pieces(sent.pending.tensor, sent.copy_back_into)


def broadcast_weights(modules: list[torch.nn.Module]) -> None:
    """Every process starts from the main process's weights (as DistributedDataParallel does when it wraps a
    model): all load the same files, but nothing else would catch a difference."""
    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)


def first_weight_differing_across_processes(modules: dict[str, torch.nn.Module]) -> str | None:
    """The name ("unet.conv_in.weight") of the first weight some process holds differently from the main process,
    or None when all hold the main process's weights bit for bit. The in-backward AdamW's processes keep their own
    copies of the weights (each updates its own, or receives them from their owners), so this checks that they
    still agree once, after training: one broadcast of the weights and one small all-reduce."""
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
