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

With ``shard_updates`` (TrainConfig.shard_optimizer, on by default; ZeRO stage 1) a gradient is reduce-scattered
instead: each process gets the average of its part of the weight (1/N of its elements), updates that part, keeps
AdamW's state for it only, and the updated parts are all-gathered into every process's weight
(``ShardedGradientQueue``). An all-reduce is a reduce-scatter then an all-gather, so the same bytes cross between
the GPUs, while each process runs 1/N of AdamW and holds 1/N of its state. SD1.5's 16GB tier on 2 H200s: 42.1
instead of 45.1 ms a step at batch 1 a GPU, 59.9 instead of 62.9 at 2, in 6.7 instead of 9.4 GiB a GPU
(BENCHMARKS.md, run AJ). Small gradients go as coalesced groups (c10d's coalescing manager: one NCCL group call,
each collective in place). How it got there: a reduce-scatter and an all-gather a weight, unbucketed, made the step
~1 ms slower than the all-reduces (NCCL ran 20.1 ms instead of 11.6, 5.2 ms of it alone; runs AD-AF); buckets
copied into rows of parts cut NCCL to 14.8 ms but the copies cost the step's kernels 3.8 ms (run AI); the
coalesced groups keep NCCL at 14.4 ms with no copies. (Reducing each whole weight into one owning process and
broadcasting it back was as slow as the first form: run AC.)

Without it every process updates every weight from the same averaged gradient with the same rounding noise (the
fused kernel's noise is a function of the seed, the step and the element; the PyTorch form's generator is
seeded alike everywhere and drawn in the same order), so the weights stay identical without being sent.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
# c10d's grouping of collectives: several reduce-scatters or all-gathers go to NCCL as one group call, each still
# in place in its own tensor. It has no public name; torch 2.1-2.13 have it.
from torch.distributed.distributed_c10d import _coalescing_manager

# Gradients smaller than this are copied into a shared buffer and all-reduced together, once the buffer holds
# about this much; larger ones are all-reduced where they lie.
BUCKET_BYTES = 8 << 20
# The sharded form's groups of in-place reduce-scatters and all-gathers: larger, since a group copies nothing (2 H200s
# at batch 1 each: 40.6 ms a step at 32 MB against 41.8 at 8, no faster with 256 MB in flight; run AL).
SHARDED_BUCKET_BYTES = 32 << 20
# Gradients whose all-reduce may be in flight while backward goes on: enough for NCCL to fall behind backward
# for a while and catch up (run Y: 16 MB cost 3.7 ms a step, 512 MB gained nothing over 128), little beside the
# weights and Adam's moments (SD1.5 in bf16: 2 GB of gradients a step).
IN_FLIGHT_BYTES = 128 << 20


@dataclass
class PendingAverage:
    tensor: torch.Tensor
    work: "dist.Work"  # or c10d's coalescing manager, for a group: either has wait()


