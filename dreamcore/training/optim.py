"""The optimizer and learning-rate schedule of a run."""

from __future__ import annotations

import logging
from typing import Iterable

import torch

from dreamcore.config import TrainConfig

log = logging.getLogger(__name__)


def eight_bit_adam_problem(device: torch.device) -> str | None:
    """Why bitsandbytes' 8-bit AdamW cannot run here, or None when it can."""
    if device.type != "cuda":
        return f"8-bit Adam needs a CUDA GPU; training runs on {device.type}"
    try:
        import bitsandbytes  # noqa: F401
    except (ImportError, RuntimeError, OSError) as error:  # a broken CUDA setup raises from the import
        return f"bitsandbytes cannot be loaded ({error}); install it with `pip install bitsandbytes`"
    return None


def build_optimizer(config: TrainConfig, parameters: Iterable[torch.nn.Parameter], device: torch.device,
                    warn) -> torch.optim.Optimizer:
    """AdamW, 8-bit from bitsandbytes when asked for and possible (else plain AdamW, with one warning)."""
    kwargs = dict(lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    parameters = list(parameters)
    if config.optimizer_in_backward:
        return _in_backward_adamw(config, parameters, device, warn)
    if config.use_8bit_adam:
        problem = eight_bit_adam_problem(device)
        if problem is None:
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit(parameters, **kwargs)
        warn(f"use_8bit_adam: {problem}. Using standard AdamW instead (same maths, more memory).")
    if config.cuda_graph and device.type == "cuda":
        # Recordable: the step count and the learning rate live on the GPU (the schedule fills the lr tensor
        # in place), so the replayed step reads this step's values instead of the recorded ones.
        kwargs["lr"] = torch.tensor(config.learning_rate, dtype=torch.float32, device=device)
        return torch.optim.AdamW(parameters, fused=True, capturable=True, **kwargs)
    if config.fast_step and device.type == "cuda":
        # One fused kernel per dtype group instead of a dozen foreach launches a step (fast path only).
        return torch.optim.AdamW(parameters, fused=True, **kwargs)
    return torch.optim.AdamW(parameters, foreach=device.type == "cuda", **kwargs)


def _in_backward_adamw(config: TrainConfig, parameters: list[torch.nn.Parameter],
                       device: torch.device, warn) -> torch.optim.Optimizer:
    from dreamcore.training.fused_adamw_kernel import fused_kernel_problem
    from dreamcore.training.in_backward_adamw import InBackwardAdamW
    from dreamcore.training.gradient_average import ProcessAverage

    several = torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1
    recordable = config.cuda_graph and device.type == "cuda"  # see the fused AdamW above
    lr = torch.tensor(config.learning_rate, dtype=torch.float32, device=device) if recordable else config.learning_rate
    # One Triton kernel an update where it can run; the same maths as ~25 PyTorch kernels (a few times faster).
    problem = fused_kernel_problem(device)
    if problem is not None and device.type == "cuda":
        warn(f"optimizer_in_backward: {problem}, so each weight's update runs as ~25 PyTorch kernels instead of "
             "one fused kernel: the same maths, several times slower.")
    return InBackwardAdamW(parameters, lr=lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
                           weight_decay=config.adam_weight_decay, seed=config.seed, capturable=recordable,
                           fused=problem is None, kahan=config.bf16_rounding == "kahan", group_vectors=True,
                           average=ProcessAverage(shard_updates=config.shard_optimizer) if several else None)


def build_lr_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """The schedule, stepped once per optimizer step (so warm-up and length are in optimizer steps)."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(config.lr_scheduler, optimizer=optimizer, num_warmup_steps=config.lr_warmup_steps,
                         num_training_steps=total_steps, num_cycles=config.lr_num_cycles, power=config.lr_power)
