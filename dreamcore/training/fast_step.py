"""The fast step executor: the same loop and the same step, with the host kept out of the GPU's way.

``FastTrainer`` is ``Trainer`` with three step pieces replaced; the loop in run.py drives both alike, and
on the same seed both compute the same losses (up to bf16 rounding: a GPU test compares 50 steps).

- Randomness (latent sampling noise, the training noise, timesteps) is still drawn from the run's CPU
  generator, in the same order, so the numbers are identical and resume works unchanged; but it reaches the
  GPU through pinned memory without blocking. A plain ``tensor.to("cuda")`` from pageable memory waits for the
  whole GPU queue to drain, three times a step, so the CPU could never run ahead of the GPU.
- Token ids of each prompt are computed once and kept on the GPU (the prompts of a run never change).
- The UNet runs channels-last (the layout cuDNN's fastest convolution kernels want), unless
  ``channels_last`` is off.

The optimizer side of the fast path (fused AdamW) is chosen in optim.py from ``config.fast_step``, and the
memory settings (pure bf16 weights, channels-last) in ``memory_layout.py``, which every trainer uses.
"""

from __future__ import annotations

import torch

from dreamcore.training.trainer import Trainer


class FastTrainer(Trainer):
    """A Trainer whose step never waits on the GPU for its inputs (see the module docstring)."""

    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        cache: dict[str, tuple[torch.Tensor, ...]] = self.__dict__.setdefault("_token_cache", {})
        missing = [p for p in dict.fromkeys(prompts) if p not in cache]
        if missing:
            for prompt, *rows in zip(missing, *super()._tokenize(missing)):
                cache[prompt] = tuple(rows)
        return tuple(torch.stack(rows) for rows in zip(*(cache[p] for p in prompts)))

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return tensor.to(self.device)
        # pin_memory() takes a block from PyTorch's caching host allocator, which keeps it until the copy
        # has run, so the non-blocking copy never reads memory that was reused meanwhile.
        return tensor.pin_memory().to(self.device, non_blocking=True)
