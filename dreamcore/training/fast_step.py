"""The fast step executor: the same loop and the same step, with the host kept out of the GPU's way.

``FastTrainer`` is ``Trainer`` with three step pieces replaced; the loop in loop.py drives both alike, and
on the same seed both compute the same losses (up to bf16 rounding: a GPU test compares 50 steps).

- Randomness (latent sampling noise, the training noise, timesteps) is still drawn from the run's CPU
  generator, in the same order, so the numbers are identical and resume works unchanged; but it reaches the
  GPU through pinned memory without blocking. A plain ``tensor.to("cuda")`` from pageable memory waits for the
  whole GPU queue to drain, three times a step, so the CPU could never run ahead of the GPU.
- Token ids of each prompt are computed once and kept on the GPU (the prompts of a run never change).
- The UNet runs channels-last (the layout cuDNN's fastest convolution kernels want), unless
  ``channels_last`` is off.

The optimizer side of the fast path (fused AdamW) is chosen in optim.py from ``config.fast_step``, and the
memory settings (pure bf16 weights, optimizer in backward) in ``apply_memory_layout`` below, which the
plain ``Trainer`` calls too.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dreamcore.components import ModelComponents
from dreamcore.config import TrainConfig
from dreamcore.training.loop import Trainer


def apply_memory_layout(models: ModelComponents, config: TrainConfig, device: torch.device) -> None:
    """Cast and lay out the trained modules as the config asks, before the optimizer sees them."""
    if config.pure_bf16:
        models.unet.to(device, dtype=torch.bfloat16)
        if config.text_encoder_trains:
            models.text_encoder.to(device, dtype=torch.bfloat16)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # give the fp32 copies back, so the device total shows the real need
    if config.fast_step and config.channels_last and device.type == "cuda":
        models.unet.to(memory_format=torch.channels_last)


# torch.compile's backend for compile_unet and compile_text_encoder. Tests on the CPU use "aot_eager" (the same
# captured forward and backward graphs, run by PyTorch instead of generated kernels), which needs no compiler
# and takes seconds.
COMPILE_BACKEND = "inductor"


def compile_cache_dir() -> Path:
    """Where TorchInductor keeps what it compiled for dreamcore (its own default is under /tmp, which many
    systems empty at every restart: the next run would compile again for ~2 minutes, BENCHMARKS.md run T)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dreamcore" / "torchinductor"


def keep_compiled_kernels() -> str:
    """Point TorchInductor's cache (compiled graphs and their Triton kernels) at ``compile_cache_dir()``, unless
    the user chose a folder with TORCHINDUCTOR_CACHE_DIR; returns the folder in use."""
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache_dir())
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def compile_for_training(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` (the UNet or the text encoder) compiled for the training step. It shares its weights with
    ``module``; the in-backward AdamW's hooks still run per weight, after the compiled backward has produced
    all of its gradients, so they are all held at once (2 bytes a weight in bf16); the fused activations make
    room for most of them: the 16GB tier's peak rose by 0.2 GiB on an H100 with the UNet compiled
    (BENCHMARKS.md, run O)."""
    import importlib.util

    from dreamcore.training.setup import TrainingError

    if device.type == "cuda" and COMPILE_BACKEND == "inductor" and importlib.util.find_spec("triton") is None:
        raise TrainingError("compile_unet / compile_text_encoder: TorchInductor generates Triton kernels on a GPU "
                            "and Triton is not installed (`pip install triton`; on Windows `pip install "
                            "triton-windows`). Install it or set both false.")
    keep_compiled_kernels()
    return torch.compile(module, backend=COMPILE_BACKEND)


class FastTrainer(Trainer):
    """A Trainer whose step never waits on the GPU for its inputs (see the module docstring)."""

    def _tokenize(self, prompts: list[str]) -> torch.Tensor:
        cache: dict[str, torch.Tensor] = self.__dict__.setdefault("_token_cache", {})
        missing = [p for p in dict.fromkeys(prompts) if p not in cache]
        if missing:
            for prompt, row in zip(missing, super()._tokenize(missing)):
                cache[prompt] = row
        return torch.stack([cache[p] for p in prompts])

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return tensor.to(self.device)
        # pin_memory() takes a block from PyTorch's caching host allocator, which keeps it until the copy
        # has run, so the non-blocking copy never reads memory that was reused meanwhile.
        return tensor.pin_memory().to(self.device, non_blocking=True)
