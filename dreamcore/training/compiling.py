"""torch.compile for the training step (compile_unet, compile_text_encoder), with its kernels kept between runs."""

from __future__ import annotations

import os
from pathlib import Path

import torch

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
