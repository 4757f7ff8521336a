"""The fused in-backward AdamW kernel, run on the CPU by Triton's interpreter (the GPU test is in tests/bench)."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton", reason="the fused kernel is written in Triton")

from dreamcore.training.fused_adamw_kernel import (  # noqa: E402
    fused_adamw_update, fused_kernel_problem, same_flat_layout)
from dreamcore.config import TrainConfig  # noqa: E402
from dreamcore.training.in_backward_adamw import InBackwardAdamW  # noqa: E402

HYPER = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)


@pytest.fixture(autouse=True)
def interpreted_kernel():
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("these tests run the kernel on CPU tensors in Triton's interpreter (tests/conftest.py)")


def _state(shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(shape, generator=generator).to(dtype)
    grad = torch.randn(shape, generator=generator).to(dtype)
    exp_avg = (0.1 * torch.randn(shape, generator=generator)).to(dtype)
    exp_avg_sq = (0.01 * torch.rand(shape, generator=generator)).to(dtype)
    return weights, grad, exp_avg, exp_avg_sq


def _reference(weights, grad, exp_avg, exp_avg_sq, step, lr):
    """AdamW in fp64, the formula of InBackwardAdamW's PyTorch form."""
    beta1, beta2 = HYPER["betas"]
    w, g, m, v = (t.double() for t in (weights, grad, exp_avg, exp_avg_sq))
    m = m + (1 - beta1) * (g - m)
    v = v * beta2 + (1 - beta2) * g * g
    denominator = (v / (1 - beta2 ** step)).sqrt() + HYPER["eps"]
    w = w * (1 - lr * HYPER["weight_decay"]) - m / denominator * (lr / (1 - beta1 ** step))
    return w, m, v


@pytest.mark.parametrize("lr_on_device", [False, True])
def test_fp32_update_is_adamw(lr_on_device: bool) -> None:
    weights, grad, exp_avg, exp_avg_sq = _state((3000,))
    expected_w, expected_m, expected_v = _reference(weights, grad, exp_avg, exp_avg_sq, step=7, lr=1e-2)
    lr = torch.tensor(1e-2) if lr_on_device else 1e-2
    fused_adamw_update(weights, grad, exp_avg, exp_avg_sq, completed_steps=torch.tensor(6.0), lr=lr,
                       seed=torch.tensor(0), counter_base=0, **HYPER)
    assert torch.allclose(weights.double(), expected_w, rtol=1e-5, atol=1e-6)
    assert torch.allclose(exp_avg.double(), expected_m, rtol=1e-5, atol=1e-7)
    assert torch.allclose(exp_avg_sq.double(), expected_v, rtol=1e-5, atol=1e-9)


