"""The in-backward AdamW update of one weight as a single GPU kernel (Triton).

Why: written as PyTorch operations, the update of one weight (moments, bias correction, weight decay,
stochastic rounding of three bf16 tensors) is ~25 kernels that each read and write fp32 temporaries: ~150
bytes of memory traffic an element and ~22,000 launches a step for SD1.5's 882 trained tensors. The 8GB
profile spent most of its step there. Fused, an element costs what it must: read weight, gradient and both
moments, write weight and both moments (14 bytes in bf16), and no temporary memory at all.

Same maths as ``InBackwardAdamW``'s PyTorch form (in_backward_adamw.py), which stays the reference and the
path on CPUs and on machines without Triton. The rounding noise differs (Philox keyed by the run's seed, the
step and the element's index in the model, instead of a torch.Generator's stream): the same distribution,
not the same numbers. Keyed that way, the noise needs no generator state: a replayed CUDA graph and a resumed
run draw fresh, reproducible numbers from the step count they already keep on the GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch

_BLOCK = 1024


OLDEST_TRITON = (3, 0)  # the versions tested: 3.6 on an H100, 3.9 in the CPU interpreter
OLDEST_CAPABILITY = (8, 0)  # Ampere: native bf16


def fused_kernel_problem(device: torch.device) -> str | None:
    """Why the fused kernel cannot run on ``device``, or None when it can."""
    if device.type != "cuda":
        return f"the fused AdamW kernel runs on CUDA GPUs; training runs on {device.type}"
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (`pip install triton`; on Windows `pip install triton-windows`)"
    import triton

    version = _version_tuple(triton.__version__)
    if version < OLDEST_TRITON:
        return (f"Triton {triton.__version__} is older than {'.'.join(map(str, OLDEST_TRITON))} (it comes with "
                "torch: torch 2.4 or newer brings Triton 3)")
    capability = torch.cuda.get_device_capability(device)
    if capability < OLDEST_CAPABILITY:
        return (f"this GPU's compute capability is {capability[0]}.{capability[1]}; the fused kernel is built for "
                f"{OLDEST_CAPABILITY[0]}.{OLDEST_CAPABILITY[1]} (Ampere) or newer")
    return None


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def same_flat_layout(*tensors: torch.Tensor) -> bool:
    """True when the tensors are dense, non-overlapping and laid out alike, so element i of one is element i
    of the others at the same offset from each data pointer (contiguous and channels-last weights are)."""
    first = tensors[0]
    dense = first.is_contiguous() or (first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last))
    return dense and all(t.shape == first.shape and t.stride() == first.stride() for t in tensors[1:])


@functools.cache
def _kernel():
    return importlib.import_module("dreamcore.training.adamw_triton").adamw_kernel


def fused_adamw_update(parameter: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                       exp_avg_sq: torch.Tensor, completed_steps: torch.Tensor, lr: float | torch.Tensor,
                       seed: torch.Tensor, counter_base: int, betas: tuple[float, float], eps: float,
                       weight_decay: float, compensation: torch.Tensor | None = None) -> None:
    """One AdamW update of ``parameter`` in place, in one kernel launch (no host sync: a CUDA graph can record
    it). ``completed_steps`` (float32, one element, on the device) counts the updates before this one: this is
    update ``completed_steps + 1``, and the caller advances the count afterwards (InBackwardAdamW.step: all
    weights' counts in one foreach kernel instead of a kernel each). ``seed`` is an int64 device scalar;
    ``counter_base`` is this weight's first element's index in the model (distinct noise per weight).
    The tensors must share one flat layout (``same_flat_layout``). bf16 moments are stored with stochastic
    rounding, fp32 ones exactly; bf16 weights too, or, given a bf16 ``compensation`` tensor, Kahan-style: the
    nearest bf16, with the remainder kept in ``compensation`` and added back before the next update."""
    import triton

    beta1, beta2 = betas
    lr_on_device = isinstance(lr, torch.Tensor)
    numel = parameter.numel()
    unused = parameter  # a placeholder pointer the kernel never reads (its constexpr flag is off)
    _kernel()[(triton.cdiv(numel, _BLOCK),)](
        parameter, grad, exp_avg, exp_avg_sq, unused if compensation is None else compensation, completed_steps,
        lr if lr_on_device else unused, 0.0 if lr_on_device else float(lr), seed, counter_base, numel,
        beta1, beta2, _log2(beta1), _log2(beta2), eps, weight_decay,
        LR_ON_DEVICE=lr_on_device, ROUND_WEIGHTS=parameter.dtype == torch.bfloat16,
        ROUND_MOMENTS=exp_avg.dtype == torch.bfloat16, KAHAN=compensation is not None, BLOCK=_BLOCK)


def _log2(beta: float) -> float:
    return math.log2(beta) if beta > 0 else -math.inf  # beta 0: no averaging, a bias correction of 1
