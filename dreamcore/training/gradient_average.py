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

With ``shard_updates`` (TrainConfig.shard_optimizer; ZeRO stage 1) a gradient is reduce-scattered instead: each
process gets the average of its part of the weight (1/N of its elements), updates that part, keeps AdamW's state
for it only, and the updated parts are all-gathered into every process's weight (``ShardedGradientQueue``). An
all-reduce is a reduce-scatter then an all-gather, so the same bytes cross between the GPUs, and each process
holds 1/N of the state: 6.7 instead of 9.4 GiB a GPU for SD1.5's 16GB tier on 2 GPUs. It does not make the step
faster although each GPU runs half of AdamW's 6.9 ms: 46.1 against 45.1 ms a step at batch 1 a GPU, 63.3
against 62.9 at 2 (BENCHMARKS.md, run AD). The profile (run AF) says why: the step's own kernels ran 3.0 ms less,
but NCCL's ran 20.1 ms instead of 11.6 (a reduce-scatter and an all-gather a weight, against bucketed
all-reduces), 5.2 ms of it with nothing of the step's beside it instead of 0.9. Hence it is opt-in, for memory.
(Reducing each whole weight into one owning process and broadcasting it back, tried first, gave the same times
and memory: run AC.)
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
        self.bucket_bytes = BUCKET_BYTES if bucket_bytes is None else bucket_bytes
        self.in_flight_bytes = IN_FLIGHT_BYTES if in_flight_bytes is None else in_flight_bytes
        # each process updates its part of every weight (ShardedGradientQueue; TrainConfig.shard_optimizer)
        self.shard_updates = shard_updates

    def start(self, tensor: torch.Tensor) -> PendingAverage:
        """Begin summing ``tensor`` over the processes (asynchronous: ``finish`` waits for it)."""
        # SUM then a division, not ReduceOp.AVG: gloo (CPU) has no AVG.
        return PendingAverage(tensor, dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True))

    def start_part(self, whole: torch.Tensor, part: torch.Tensor) -> PendingAverage:
        """Begin summing ``whole`` (1-D, world_size x part's length) over the processes into ``part``, this
        process's consecutive part of the sum (reduce-scatter)."""
        return PendingAverage(part, _reduce_scatter(part, whole, op=dist.ReduceOp.SUM, async_op=True))

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

    def start_gather_padded(self, mine: torch.Tensor, padded: int) -> PendingAverage:
        """Begin gathering every process's ``mine`` (1-D, at most ``padded`` long) into a new 1-D tensor of
        ``padded`` x world_size elements, each part padded with zeros to ``padded``."""
        padded_mine = torch.zeros(padded, dtype=mine.dtype, device=mine.device)
        padded_mine[:mine.numel()].copy_(mine)
        whole = torch.empty(padded * self.world_size, dtype=mine.dtype, device=mine.device)
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


class GradientQueue:
    """Weights whose gradients are being averaged, in the order backward finished them.

    ``put`` takes a weight whose ``.grad`` backward has just finished; once its gradient holds the average over
    the processes, the queue calls ``update(weight)`` (which uses and frees the gradient), the oldest first, as
    soon as more than ``in_flight_bytes`` of gradients are in flight; ``drain`` does the rest (end of backward).
    Gradients under ``bucket_bytes`` wait in a bucket until it holds that much, then go as one all-reduce of
    their copy.
    """

    def __init__(self, average: ProcessAverage, update: Callable[[torch.Tensor], None]) -> None:
        self.average = average
        self.update = update
        self._bucket: list[tuple[torch.Tensor, torch.Tensor]] = []  # (weight, its flat gradient), not sent yet
        self._bucket_bytes = 0
        self._in_flight: deque[_InFlight] = deque()
        self._in_flight_bytes = 0

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
            if self._bucket and (self._bucket[0][1].dtype, self._bucket[0][1].device) != (flat.dtype, flat.device):
                self._send_bucket()  # one buffer holds one dtype
            self._bucket.append((weight, flat))
            self._bucket_bytes += size
            if self._bucket_bytes >= self.average.bucket_bytes:
                self._send_bucket()
        self._finish_while_over(self.average.in_flight_bytes)

    def drain(self) -> None:
        self._send_bucket()
        self._finish_while_over(-1)

    def __len__(self) -> int:
        """Weights not updated yet."""
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
    """One reduce-scatter: the weights whose parts it averages (one large weight, or a bucket of small ones whose
    parts lie side by side in each process's piece), their parts, and the buffer sent (kept alive until done)."""
    weights: list[torch.Tensor]
    parts: list[Part]
    pending: PendingAverage
    bytes: int
    sent: torch.Tensor