def test_bf16_results_round_to_a_neighbour_at_random_and_without_bias() -> None:
    count = 1 << 16
    weights = torch.full((count,), 1.0, dtype=torch.bfloat16)
    # lr 1e-3 moves every weight by ~1e-3: between the bf16 neighbours 1.0 and 0.99609375
    grad = torch.ones(count, dtype=torch.bfloat16)
    exp_avg, exp_avg_sq = torch.zeros_like(weights), torch.zeros_like(weights)
    fused_adamw_update(weights, grad, exp_avg, exp_avg_sq, completed_steps=torch.tensor(0.0), lr=1e-3,
                       seed=torch.tensor(5), counter_base=0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    exact = 1.0 - 1e-3  # bias-corrected Adam's first step is lr * sign(grad)
    assert set(weights.float().unique().tolist()) == {0.99609375, 1.0}
    assert abs(weights.float().mean().item() - exact) < 5e-5
    assert torch.tensor(exact).to(torch.bfloat16).item() == 1.0  # round-to-nearest would lose the step
    assert abs(exp_avg.float().mean().item() - 0.1) < 1e-3  # moments are rounded stochastically too
    assert abs(exp_avg_sq.float().mean().item() - 1e-3) < 1e-5


def test_noise_is_fresh_each_step_and_reproducible_from_seed_step_and_position() -> None:
    def rounded(seed: int, step: float, counter_base: int) -> torch.Tensor:
        weights = torch.full((4096,), 1.0, dtype=torch.bfloat16)
        grad = torch.ones_like(weights)
        fused_adamw_update(weights, grad, torch.zeros_like(weights), torch.zeros_like(weights),
                           completed_steps=torch.tensor(step - 1), lr=1e-3, seed=torch.tensor(seed),
                           counter_base=counter_base, betas=(0.0, 0.0), eps=1e-8, weight_decay=0.0)
        return weights

    first = rounded(seed=1, step=3.0, counter_base=0)
    assert torch.equal(first, rounded(seed=1, step=3.0, counter_base=0))  # a resumed run rounds the same
    assert not torch.equal(first, rounded(seed=1, step=4.0, counter_base=0))  # the next step draws anew
    assert not torch.equal(first, rounded(seed=2, step=3.0, counter_base=0))
    assert not torch.equal(first, rounded(seed=1, step=3.0, counter_base=4096))  # another weight's noise


def test_in_backward_adamw_with_the_fused_kernel_trains_like_the_pytorch_form() -> None:
    torch.manual_seed(0)
    reference_model, fused_model = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    fused_model.load_state_dict(reference_model.state_dict())
    reference = InBackwardAdamW(reference_model.parameters(), lr=1e-2, **HYPER)
    fused = InBackwardAdamW(fused_model.parameters(), lr=torch.tensor(1e-2), fused=True, **HYPER)
    schedules = [torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4))
                 for optimizer in (reference, fused)]
    for model, optimizer, schedule in zip((reference_model, fused_model), (reference, fused), schedules):
        torch.manual_seed(3)
        for _ in range(10):
            inputs = torch.randn(8, 6)
            (model(inputs) - inputs.sum(1, keepdim=True)).pow(2).mean().backward()
            optimizer.step()
            schedule.step()
    for a, b in zip(fused_model.parameters(), reference_model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        assert a.grad is None
    assert fused.state[fused_model.weight]["step"].item() == 10


def test_only_tensors_laid_out_alike_share_the_flat_kernel() -> None:
    weight = torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last)
    assert same_flat_layout(weight, torch.zeros_like(weight), torch.zeros_like(weight))
    assert not same_flat_layout(weight, torch.zeros(8, 4, 3, 3))  # contiguous vs channels-last
    assert not same_flat_layout(torch.randn(4, 6).t(), torch.randn(6, 4))  # a transposed view


def test_fused_kernel_problem_names_what_this_machine_lacks(monkeypatch) -> None:
    import importlib.util

    import triton

    cuda = torch.device("cuda")
    assert "cpu" in fused_kernel_problem(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))  # as on an RTX 4090
    assert fused_kernel_problem(cuda) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))  # a GTX 1080
    assert "compute capability is 6.1" in fused_kernel_problem(cuda)
    monkeypatch.setattr(triton, "__version__", "2.1.0")  # what A1111 1.10's torch 2.1.2 brings
    assert "Triton 2.1.0 is older than 3.0" in fused_kernel_problem(cuda)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "triton" else real_find_spec(name, *rest))
    assert "Triton is not installed" in fused_kernel_problem(cuda)


def test_kahan_kernel_keeps_the_remainder_as_the_pytorch_form_does() -> None:
    generator = torch.Generator().manual_seed(4)
    start = (1 + torch.rand(5000, generator=generator)).to(torch.bfloat16)
    grad = torch.randn(5000, generator=generator).to(torch.bfloat16)
    results = []
    for fused in (False, True):
        weight = torch.nn.Parameter(start.clone())
        optimizer = InBackwardAdamW([weight], lr=torch.tensor(1e-5), fused=fused, kahan=True, **HYPER)
        for _ in range(3):
            (weight * grad).sum().backward()
        compensation = optimizer.state[weight]["compensation"]
        assert compensation.abs().max() > 0  # the updates are far below bf16's spacing: all in the remainder
        results.append(weight.detach().float() + compensation.float())
    assert torch.allclose(results[0], results[1], rtol=1e-6, atol=0)


def test_a_gpu_without_the_fused_kernel_warns_and_takes_the_pytorch_form(monkeypatch) -> None:
    from dreamcore.training.optim import build_optimizer

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # a Turing card
    config = TrainConfig(optimizer_in_backward=True, pure_bf16=True, max_grad_norm=0.0, mixed_precision="bf16",
                         use_8bit_adam=False, bf16_rounding="kahan", memory_preset="none")
    warnings = []
    optimizer = build_optimizer(config, torch.nn.Linear(4, 4).parameters(), torch.device("cuda"), warnings.append)
    assert isinstance(optimizer, InBackwardAdamW) and not optimizer._fused and optimizer._kahan
    assert len(warnings) == 1 and "compute capability is 7.5" in warnings[0] and "same maths" in warnings[0]
    optimizer = build_optimizer(config, torch.nn.Linear(4, 4).parameters(), torch.device("cpu"), warnings.append)
    assert not optimizer._fused and len(warnings) == 1  # a CPU run is not warned: there is no faster kernel
