"""The optimizer and learning-rate schedule of a run."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from dreamcore.components import TEXT_ENCODER_NAMES
from dreamcore.config import TOKEN_EMBEDDING_LR_RATIO, TrainConfig

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


TEXT_ENCODER_GROUP = "text_encoder"  # the "name" of the text encoder's parameter group
TEXT_ENCODER_GROUPS = TEXT_ENCODER_NAMES  # every text encoder's group (SDXL has two) is named after its field
TOKEN_EMBEDDING_GROUP = "token_embedding"  # the rare tokens' embedding rows (train_token_embedding)


def parameter_groups(config: TrainConfig, modules: dict[str, torch.nn.Module],
                     learning_rate: float) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one per trained module ("unet", "text_encoder"), each named, holding the
    weights that train; the text encoder's at ``text_encoder_lr`` when it is set. An embedding that trains in a
    few rows only (``train_token_embedding``) has a group of its own ("token_embedding") at ``token_embedding_lr``
    with no weight decay, which would otherwise shrink the rows that do not train. Rates given for one part are
    scaled as ``learning_rate`` is (scale_lr)."""
    scale = learning_rate / config.learning_rate
    groups = []
    for name, module in modules.items():
        weights = [p for p in module.parameters() if p.requires_grad]
        rows_only = [p for p in weights if hasattr(p, "trained_rows")]
        group: dict[str, Any] = {"params": [p for p in weights if not hasattr(p, "trained_rows")], "name": name}
        if name in TEXT_ENCODER_GROUPS and config.text_encoder_lr is not None:
            group["lr"] = config.text_encoder_lr * scale
        if group["params"]:
            groups.append(group)
        if rows_only:
            token_lr = config.token_embedding_lr if config.token_embedding_lr is not None else \
                TOKEN_EMBEDDING_LR_RATIO * config.learning_rate
            groups.append({"params": rows_only, "name": TOKEN_EMBEDDING_GROUP, "lr": token_lr * scale,
                           "weight_decay": 0.0})
    return groups


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer dreamcore can train with, by name, and what the trainer must know of it."""

    name: str
    build: Callable[[TrainConfig, list, torch.device, Callable[[str], None]], torch.optim.Optimizer]
    # Each weight is updated as soon as backward has produced its gradient (hooks on the weights), so no
    # whole gradient is kept: the trainer then averages gradients across processes inside backward too.
    updates_in_backward: bool = False


def _adamw(config: TrainConfig, parameters: list, device: torch.device, warn) -> torch.optim.Optimizer:
    """PyTorch's AdamW in the form the step executor wants (recordable, fused or foreach)."""
    kwargs = _adam_arguments(config)
    if config.cuda_graph and device.type == "cuda":
        # Recordable: the step count and the learning rate live on the GPU (the schedule fills the lr tensor
        # in place), so the replayed step reads this step's values instead of the recorded ones.
        kwargs["lr"] = torch.tensor(config.learning_rate, dtype=torch.float32, device=device)
        return torch.optim.AdamW(_lr_on_device(parameters, device), fused=True, capturable=True, **kwargs)
    if config.fast_step and device.type == "cuda":
        # One fused kernel per dtype group instead of a dozen foreach launches a step (fast path only).
        return torch.optim.AdamW(parameters, fused=True, **kwargs)
    return torch.optim.AdamW(parameters, foreach=device.type == "cuda", **kwargs)


def _adamw_8bit(config: TrainConfig, parameters: list, device: torch.device, warn) -> torch.optim.Optimizer:
    """bitsandbytes' 8-bit AdamW where it can run; elsewhere plain AdamW, with one warning."""
    problem = eight_bit_adam_problem(device)
    if problem is None:
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(parameters, **_adam_arguments(config))
    warn(f"use_8bit_adam: {problem}. Using standard AdamW instead (same maths, more memory).")
    return _adamw(config, parameters, device, warn)


def _adam_arguments(config: TrainConfig) -> dict[str, Any]:
    return dict(lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)