# torch 2.13 renamed the single-tensor collectives (the old names warn); 2.11 has only the old ones
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class ProcessAverage:
    """Averages tensors over the processes of torch.distributed's default group."""

    def __init__(self, bucket_bytes: int | None = None, in_flight_bytes: int | None = None,
                 shard_updates: bool = False) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("ProcessAverage needs torch.distributed initialized (several processes)")
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()
        # read here rather than as default values, so a benchmark can set the module's constants first
        default_bucket_bytes = SHARDED_BUCKET_BYTES if shard_updates else BUCKET_BYTES
        self.bucket_bytes = default_bucket_bytes if bucket_bytes is None else bucket_bytes
        self.in_flight_bytes = IN_FLIGHT_BYTES if in_flight_bytes is None else in_flight_bytes
        # each process updates its part of every weight (ShardedGradientQueue; TrainConfig.shard_optimizer)
        self.shard_updates = shard_updates

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

    def start_gather(self, whole: torch.Tensor, part: torch.Tensor) -> PendingAverage:
        """Begin filling ``whole`` with every process's ``part``, in process order (all-gather; in place when
        ``part`` is this process's piece of ``whole``)."""
        return PendingAverage(whole, _all_gather(whole, part, async_op=True))

    def start_parts(self, wholes: list[torch.Tensor], parts: list[torch.Tensor],
                    averaged: torch.Tensor) -> PendingAverage:
        """Begin summing each ``wholes[i]`` (1-D, world_size x ``parts[i]``'s length) over the processes into
        ``parts[i]``, this process's consecutive part of the sum (reduce-scatters), as one coalesced group (NCCL
        runs it as one kernel); ``parts`` are views of ``averaged``, which ``finish`` divides in one go."""
        if len(wholes) == 1:
            return PendingAverage(averaged, _reduce_scatter(parts[0], wholes[0], op=dist.ReduceOp.SUM,
                                                            async_op=True))
        with _coalescing_manager(async_ops=True) as coalesced:
            for whole, part in zip(wholes, parts):
                _reduce_scatter(part, whole, op=dist.ReduceOp.SUM)
        return PendingAverage(averaged, coalesced)

    def start_gathers(self, wholes: list[torch.Tensor], parts: list[torch.Tensor]) -> "dist.Work":
        """``start_gather`` for each pair, as one coalesced group; wait on the result."""
        if len(wholes) == 1:
            return _all_gather(wholes[0], parts[0], async_op=True)
        with _coalescing_manager(async_ops=True) as coalesced:
            for whole, part in zip(wholes, parts):
                _all_gather(whole, part)
        return coalesced

    def padded_for_gather(self, mine: torch.Tensor, padded: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(``mine``, 1-D and at most ``padded`` long, padded with zeros to ``padded``; an empty 1-D buffer of
        ``padded`` x world_size elements): what an all-gather of parts of unequal length sends and fills."""
        padded_mine = torch.zeros(padded, dtype=mine.dtype, device=mine.device)
        padded_mine[:mine.numel()].copy_(mine)
        return padded_mine, torch.empty(padded * self.world_size, dtype=mine.dtype, device=mine.device)

    def start_gather_padded(self, mine: torch.Tensor, padded: int) -> PendingAverage:
        """Begin gathering every process's ``mine`` (1-D, at most ``padded`` long) into a new 1-D tensor of
        ``padded`` x world_size elements, each part padded with zeros to ``padded``."""
        padded_mine, whole = self.padded_for_gather(mine, padded)
        return self.start_gather(whole, padded_mine)


@dataclass
class _InFlight:
    """One all-reduce: the weights whose gradients it averages and, when it averages a copy (a bucket, or a
    gradient that is not one dense block), the gradients to copy the result back into."""
    weights: list[torch.Tensor]
    pending: PendingAverage
    bytes: int
    copy_back_into: list[torch.Tensor] = field(default_factory=list)


def _flat(tensor: torch.Tensor) -> torch.Tensor | None:
    """The tensor as a 1-D view in memory order, or None when it is not one dense block."""
    dense = tensor.is_contiguous() or (tensor.dim() == 4 and
                                       tensor.is_contiguous(memory_format=torch.channels_last))
    return tensor.as_strided((tensor.numel(),), (1,)) if dense else None


def _copy_pieces(buffer: torch.Tensor, targets: list[torch.Tensor]) -> None:
    """Copy consecutive pieces of a 1-D ``buffer`` into ``targets``."""
    pieces = buffer.reshape(-1).split([t.numel() for t in targets])
    torch._foreach_copy_(targets, [piece.view(t.shape) for piece, t in zip(pieces, targets)])


class _BucketingQueue:
    """What both queues share: a weight's gradient waits in a bucket, as (weight, the tensor to send), until the
    bucket holds ``average.bucket_bytes`` (one bucket, one dtype); ``_send_bucket`` sends it and keeps what it sent
    in ``_in_flight``, each with the ``weights`` not updated yet."""

    def __init__(self, average: ProcessAverage) -> None:
        self.average = average
        self._bucket: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._bucket_bytes = 0
        self._in_flight: deque = deque()
        self._in_flight_bytes = 0

    def __len__(self) -> int:
        """Weights not updated yet."""
        return sum(len(sent.weights) for sent in self._in_flight) + len(self._bucket)

    def _add_to_bucket(self, weight: torch.Tensor, tensor: torch.Tensor, size: int) -> None:
        if self._bucket and (self._bucket[0][1].dtype, self._bucket[0][1].device) != (tensor.dtype, tensor.device):
            self._send_bucket()  # one buffer holds one dtype
        self._bucket.append((weight, tensor))
        self._bucket_bytes += size
        if self._bucket_bytes >= self.average.bucket_bytes:
            self._send_bucket()

    def _take_bucket(self) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        """The bucket's weights, their tensors and its bytes, the bucket emptied."""
        bucket, size = self._bucket, self._bucket_bytes
        self._bucket, self._bucket_bytes = [], 0
        return [weight for weight, _ in bucket], [tensor for _, tensor in bucket], size

    def _send_bucket(self) -> None:
        raise NotImplementedError


class GradientQueue(_BucketingQueue):
    """Weights whose gradients are being averaged, in the order backward finished them.

    ``put`` takes a weight whose ``.grad`` backward has just finished; once its gradient holds the average over
    the processes, the queue calls ``update(weight)`` (which uses and frees the gradient), the oldest first, as
    soon as more than ``in_flight_bytes`` of gradients are in flight; ``drain`` does the rest (end of backward).
    Gradients under ``bucket_bytes`` wait in a bucket until it holds that much, then go as one all-reduce of
    their copy.
    """

    def __init__(self, average: ProcessAverage, update: Callable[[torch.Tensor], None]) -> None:
        super().__init__(average)  # buckets hold (weight, its flat gradient); _in_flight holds _InFlight
        self.update = update

    def put(self, weight: torch.Tensor) -> None:
        gradient = weight.grad
        if gradient is None:
            return
        size = gradient.numel() * gradient.element_size()
        flat = _flat(gradient)
        if flat is None:  # a copy in one block (backends all-reduce dense tensors), averaged, copied back
            self._send_bucket()
            self._send([weight], gradient.contiguous(), size, [gradient])
        elif size >= self.average.bucket_bytes:
            self._send_bucket()
            self._send([weight], flat, size)  # in place, through a view (channels-last ones too)
        else:
            self._add_to_bucket(weight, flat, size)
        self._finish_while_over(self.average.in_flight_bytes)

    def drain(self) -> None:
        self._send_bucket()
        self._finish_while_over(-1)

    def _send(self, weights: list[torch.Tensor], tensor: torch.Tensor, size: int,
              copy_back_into: list[torch.Tensor] | None = None) -> None:
        self._in_flight.append(_InFlight(weights, self.average.start(tensor), size, copy_back_into or []))
        self._in_flight_bytes += size

    def _send_bucket(self) -> None:
        if not self._bucket:
            return
        weights, gradients, size = self._take_bucket()
        if len(weights) == 1:
            self._send(weights, gradients[0], size)  # in place
            return
        self._send(weights, torch.cat(gradients), size, gradients)

    def _finish_while_over(self, limit: int) -> None:
        while self._in_flight and self._in_flight_bytes > limit:
            sent = self._in_flight.popleft()
            self._in_flight_bytes -= sent.bytes
            averaged = self.average.finish(sent.pending)
            if sent.copy_back_into:
                _copy_pieces(averaged, sent.copy_back_into)
            for weight in sent.weights:
                self.update(weight)


@dataclass(frozen=True)
class Part:
    """This process's part of a weight: elements [start, start + length) of its values in ``flat_order``."""
    start: int
    length: int
    padded: int  # every process's part is this long once the last is padded: the weight has padded x N elements


def part_of(weight: torch.Tensor, rank: int, world_size: int) -> Part:
    padded = -(-weight.numel() // world_size)
    start = min(rank * padded, weight.numel())
    return Part(start, min(padded, weight.numel() - start), padded)


def flat_order(tensor: torch.Tensor) -> torch.Tensor:
    """A weight's values (or a tensor laid out like it) as a 1-D view in memory order: the order the parts of a
    sharded weight, its gradient and its AdamW state follow. Weights that are not one dense block have none."""
    flat = _flat(tensor)
    if flat is None:
        raise ValueError(f"a weight of shape {tuple(tensor.shape)} and strides {tensor.stride()} is not one dense "
                         "block; sharded updates need one")
    return flat


def in_layout_of(weight: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (shaped like ``weight``) laid out in memory as ``weight`` is: itself, or a copy."""
    if tensor.stride() == weight.stride():
        return tensor
    return torch.empty_like(weight, dtype=tensor.dtype).copy_(tensor)


@dataclass
class _PartsInFlight:
    """One reduce-scatter, or a coalesced group of them (a bucket of small gradients): the weights whose parts
    it averages, their parts, and the gradients sent (kept alive until done). ``pending.tensor`` holds the
    averaged parts side by side, each padded."""
    weights: list[torch.Tensor]
    parts: list[Part]
    pending: PendingAverage
    bytes: int
    sent: list[torch.Tensor]


@dataclass
class _Gathering:
    """One all-gather of updated parts, or a coalesced group of them, and for each weight whose last part is
    padded the buffer it was gathered into, to copy into the weight (the others are gathered in place)."""
    work: "dist.Work"
    bytes: int
    copy_into: list[tuple[torch.Tensor, torch.Tensor]]  # (weight values, gathered buffer)


class ShardedGradientQueue(_BucketingQueue):
    """``GradientQueue``'s sharded form: each process updates its ``part_of`` each weight.

    ``put`` starts the reduce-scatter of a weight's gradient (as soon as backward has finished it); once done,
    ``update(weight, values, gradient, start)`` updates this process's part of the weight (``values``, a view of
    its elements from ``start``) from the averaged ``gradient`` of that part, the weight's ``.grad`` is freed, and
    the all-gather of the updated parts into every process's weight starts. ``drain`` (end of backward) returns
    once every weight is whole again everywhere (on the GPU: once the stream waits for it). The same bytes cross
    between the GPUs as with an all-reduce (an all-reduce is a reduce-scatter then an all-gather), while each
    process runs 1/N of the updates and keeps 1/N of the state.

    Gradients under ``bucket_bytes`` go together, as ``GradientQueue``'s do, but without copies: their
    reduce-scatters, and later their all-gathers, are sent as one coalesced group, each in place. (One
    reduce-scatter and one all-gather a weight took NCCL 20.1 ms a step where the bucketed all-reduces took 11.6,
    run AF; buckets copied into rows of parts took the step's kernels 3.8 ms more, run AI.)
    """

    def __init__(self, average: ProcessAverage,
                 update: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], None]) -> None:
        # buckets hold (weight, its gradient in the weight's memory order, padded); _in_flight holds
        # _PartsInFlight, the gradients being reduce-scattered
        super().__init__(average)
        self.update = update
        self._gathering: deque[_Gathering] = deque()  # all-gathers of updated parts
        self._gathering_bytes = 0

    def put(self, weight: torch.Tensor) -> None:
        gradient = weight.grad
        if gradient is None:
            return
        part = part_of(weight, self.average.rank, self.average.world_size)
        whole = self._in_weight_order(weight, gradient, part.padded * self.average.world_size)
        self._add_to_bucket(weight, whole, whole.numel() * whole.element_size())
        self._finish_while_over(self.average.in_flight_bytes)

    def drain(self) -> None:
        self._send_bucket()
        self._finish_while_over(-1)
        self._finish_gathering_while_over(-1)

    @staticmethod
    def _in_weight_order(weight: torch.Tensor, gradient: torch.Tensor, padded_numel: int) -> torch.Tensor:
        """The gradient as one 1-D block in the weight's memory order, ``padded_numel`` long (a view where it can
        be: autograd lays gradients out as their weights)."""
        if gradient.stride() == weight.stride() and gradient.numel() == padded_numel:
            return flat_order(gradient)
        whole = torch.zeros(padded_numel, dtype=gradient.dtype, device=gradient.device)
        whole[:weight.numel()].copy_(flat_order(in_layout_of(weight, gradient)))
        return whole

    def _send_bucket(self) -> None:
        """Start the reduce-scatters of the bucket's gradients: small ones, and the one that took the bucket over
        ``bucket_bytes``, which may be large (a group costs no copies, so a large gradient need not go alone)."""
        if not self._bucket:
            return
        weights, wholes, size = self._take_bucket()
        parts = [part_of(weight, self.average.rank, self.average.world_size) for weight in weights]
        averaged = torch.empty(sum(part.padded for part in parts), dtype=wholes[0].dtype, device=wholes[0].device)
        pending = self.average.start_parts(wholes, list(averaged.split([part.padded for part in parts])), averaged)
        self._in_flight.append(_PartsInFlight(weights, parts, pending, size, wholes))
        self._in_flight_bytes += size

    def _finish_while_over(self, limit: int) -> None:
        while self._in_flight and self._in_flight_bytes > limit:
            sent = self._in_flight.popleft()
            self._in_flight_bytes -= sent.bytes
            averaged = self.average.finish(sent.pending)
            wholes, mine, copy_into = [], [], []
            offset = 0
            for weight, part in zip(sent.weights, sent.parts):
                weight.grad = None
                values = flat_order(weight.detach())
                own = values[part.start:part.start + part.length]
                self.update(weight, own, averaged[offset:offset + part.length], part.start)
                offset += part.padded
                if part.padded * self.average.world_size == values.numel():  # in place: each part is a piece
                    wholes.append(values)
                    mine.append(own)
                else:  # the last part padded: gathered into a buffer, then copied into the weight
                    padded_own, buffer = self.average.padded_for_gather(own, part.padded)
                    wholes.append(buffer)
                    mine.append(padded_own)
                    copy_into.append((values, buffer))
            size = sum(whole.numel() * whole.element_size() for whole in wholes)
            self._gathering.append(_Gathering(self.average.start_gathers(wholes, mine), size, copy_into))
            self._gathering_bytes += size
            self._finish_gathering_while_over(self.average.in_flight_bytes)

    def _finish_gathering_while_over(self, limit: int) -> None:
        while self._gathering and self._gathering_bytes > limit:
            gathering = self._gathering.popleft()
            self._gathering_bytes -= gathering.bytes
            gathering.work.wait()
            for values, buffer in gathering.copy_into:
                values.copy_(buffer[:values.numel()])


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
    copies of the weights (each updates them, or its part of them and receives the rest), so this checks that they
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
