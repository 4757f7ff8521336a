"""AdamW applied inside the backward pass, one weight at a time, with stochastic rounding for bf16 weights.

Why: full DreamBooth (UNet + text encoder, ~983M parameters) in 8 GB. fp32 weights, gradients and Adam
states need 16 bytes a parameter (15.7 GB). Here the weights are bf16 (2 bytes), each gradient is used and
freed as soon as backward has finished it (so ~0 bytes of gradients are held), and both Adam moments are bf16
(4 bytes): 6 bytes a parameter, 5.9 GB.

bf16 has 8 significant bits, so an update of lr 1e-6 on a weight of 0.05 (2e-5 relative) rounds to nothing
with round-to-nearest: the weights would never move. Stochastic rounding rounds up with a probability equal
to the remainder, so the expected stored weight equals the fp32 result and small updates accumulate.
With ``kahan`` a bf16 remainder per weight (2 more bytes) keeps what round-to-nearest dropped instead, so the
updates add up as in fp32, without the random walk stochastic rounding adds.

On CUDA with Triton (``fused``) each update is one kernel (fused_adamw_kernel.py); the PyTorch form below is
the reference and the path everywhere else.

With ``group_vectors`` the 1-D weights (biases, norm scales: 560 of SD1.5's 882 tensors, 0.07% of its
elements) are not updated one by one in backward: their gradients are kept (a few MB) and ``step()`` updates
them all at once from fp32 copies with PyTorch's multi-tensor fused AdamW (``VectorWeights``). One kernel a
tiny tensor cost more in launches than in work: grouped, AdamW's share of the recorded step fell from 7.2 to
5.9 ms in 356 launches instead of 882 (BENCHMARKS.md, run Q).

With several processes (``average``) each gradient is averaged across them as soon as backward has finished it,
and the update runs once that is done, while backward goes on (gradient_average.py). With ``shard_updates``
(TrainConfig.shard_optimizer) each process updates only its part of every weight (1/N of its elements) from the
averaged gradient of that part, keeps AdamW's state for that part only, and the updated parts are gathered into
every process's weight. Saving collects the whole state in the main process (``collect_state_on_main``);
loading keeps each process's part, so a state resumes with any number of processes.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.distributed as dist

from dreamcore.training.fused_adamw_kernel import fused_adamw_update, same_flat_layout
from dreamcore.training.gradient_average import (GradientQueue, ProcessAverage, ShardedGradientQueue, flat_order,
                                                  in_layout_of, part_of)

_BF16_DROPPED_BITS = 16  # bf16 is the top 16 bits of an fp32
_CHUNK = 1 << 22  # elements the PyTorch form updates at a time (16 MB fp32 temporaries)


def stochastic_round_to_bf16(values: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """fp32 -> bf16 rounding up or down at random, with P(up) = the fraction of the dropped bits."""
    bits = values.float().contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << _BF16_DROPPED_BITS, bits.shape, device=bits.device, dtype=torch.int32,
                          generator=generator)
    # Adding uniform noise below the kept bits, then truncating, rounds up exactly when the noise carries.
    rounded = noise.add_(bits).bitwise_and_(-(1 << _BF16_DROPPED_BITS))
    return rounded.view(torch.float32).to(torch.bfloat16)  # exact: the low bits are zero


def _flat_chunks(tensors: tuple[torch.Tensor, ...], chunk: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """The tensors as matching 1-D pieces of at most ``chunk`` elements (all of each at once when their
    layouts differ). The update's fp32 temporaries are then a few chunk-sized buffers, not a few copies of
    the largest weight: ~100 MB less peak memory for SD1.5's 14.7M-element convolutions."""
    if not same_flat_layout(*tensors) or tensors[0].numel() <= chunk:
        yield tensors
        return
    flat = [t.as_strided((t.numel(),), (1,)) for t in tensors]  # dense: memory order is element order
    for start in range(0, flat[0].numel(), chunk):
        yield tuple(f[start:start + chunk] for f in flat)


class InBackwardAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias correction) applied by a gradient hook on each parameter.

    The update runs when backward has finished that parameter's gradient, and the gradient is freed. The
    learning rate is read from the parameter group at that moment, so a learning-rate scheduler stepped after
    ``optimizer.step()`` works as with plain AdamW. ``step()``, called once per step as with any optimizer, only
    advances the step counts of the weights updated since the last call, all in one foreach kernel (a
    per-weight ``step += 1`` was 882 kernels, 1.2 ms of SD1.5's recorded step). With ``hold_gradients``
    the hooks only note each weight and ``step()`` applies the updates after backward, so the gradients can be
    clipped by their global norm first (they are all held at once: 2 bytes a weight in bf16). Gradient
    accumulation is impossible by design (the config refuses it). Moments are
    kept in the parameter's dtype when it is bf16 (stored with stochastic rounding too), else in fp32; the
    maths runs in fp32.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float | torch.Tensor = 1e-6,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 seed: int = 0, capturable: bool = False, fused: bool = False, kahan: bool = False,
                 group_vectors: bool = False, average: ProcessAverage | None = None,
                 hold_gradients: bool = False):
        # capturable: the step count lives on the parameter's device and the learning rate may be a device
        # tensor, so no update reads a value from the host and a CUDA graph can record the whole backward.
        # fused: each update is one Triton kernel (fused_adamw_kernel.py); it keeps the step count on the
        # device too. Weights whose tensors are not laid out alike take the PyTorch form.
        # kahan: bf16 weights are stored to the nearest bf16 and a bf16 "compensation" state keeps the
        # remainder, added back before the next update (near-fp32 accumulation for 2 more bytes a weight).
        # group_vectors: 1-D weights are updated together at step() (VectorWeights), from fp32 copies.
        # average: several processes; each gradient is averaged across them before its update.
        # hold_gradients: update at step(), after backward, so that the caller can clip the whole gradient first
        # (the quality lab learned faces ~0.05 less well without clipping: BENCHMARKS.md, "Quality").
        if hold_gradients and average is not None:
            raise ValueError("hold_gradients: several processes average and apply each gradient as backward "
                             "finishes it; gradients cannot be held for clipping there")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      capturable=capturable or fused))
        self._seed = seed
        self._fused = fused
        self._kahan = kahan
        self._hold_gradients = hold_gradients
        self._held: dict[torch.Tensor, None] = {}  # weights whose gradients wait for step(), in backward's order
        self._generators: dict[torch.device, torch.Generator] = {}
        self._seed_tensors: dict[torch.device, torch.Tensor] = {}
        self._counter_base: dict[torch.Tensor, int] = {}  # a weight's first element's index in the model
        self._uncounted: dict[torch.Tensor, None] = {}  # weights updated since step(), in update order
        self._hooks = []
        self._group_of: dict[torch.Tensor, dict] = {}  # each hooked weight's parameter group (its lr, betas...)
        # per parameter group (each has its own lr) and dtype, keyed "group index:dtype" (saved with the state)
        self._vectors: dict[str, VectorWeights] = {}
        elements = 0
        for index, group in enumerate(self.param_groups):
            vectors = [p for p in group["params"] if p.requires_grad and p.dim() == 1] if group_vectors else []
            for dtype in dict.fromkeys(p.dtype for p in vectors):
                self._vectors[f"{index}:{dtype}"] = VectorWeights([p for p in vectors if p.dtype == dtype], group,
                                                                  average)
            grouped = set(vectors)
            for parameter in group["params"]:
                if parameter.requires_grad and parameter not in grouped:
                    self._hooks.append(parameter.register_post_accumulate_grad_hook(self._on_gradient))
                    self._group_of[parameter] = group
                    self._counter_base[parameter] = elements
                    elements += parameter.numel()
        if fused and elements >= 1 << 32:
            raise ValueError(f"the fused AdamW kernel numbers elements in 32 bits; this model trains {elements}")
        # several processes: the gradients averaged as backward finishes them; with shard_updates each process
        # updates its part of every weight and keeps the state of that part only (gradient_average.py)
        self._average = average
        self._sharded = average is not None and average.shard_updates
        # the main process's own state parts while the whole state is collected for saving (a recorded CUDA graph
        # updates these very tensors: they must be the ones kept afterwards)
        self._parts_aside: dict[tuple[torch.Tensor, str], torch.Tensor] = {}
        if self._sharded:
            for parameter in self._group_of:
                flat_order(parameter.detach())  # raises for a weight that is not one dense block
        self._averaging = (ShardedGradientQueue(average, self._update_part) if self._sharded else
                           GradientQueue(average, self._update_and_free) if average is not None else None)

    def _on_gradient(self, parameter: torch.Tensor) -> None:
        """Backward has finished ``parameter``'s gradient: update it now, or, with several processes, once the
        gradient is averaged (the queue updates the weights whose averages are done); with ``hold_gradients``
        at ``step()``."""
        if self._hold_gradients:
            self._held[parameter] = None
        elif self._averaging is None:
            self._update_and_free(parameter)
        else:
            self._averaging.put(parameter)

    @torch.no_grad()
    def _update_and_free(self, parameter: torch.Tensor) -> None:
        self._update(parameter, parameter, parameter.grad, 0)
        parameter.grad = None  # the point of this optimizer: no gradient outlives its update

    @torch.no_grad()
    def _update_part(self, parameter: torch.Tensor, values: torch.Tensor, grad: torch.Tensor, start: int) -> None:
        """Sharded: this process's part of ``parameter`` (``values``, its elements from ``start`` in memory
        order) from the averaged gradient of that part; its state is that part's."""
        self._update(parameter, values, grad, start)

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[device]

    def _seed_tensor(self, device: torch.device) -> torch.Tensor:
        if device not in self._seed_tensors:
            self._seed_tensors[device] = torch.tensor(self._seed, dtype=torch.int64, device=device)
        return self._seed_tensors[device]

    def _update(self, parameter: torch.Tensor, values: torch.Tensor, grad: torch.Tensor | None, start: int) -> None:
        """AdamW on ``values`` (the parameter, or its part from element ``start``) with its state, kept under
        ``parameter``."""
        if grad is None:
            return
        group = self._group_of[parameter]
        state = self.state[parameter]
        moment_dtype = torch.bfloat16 if parameter.dtype == torch.bfloat16 else torch.float32
        capturable = group.get("capturable", False)
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=parameter.device if capturable else "cpu")
            state["exp_avg"] = torch.zeros_like(values, dtype=moment_dtype)
            state["exp_avg_sq"] = torch.zeros_like(values, dtype=moment_dtype)
            if self._kahan and parameter.dtype == torch.bfloat16:
                state["compensation"] = torch.zeros_like(values)
        if (capturable or self._fused) and state["step"].device != parameter.device:
            state["step"] = state["step"].to(parameter.device)  # a state saved by a run that kept it on the host
        if parameter in self._uncounted:  # updated twice without step() in between: count the first one now
            state["step"] += 1
        self._uncounted[parameter] = None
        if values.numel() == 0:  # sharded: a weight too small to have a part in every process
            return
        compensation = state.get("compensation")
        tensors = (values, grad, state["exp_avg"], state["exp_avg_sq"])
        kahan = () if compensation is None else (compensation,)
        if self._fused and same_flat_layout(*tensors, *kahan):
            fused_adamw_update(*tensors, completed_steps=state["step"], lr=group["lr"],
                               seed=self._seed_tensor(parameter.device),
                               counter_base=self._counter_base[parameter] + start, betas=group["betas"],
                               eps=group["eps"],
                               weight_decay=group["weight_decay"], compensation=compensation)
            return
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        if capturable:  # the same formula, with the step count and lr as device tensors
            step = state["step"] + 1  # this update's number: the count holds the updates before it
            bias_correction1 = 1 - torch.pow(beta1, step)
            bias_correction2 = 1 - torch.pow(beta2, step)
        else:
            step = float(state["step"]) + 1
            bias_correction1 = 1 - beta1 ** step
            bias_correction2 = 1 - beta2 ** step
        decay = 1 - lr * weight_decay
        step_size = lr / bias_correction1
        for weight_part, grad_part, avg_part, avg_sq_part, *compensation_part in _flat_chunks(tensors + kahan, _CHUNK):
            grad32 = grad_part.float()
            exp_avg = avg_part.float().lerp_(grad32, 1 - beta1)
            exp_avg_sq = avg_sq_part.float().mul_(beta2).addcmul_(grad32, grad32, value=1 - beta2)
            del grad32
            self._store(avg_part, exp_avg)
            self._store(avg_sq_part, exp_avg_sq)
            # Out of place: for fp32 moments exp_avg and exp_avg_sq are the optimizer's state itself.
            denominator = (exp_avg_sq / bias_correction2).sqrt_().add_(eps)
            update = (exp_avg / denominator).mul_(step_size)
            del denominator, exp_avg, exp_avg_sq
            if not compensation_part:
                weights = weight_part.float().mul_(decay).sub_(update)
                self._store(weight_part, weights)
            else:  # Kahan: the exact weight is the bf16 value plus the kept remainder
                remainder = compensation_part[0]
                weights = (weight_part.float() + remainder.float()).mul_(decay).sub_(update)
                weight_part.copy_(weights)  # to the nearest bf16
                remainder.copy_(weights.sub_(weight_part.float()))

    def _store(self, target: torch.Tensor, values: torch.Tensor) -> None:
        """Write fp32 results into a bf16 tensor with stochastic rounding (fp32 tensors: exactly). The moments
        need it as much as the weights: with round-to-nearest, v's 0.1% decay a step would never register."""
        if target.dtype == torch.bfloat16:
            target.copy_(stochastic_round_to_bf16(values, self._generator(target.device)))
        else:
            target.copy_(values)

    def rounding_generators(self) -> list[torch.Generator]:
        """The generators of the stochastic rounding (a CUDA graph that records the updates must register them)."""
        return list(self._generators.values())

    def state_dict(self) -> dict:
        """Adam's state plus the rounding generators' states, so a resumed run rounds as an unbroken one."""
        saved = super().state_dict()
        saved["rounding_generators"] = {str(device): generator.get_state()
                                        for device, generator in self._generators.items()}
        saved["vector_weights"] = {key: vectors.state_dict() for key, vectors in self._vectors.items()}
        return saved

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        generators = state_dict.pop("rounding_generators", {})
        vector_states = state_dict.pop("vector_weights", {})
        super().load_state_dict(state_dict)
        for device, generator_state in generators.items():
            self._generator(torch.device(device)).set_state(generator_state.cpu())
        for key, vectors in self._vectors.items():
            if key in vector_states:
                vectors.load_state_dict(vector_states[key])
            else:  # a state saved without grouping: carry each 1-D weight's own moments over
                vectors.adopt_per_weight_state(self.state)
        self.keep_own_parts_only()  # a state saved by any number of processes holds every weight's whole state

    def keep_own_parts_only(self) -> None:
        """Sharded: keep, of each weight's whole state (loaded, or collected for saving), this process's part
        (after a collection: the very tensors it held before)."""
        if not self._sharded:
            return
        for parameter, state in self.state.items():
            if parameter not in self._group_of or not state or state["exp_avg"].shape != parameter.shape:
                continue
            part = part_of(parameter, self._average.rank, self._average.world_size)
            for key in ("exp_avg", "exp_avg_sq", "compensation"):
                if (parameter, key) in self._parts_aside:
                    state[key] = self._parts_aside.pop((parameter, key))
                elif key in state:
                    whole = flat_order(in_layout_of(parameter, state[key]))  # in the weight's memory order
                    state[key] = whole[part.start:part.start + part.length].clone()

    @torch.no_grad()
    def collect_state_on_main(self) -> None:
        """Sharded: put each weight's whole state, gathered from every process's part, in the main process, so
        that its ``state_dict()`` is the state one process keeps (every process must call this; saving does).
        ``keep_own_parts_only`` cuts it back to the main process's parts."""
        if not self._sharded:
            return
        rank, world_size = self._average.rank, self._average.world_size
        weights = list(self._group_of)
        has_state = torch.tensor([int(bool(self.state.get(w))) for w in weights], dtype=torch.int32,
                                 device=weights[0].device)
        dist.all_reduce(has_state)
        if not set(has_state.tolist()) <= {0, world_size}:  # every process updates its part at the same steps
            raise RuntimeError("the processes' optimizer states cover different weights: they did not train alike")
        for weight, held in zip(weights, has_state.tolist()):
            if not held:
                continue
            state, part = self.state[weight], part_of(weight, rank, world_size)
            for key in ("exp_avg", "exp_avg_sq", "compensation"):
                if key not in state:
                    continue
                mine = state[key]
                pending = self._average.start_gather_padded(mine, part.padded)
                pending.work.wait()
                gathered = pending.tensor
                if rank == 0:
                    whole = torch.empty_like(weight, dtype=mine.dtype)  # laid out as the weight, as one process's
                    flat_order(whole).copy_(gathered[:weight.numel()])
                    self._parts_aside[(weight, key)] = mine
                    state[key] = whole

    def release_state(self) -> None:
        """Drop every weight's optimizer state (after the last step: room for the export)."""
        self.state.clear()
        for vectors in self._vectors.values():
            vectors.release_state()

    @torch.no_grad()
    def step(self, closure=None):
        """The updates ran inside backward (with ``hold_gradients``: run them now, on the gradients as the
        caller left them, clipped or not); count them (one foreach kernel per device)."""
        loss = closure() if closure is not None else None
        for parameter in self._held:
            self._update_and_free(parameter)
        self._held.clear()
        if self._averaging is not None:  # the last gradients of backward, still being averaged (and sent)
            self._averaging.drain()
        counts: dict[torch.device, list[torch.Tensor]] = {}
        for parameter in self._uncounted:
            state = self.state.get(parameter)
            if state:  # (release_optimizer_memory drops the state after the last step)
                counts.setdefault(state["step"].device, []).append(state["step"])
        for same_device in counts.values():
            torch._foreach_add_(same_device, 1.0)
        self._uncounted.clear()
        for vectors in self._vectors.values():
            vectors.update()
        return loss

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()