@dataclass
class _Gathering:
    """One all-gather of updated parts, and where its result goes: nothing to copy when it gathered in place into
    a weight, else (weight values, offset, padded part length) for each weight, copied out of the gathered rows."""
    pending: PendingAverage
    bytes: int
    copy_into: list[tuple[torch.Tensor, int, int]]


class ShardedGradientQueue:
    """``GradientQueue``'s sharded form: each process updates its ``part_of`` each weight.

    ``put`` starts the reduce-scatter of a weight's gradient (as soon as backward has finished it); once done,
    ``update(weight, values, gradient, start)`` updates this process's part of the weight (``values``, a view of
    its elements from ``start``) from the averaged ``gradient`` of that part, the weight's ``.grad`` is freed, and
    the all-gather of the updated parts into every process's weight starts. ``drain`` (end of backward) returns
    once every weight is whole again everywhere (on the GPU: once the stream waits for it). The same bytes cross
    between the GPUs as with an all-reduce (an all-reduce is a reduce-scatter then an all-gather), while each
    process runs 1/N of the updates and keeps 1/N of the state.

    Gradients under ``bucket_bytes`` go together, as ``GradientQueue``'s do: the bucket is sent as N rows, row r
    holding process r's part of each of its gradients side by side, so one reduce-scatter gives each process the
    averages of its own parts, and one all-gather of the updated parts, copied out row by row, makes the weights
    whole again. (Unbucketed, a reduce-scatter and an all-gather a weight took NCCL 20.1 ms a step where the
    bucketed all-reduces took 11.6; run AF.)
    """

    def __init__(self, average: ProcessAverage,
                 update: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], None]) -> None:
        self.average = average
        self.update = update
        # (weight, its part, its gradient in the weight's memory order), not sent yet; one dtype pair a bucket
        self._bucket: list[tuple[torch.Tensor, Part, torch.Tensor]] = []
        self._bucket_bytes = 0
        self._in_flight: deque[_PartsInFlight] = deque()  # gradients being reduce-scattered
        self._in_flight_bytes = 0
        self._gathering: deque[_Gathering] = deque()  # all-gathers of updated parts
        self._gathering_bytes = 0

    def put(self, weight: torch.Tensor) -> None:
        gradient = weight.grad
        if gradient is None:
            return
        part = part_of(weight, self.average.rank, self.average.world_size)
        world_size = self.average.world_size
        size = part.padded * world_size * gradient.element_size()
        if size >= self.average.bucket_bytes:
            self._send_bucket()
            whole = self._in_weight_order(weight, gradient, part.padded * world_size)
            self._send([weight], [part], whole)
        else:
            if self._bucket and self._bucket_key(self._bucket[0]) != (gradient.dtype, weight.dtype, gradient.device):
                self._send_bucket()  # one buffer holds one dtype, and so does the gathered one
            self._bucket.append((weight, part, self._in_weight_order(weight, gradient, weight.numel())))
            self._bucket_bytes += size
            if self._bucket_bytes >= self.average.bucket_bytes:
                self._send_bucket()
        self._finish_while_over(self.average.in_flight_bytes)

    def drain(self) -> None:
        self._send_bucket()
        self._finish_while_over(-1)
        self._finish_gathering_while_over(-1)

    def __len__(self) -> int:
        """Weights not updated yet."""
        return sum(len(sent.weights) for sent in self._in_flight) + len(self._bucket)

    @staticmethod
    def _bucket_key(entry: tuple[torch.Tensor, Part, torch.Tensor]) -> tuple:
        weight, _, gradient = entry
        return gradient.dtype, weight.dtype, gradient.device

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
        if not self._bucket:
            return
        bucket, self._bucket, self._bucket_bytes = self._bucket, [], 0
        world_size = self.average.world_size
        weights, parts = [w for w, _, _ in bucket], [p for _, p, _ in bucket]
        # row r: process r's part of each gradient, padded (a gradient padded to N parts, viewed as N rows)
        rows = torch.cat([torch.nn.functional.pad(gradient, (0, part.padded * world_size - gradient.numel()))
                          .view(world_size, part.padded) for _, part, gradient in bucket], dim=1)
        self._send(weights, parts, rows.view(-1))

    def _send(self, weights: list[torch.Tensor], parts: list[Part], whole: torch.Tensor) -> None:
        size = whole.numel() * whole.element_size()
        averaged_parts = torch.empty(whole.numel() // self.average.world_size, dtype=whole.dtype,
                                     device=whole.device)
        self._in_flight.append(_PartsInFlight(weights, parts, self.average.start_part(whole, averaged_parts), size,
                                              whole))
        self._in_flight_bytes += size

    def _finish_while_over(self, limit: int) -> None:
        while self._in_flight and self._in_flight_bytes > limit:
            sent = self._in_flight.popleft()
            self._in_flight_bytes -= sent.bytes
            averaged = self.average.finish(sent.pending)
            updated: list[tuple[torch.Tensor, torch.Tensor, Part]] = []
            offset = 0
            for weight, part in zip(sent.weights, sent.parts):
                weight.grad = None
                values = flat_order(weight.detach())
                mine = values[part.start:part.start + part.length]
                self.update(weight, mine, averaged[offset:offset + part.length], part.start)
                updated.append((values, mine, part))
                offset += part.padded
            self._gather(updated)
            self._finish_gathering_while_over(self.average.in_flight_bytes)

    def _gather(self, updated: list[tuple[torch.Tensor, torch.Tensor, Part]]) -> None:
        world_size = self.average.world_size
        values, mine, part = updated[0]
        if len(updated) == 1 and part.padded * world_size == values.numel():
            # in place: every part is a piece of the weight
            self._add_gathering(_Gathering(self.average.start_gather(values, mine), values.numel() *
                                           values.element_size(), []))
            return
        # this process's updated parts side by side, each padded; gathered as N such rows, then copied out
        row = torch.cat([torch.nn.functional.pad(mine, (0, part.padded - part.length))
                         for _, mine, part in updated])
        gathered = torch.empty(row.numel() * world_size, dtype=row.dtype, device=row.device)
        copy_into, offset = [], 0
        for values, _, part in updated:
            copy_into.append((values, offset, part.padded))
            offset += part.padded
        self._add_gathering(_Gathering(self.average.start_gather(gathered, row),
                                       gathered.numel() * gathered.element_size(), copy_into))

    def _add_gathering(self, gathering: _Gathering) -> None:
        self._gathering.append(gathering)
        self._gathering_bytes += gathering.bytes

    def _finish_gathering_while_over(self, limit: int) -> None:
        while self._gathering and self._gathering_bytes > limit:
            gathering = self._gathering.popleft()
            self._gathering_bytes -= gathering.bytes
            gathering.pending.work.wait()
            if not gathering.copy_into:
                continue
            rows = gathering.pending.tensor.view(self.average.world_size, -1)
            targets = [values for values, _, _ in gathering.copy_into]
            pieces = [rows[:, offset:offset + padded].reshape(-1)[:values.numel()]
                      for values, offset, padded in gathering.copy_into]
            torch._foreach_copy_(targets, pieces)


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