def _in_backward_adamw(config: TrainConfig, parameters: list[torch.nn.Parameter],
                       device: torch.device, warn) -> torch.optim.Optimizer:
    from dreamcore.training.fused_adamw_kernel import fused_kernel_problem
    from dreamcore.training.in_backward_adamw import InBackwardAdamW
    from dreamcore.training.gradient_average import ProcessAverage

    several = torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1
    recordable = config.cuda_graph and device.type == "cuda"  # see the fused AdamW above
    lr = torch.tensor(config.learning_rate, dtype=torch.float32, device=device) if recordable else config.learning_rate
    if recordable:
        parameters = _lr_on_device(parameters, device)
    # One Triton kernel an update where it can run; the same maths as ~25 PyTorch kernels (a few times faster).
    problem = fused_kernel_problem(device)
    if problem is not None and device.type == "cuda":
        warn(f"optimizer_in_backward: {problem}, so each weight's update runs as ~25 PyTorch kernels instead of "
             "one fused kernel: the same maths, several times slower.")
    clipping = config.max_grad_norm > 0
    if clipping and several:
        warn(f"max_grad_norm: with several processes optimizer_in_backward averages and applies each gradient as "
             f"backward finishes it, so the whole gradient is never held to be clipped: training without clipping "
             f"(set max_grad_norm 0 to say so, or optimizer_in_backward off to clip at {config.max_grad_norm}).")
    return InBackwardAdamW(parameters, lr=lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
                           weight_decay=config.adam_weight_decay, seed=config.seed, capturable=recordable,
                           fused=problem is None, kahan=config.bf16_rounding == "kahan", group_vectors=True,
                           average=ProcessAverage(shard_updates=config.shard_optimizer) if several else None,
                           hold_gradients=clipping and not several)


OPTIMIZERS: dict[str, OptimizerSpec] = {spec.name: spec for spec in (
    OptimizerSpec("adamw", _adamw),
    OptimizerSpec("adamw_8bit", _adamw_8bit),
    OptimizerSpec("adamw_in_backward", _in_backward_adamw, updates_in_backward=True),
)}


def optimizer_name(config: TrainConfig) -> str:
    """The optimizer a config's settings name (optimizer_in_backward, use_8bit_adam): the one place they are read."""
    if config.optimizer_in_backward:
        return "adamw_in_backward"
    if config.use_8bit_adam:
        return "adamw_8bit"
    return "adamw"


def optimizer_spec(config: TrainConfig) -> OptimizerSpec:
    return OPTIMIZERS[optimizer_name(config)]


def build_optimizer(config: TrainConfig, parameters: Iterable[torch.nn.Parameter] | list[dict[str, Any]],
                    device: torch.device, warn) -> torch.optim.Optimizer:
    """The optimizer the config names (``optimizer_name``), built for ``parameters``: the weights, or parameter
    groups (``parameter_groups``). ``warn`` receives a line where the optimizer runs otherwise than asked."""
    return optimizer_spec(config).build(config, list(parameters), device, warn)


def _lr_on_device(parameters: list, device: torch.device) -> list:
    """Parameter groups with a learning rate of their own get it as a device tensor, as a recorded step needs."""
    return [{**group, "lr": torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)}
            if isinstance(group, dict) and "lr" in group else group for group in parameters]


def text_encoder_last_step(config: TrainConfig, total_steps: int) -> int:
    """How many optimizer steps the text encoder trains for (``text_encoder_steps_ratio`` of the run)."""
    return round(config.text_encoder_steps_ratio * total_steps)


def build_lr_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """The schedule, stepped once per optimizer step (so warm-up and length are in optimizer steps). The text
    encoder's group follows it until ``text_encoder_last_step``, then its rate is 0: AdamW leaves it unchanged."""
    from diffusers.optimization import get_scheduler

    schedule = get_scheduler(config.lr_scheduler, optimizer=optimizer, num_warmup_steps=config.lr_warmup_steps,
                             num_training_steps=total_steps, num_cycles=config.lr_num_cycles, power=config.lr_power)
    last = text_encoder_last_step(config, total_steps)
    if last >= total_steps:
        return schedule
    # diffusers' schedules are LambdaLR, one factor function per group: the text encoder's is gated.
    factors = list(schedule.lr_lambdas)
    for index, group in enumerate(optimizer.param_groups):
        if group.get("name") in TEXT_ENCODER_GROUPS:
            # a partial, not a closure: a saved schedule then holds its (empty) attributes and no code
            factors[index] = functools.partial(_factor_until, factor=factors[index], last=last)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def _factor_until(step: int, factor, last: int) -> float:
    """A schedule's factor before step ``last``, 0 from there on."""
    return factor(step) if step < last else 0.0
