"""keep_channels_last: diffusers' .contiguous() calls leave channels-last activations as they are."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dreamcore.config import ConfigError, TrainConfig
from dreamcore.tiny import build_tiny_model
from dreamcore.training.layout import KeepChannelsLast, keeping_channels_last


class CountCopies(TorchDispatchMode):
    """Counts the layout copies the dispatcher sees (``.contiguous()`` of a channels-last tensor is a clone)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.clone.default, torch.ops.aten.copy_.default):
            self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _step(unet, call, inputs):
    unet.zero_grad(set_to_none=True)
    copies = CountCopies()
    with copies:
        out = call(*inputs).sample
        out.float().pow(2).mean().backward()
    grads = {name: p.grad.clone() for name, p in unet.named_parameters()}
    return out.detach(), grads, sum(copies.counts.values())


def test_the_unet_computes_the_same_with_fewer_copies() -> None:
    unet = build_tiny_model().unet.to(memory_format=torch.channels_last)
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 8, 8).to(memory_format=torch.channels_last)
    inputs = (latents, torch.tensor([10, 500]), torch.randn(2, 77, 32))
    plain_out, plain_grads, plain_copies = _step(unet, unet, inputs)
    kept_out, kept_grads, kept_copies = _step(unet, keeping_channels_last(unet), inputs)
    assert plain_copies > 0 and kept_copies < plain_copies  # the tiny UNet's transformer outputs and shortcuts
    assert torch.allclose(kept_out, plain_out, atol=1e-5, rtol=1e-4)
    for name, grad in plain_grads.items():
        assert torch.allclose(kept_grads[name], grad, atol=1e-5, rtol=1e-4), name
    assert kept_out.is_contiguous(memory_format=torch.channels_last)


def test_only_argumentless_contiguous_of_channels_last_4d_tensors_changes() -> None:
    channels_last = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    transposed = torch.randn(4, 6).t()
    nchw = torch.randn(2, 3, 4, 5)
    with KeepChannelsLast():
        assert channels_last.contiguous() is channels_last
        explicit = channels_last.contiguous(memory_format=torch.contiguous_format)
        other = transposed.contiguous()
        same = nchw.contiguous()
    assert explicit.is_contiguous() and not explicit.is_contiguous(memory_format=torch.channels_last)
    assert other.is_contiguous() and torch.equal(other, transposed)
    assert same is nchw
    assert not channels_last.contiguous().is_contiguous(memory_format=torch.channels_last)  # outside: as usual


def test_the_config_says_what_keep_channels_last_needs(tmp_path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    base = dict(pretrained_model_name_or_path=str(tmp_path), instance_data_dir=str(photos),
                instance_prompt="photo of ukj person", output_dir=str(tmp_path / "out"), keep_channels_last=True)
    with pytest.raises(ConfigError) as error:
        TrainConfig(**base, fast_step=False).validate()
    assert "keep_channels_last: needs fast_step and channels_last" in str(error.value)
    for fine in (TrainConfig(**base, fast_step=True), TrainConfig(**base, fast_step=True, compile_unet=True)):
        assert not [p for p in fine.problems() if "keep_channels_last" in p]


def test_the_compiler_traces_the_mode_so_the_copies_never_enter_its_graph() -> None:
    """With compile_unet, keep_channels_last wraps the compiled UNet: dynamo traces the mode, so the captured
    graph has no .contiguous() where the model calls it (without the mode it has one). A convolution pair stands in
    for diffusers' blocks (a transformer block's output before its 1x1 projection): tracing SD's UNet takes long."""
    import torch._dynamo

    class ProjectedBlock(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = torch.nn.Conv2d(4, 8, 3, padding=1)
            self.proj_out = torch.nn.Conv2d(8, 8, 1)

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            return self.proj_out(self.block(hidden).contiguous())  # as diffusers' Transformer2DModel does

    graphs: list[torch.fx.GraphModule] = []

    def capture(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    model = ProjectedBlock().to(memory_format=torch.channels_last)
    hidden = torch.randn(2, 4, 8, 8).to(memory_format=torch.channels_last)

    def contiguous_calls(call) -> tuple[int, torch.Tensor]:
        graphs.clear()
        torch._dynamo.reset()
        with torch.no_grad():
            out = call(hidden)
        return sum(1 for g in graphs for node in g.graph.nodes if node.target == "contiguous"), out

    plain_calls, plain_out = contiguous_calls(torch.compile(model, backend=capture))
    kept_calls, kept_out = contiguous_calls(keeping_channels_last(torch.compile(model, backend=capture)))
    torch._dynamo.reset()
    assert (plain_calls, kept_calls) == (1, 0)
    assert torch.allclose(kept_out, plain_out, atol=1e-6)