class VectorWeights:
    """The 1-D weights of one dtype in one parameter group, updated together by PyTorch's multi-tensor fused
    AdamW.

    Each weight has an fp32 copy (its master) that AdamW updates; the weight is then that copy rounded to its
    own dtype. Exact for fp32 weights; for bf16 ones more precise than stochastic rounding or Kahan (the copy
    keeps every bit). The update reads the group's lr at each step (a float, or the device tensor a CUDA graph
    records) and launches a fixed number of kernels however many weights there are: a few concatenations and
    casts, then AdamW's multi-tensor kernels.
    """

    def __init__(self, weights: list[torch.Tensor], group: dict, average: ProcessAverage | None = None):
        self.weights = weights
        self.group = group
        self.average = average  # several processes: one all-reduce of all the gradients together
        self.masters: list[torch.Tensor] | None = None
        self.adamw: torch.optim.AdamW | None = None

    def _build(self) -> None:
        """The fp32 copies and their AdamW, made at the first update (after a resume has set the weights)."""
        device = self.weights[0].device
        self.masters = [w.detach().float().clone() for w in self.weights]
        on_gpu = device.type == "cuda"
        # capturable: steps and the lr stay on the GPU, so a CUDA graph can record the update
        self.adamw = torch.optim.AdamW(self.masters, lr=self.group["lr"], betas=self.group["betas"],
                                       eps=self.group["eps"], weight_decay=self.group["weight_decay"],
                                       fused=True, capturable=on_gpu)

    @torch.no_grad()
    def update(self) -> None:
        """AdamW on every 1-D weight that has a gradient (as torch's AdamW, one without is left alone); the
        gradients are freed."""
        if all(w.grad is None for w in self.weights):
            return
        if self.adamw is None:
            self._build()
        pairs = [(w, m) for w, m in zip(self.weights, self.masters) if w.grad is not None]
        weights, masters = [w for w, _ in pairs], [m for _, m in pairs]
        sizes = [w.numel() for w in weights]
        # fp32 gradients as views into one buffer: one concatenation and one cast instead of a cast a weight
        flat_grads = torch.cat([w.grad for w in weights]).float()
        if self.average is not None:
            self.average.now(flat_grads)
        for master, grad in zip(masters, flat_grads.split(sizes)):
            master.grad = grad
        self.adamw.param_groups[0]["lr"] = self.group["lr"]  # the schedule moves the outer group's lr
        self.adamw.step()
        rounded = torch.cat(masters).to(weights[0].dtype)  # 1-D: concatenated as they are
        torch._foreach_copy_(weights, list(rounded.split(sizes)))
        for weight, master in pairs:
            master.grad = None
            weight.grad = None

    def state_dict(self) -> dict:
        """fp32 copies, moments and step counts (the lr is the outer group's: not saved here)."""
        if self.adamw is None:
            return {}
        return {"masters": [m.detach().clone() for m in self.masters],
                "moments": [{key: self.adamw.state[m][key].detach().clone() for key in ("step", "exp_avg", "exp_avg_sq")}
                            for m in self.masters]}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``, on this run's device (the saving run's may differ)."""
        if not state:
            self.masters = self.adamw = None
            return
        self._build()
        for master, saved_master, saved in zip(self.masters, state["masters"], state["moments"], strict=True):
            master.copy_(saved_master)
            self._set_moments(master, saved["step"], saved["exp_avg"], saved["exp_avg_sq"])

    def _set_moments(self, master: torch.Tensor, step: torch.Tensor, exp_avg: torch.Tensor,
                     exp_avg_sq: torch.Tensor) -> None:
        # torch's fused AdamW keeps the step count as an fp32 scalar on the weight's device
        self.adamw.state[master] = {"step": step.to(device=master.device, dtype=torch.float32).reshape(()),
                                    "exp_avg": exp_avg.to(master.device, torch.float32),
                                    "exp_avg_sq": exp_avg_sq.to(master.device, torch.float32)}

    def adopt_per_weight_state(self, per_weight: dict) -> None:
        """Start from the moments and step counts a state saved without grouping kept for each 1-D weight."""
        if not all(per_weight.get(w) for w in self.weights):
            return  # nothing saved yet (a state from before the first step)
        self._build()
        for master, weight in zip(self.masters, self.weights):
            state = per_weight.pop(weight)
            if "compensation" in state:  # Kahan: the weight's exact value is the bf16 one plus the remainder
                master.add_(state["compensation"].to(master.device, torch.float32))
            self._set_moments(master, state["step"], state["exp_avg"], state["exp_avg_sq"])

    def release_state(self) -> None:
        self.masters = self.adamw = None
