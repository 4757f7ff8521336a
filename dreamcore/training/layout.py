"""Channels-last activations kept through the UNet's ``.contiguous()`` calls (``keep_channels_last``).

Why: with a channels-last UNet (``channels_last``), diffusers still calls ``.contiguous()`` on 4-D activations
in places written for the default layout - each transformer block's output before its 1x1 projection, each
resnet's input before its shortcut convolution (30 calls a forward in SD1.5's UNet). On a channels-last tensor
that is a full copy to NCHW, after which the next convolution converts back, forward and backward: part of the
recorded step's 380 layout copies (4.9 ms of 40.6, BENCHMARKS.md run Q; most of the rest are GroupNorm's, whose
CUDA kernel makes its input NCHW itself, 61 times a forward). Those convolutions accept either layout, so
returning the channels-last tensor as it is computes the same values without these copies.

Only argument-less ``.contiguous()`` on 4-D tensors already dense in channels-last order is changed; every
other call, and every explicit memory format, runs as written.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode


class KeepChannelsLast(TorchFunctionMode):
    """While active, ``t.contiguous()`` returns ``t`` itself when ``t`` is a dense channels-last 4-D tensor."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.contiguous and len(args) == 1 and not kwargs:
            tensor = args[0]
            if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
                return tensor
        return func(*args, **kwargs)


def keeping_channels_last(module: Callable[..., Any]) -> Callable[..., Any]:
    """``module`` called under ``KeepChannelsLast`` (the forward only: backward then has no copies to undo)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        with KeepChannelsLast():
            return module(*args, **kwargs)

    return call
