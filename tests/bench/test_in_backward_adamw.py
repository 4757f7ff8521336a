"""The 8 GB preset's optimizer: AdamW inside backward, stochastic rounding to bf16."""

from __future__ import annotations

import pytest
import torch

from dreamcore.training.in_backward_adamw import InBackwardAdamW, stochastic_round_to_bf16


def test_stochastic_rounding_is_unbiased_where_nearest_rounding_loses_the_update() -> None:
    value = 1.0 + 1e-3  # between the bf16 neighbours 1.0 and 1.0078125
    values = torch.full((200_000,), value)
    rounded = stochastic_round_to_bf16(values, torch.Generator().manual_seed(0)).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0078125}
    assert abs(rounded.mean().item() - value) < 5e-5
    assert values.to(torch.bfloat16).float().unique().tolist() == [1.0]  # nearest: the 1e-3 is gone
    negative = stochastic_round_to_bf16(-values, torch.Generator().manual_seed(1)).float()
    assert abs(negative.mean().item() + value) < 5e-5


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    torch.manual_seed(3)
    losses = []
    for _ in range(steps):
        inputs = torch.randn(8, 6)
        loss = (model(inputs.to(next(model.parameters()).dtype)).float() - inputs.sum(1, keepdim=True)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_fp32_weights_follow_torch_adamw() -> None:
    torch.manual_seed(0)
    reference = torch.nn.Linear(6, 1)
    ours = torch.nn.Linear(6, 1)
    ours.load_state_dict(reference.state_dict())
    kwargs = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    expected = _train(reference, torch.optim.AdamW(reference.parameters(), **kwargs), 20)
    in_backward = InBackwardAdamW(ours.parameters(), **kwargs)
    got = _train(ours, in_backward, 20)
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    for a, b in zip(ours.parameters(), reference.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        assert a.grad is None  # freed inside backward
    assert float(in_backward.state[ours.weight]["step"]) == 20


def test_step_counts_the_updates_and_a_second_backward_before_it_counts_too() -> None:
    """step() advances every updated weight's count at once; an update without step() after it still counts."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = InBackwardAdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 3)).sum().backward()
    assert float(optimizer.state[model.weight]["step"]) == 0  # the update ran as update 1; step() counts it
    optimizer.step()
    assert [float(optimizer.state[p]["step"]) for p in model.parameters()] == [1.0, 1.0]
    model(torch.randn(2, 3)).sum().backward()
    model(torch.randn(2, 3)).sum().backward()  # no step() in between: the second update is number 3
    optimizer.step()
    assert [float(optimizer.state[p]["step"]) for p in model.parameters()] == [3.0, 3.0]


def test_capturable_form_computes_the_same_updates_with_a_tensor_lr_and_a_schedule() -> None:
    """The CUDA graph records the capturable form: step count and lr as tensors, the lr refilled by a schedule."""
    torch.manual_seed(0)
    plain_model, tensor_model = torch.nn.Linear(6, 1), torch.nn.Linear(6, 1)
    tensor_model.load_state_dict(plain_model.state_dict())
    start = plain_model.weight.detach().clone()
    kwargs = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    plain = InBackwardAdamW(plain_model.parameters(), lr=1e-2, **kwargs)
    recordable = InBackwardAdamW(tensor_model.parameters(), lr=torch.tensor(1e-2), capturable=True, **kwargs)
    plain_schedule = torch.optim.lr_scheduler.LambdaLR(plain, lambda step: min(1.0, (step + 1) / 5))
    tensor_schedule = torch.optim.lr_scheduler.LambdaLR(recordable, lambda step: min(1.0, (step + 1) / 5))
    live_lr = recordable.param_groups[0]["lr"]
    for model, optimizer, schedule in ((plain_model, plain, plain_schedule),
                                       (tensor_model, recordable, tensor_schedule)):
        torch.manual_seed(3)
        for _ in range(12):
            inputs = torch.randn(8, 6)
            (model(inputs) - inputs.sum(1, keepdim=True)).pow(2).mean().backward()  # updates inside backward
            optimizer.step()
            schedule.step()
    assert recordable.param_groups[0]["lr"] is live_lr  # the schedule refilled the tensor the graph reads
    assert isinstance(recordable.state[tensor_model.weight]["step"], torch.Tensor)
    assert (plain_model.weight - start).abs().max() > 1e-2  # the weights really moved
    for a, b in zip(tensor_model.parameters(), plain_model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)  # fp32 lr tensor vs a Python float


def test_bf16_weights_move_with_a_tiny_learning_rate() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1).to(torch.bfloat16)
    before = model.weight.detach().float().clone()
    optimizer = InBackwardAdamW(model.parameters(), lr=1e-4, weight_decay=0.0, seed=0)
    _train(model, optimizer, 50)
    moved = (model.weight.detach().float() - before).abs().max().item()
    # 50 Adam steps of ~1e-4 each move a weight by up to ~5e-3, far below bf16's spacing at 0.3 (2e-3)
    # for any single step: only stochastic rounding lets them add up.
    assert moved > 5e-4
    assert optimizer.state[model.weight]["exp_avg"].dtype == torch.bfloat16


def test_bf16_second_moment_decays_as_in_fp32() -> None:
    """v's decay of 0.1% a step is below bf16's resolution: it only shows with stochastic rounding."""
    weight = torch.nn.Parameter(torch.ones(20_000, dtype=torch.bfloat16))
    optimizer = InBackwardAdamW([weight], lr=0.0, weight_decay=0.0, seed=0)
    (weight * 1.0).sum().backward()  # gradient 1: v = 0.001
    for _ in range(200):
        (weight * 0.0).sum().backward()  # gradient 0: v decays by 0.999 a step
    expected = 0.001 * 0.999 ** 200
    assert abs(optimizer.state[weight]["exp_avg_sq"].float().mean().item() - expected) < 0.02 * expected


@pytest.mark.gpu
def test_fused_kernel_on_gpu_is_adamw_and_rounds_without_bias_also_when_replayed_from_a_cuda_graph() -> None:
    from dreamcore.training.fused_adamw_kernel import fused_adamw_update, fused_kernel_problem

    device = torch.device("cuda")
    assert fused_kernel_problem(device) is None
    hyper = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    # fp32, channels-last like the UNet's convolutions: AdamW to fp32 precision
    shape = (320, 320, 3, 3)
    weights, grad = (torch.randn(shape, device=device).to(memory_format=torch.channels_last) for _ in range(2))
    exp_avg, exp_avg_sq = 0.1 * torch.randn_like(weights), 0.01 * torch.rand_like(weights)
    w, g, m, v = (t.double() for t in (weights, grad, exp_avg, exp_avg_sq))
    m = m + 0.1 * (g - m)
    v = v * 0.999 + 0.001 * g * g
    expected = w * (1 - 1e-3 * 1e-2) - m / ((v / (1 - 0.999 ** 5)).sqrt() + 1e-8) * (1e-3 / (1 - 0.9 ** 5))
    fused_adamw_update(weights, grad, exp_avg, exp_avg_sq, completed_steps=torch.tensor(4.0, device=device),
                       lr=torch.tensor(1e-3, device=device), seed=torch.tensor(0, device=device), counter_base=0,
                       **hyper)
    assert torch.allclose(weights.double(), expected, rtol=1e-5, atol=1e-6)

    # bf16 inside a CUDA graph: each replay draws fresh noise from the step count; the mean stays exact
    count = 1 << 20
    weights = torch.ones(count, dtype=torch.bfloat16, device=device)
    grad = torch.ones_like(weights)
    exp_avg, exp_avg_sq = torch.zeros_like(weights), torch.zeros_like(weights)
    step, lr, seed = (torch.tensor(0.0, device=device), torch.tensor(1e-3, device=device),
                      torch.tensor(7, device=device))

    def update() -> None:
        exp_avg.zero_(), exp_avg_sq.zero_(), weights.fill_(1.0)
        fused_adamw_update(weights, grad, exp_avg, exp_avg_sq, completed_steps=step, lr=lr, seed=seed,
                           counter_base=0, betas=(0.0, 0.0), eps=1e-8, weight_decay=0.0)
        step.add_(1)

    update()  # compiles the kernel outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        update()
    graph.replay()
    first = weights.clone()
    graph.replay()
    assert step.item() == 3.0  # the warm-up call and two replays (capturing runs nothing)
    assert not torch.equal(first, weights)
    for rounded in (first, weights):
        assert set(rounded.float().unique().tolist()) == {0.99609375, 1.0}
        assert abs(rounded.float().mean().item() - (1 - 1e-3)) < 2e-5

    # Kahan on the GPU: the kernel keeps the same remainder as the PyTorch form (which runs on the GPU too)
    start = (1 + torch.rand(100_000, device=device)).to(torch.bfloat16)
    grad = torch.randn(100_000, device=device).to(torch.bfloat16)
    exact = []
    for fused in (False, True):
        weight = torch.nn.Parameter(start.clone())
        optimizer = InBackwardAdamW([weight], lr=torch.tensor(1e-5, device=device), fused=fused, kahan=True,
                                    capturable=True, **hyper)
        for _ in range(3):
            (weight * grad).sum().backward()
        exact.append(weight.detach().float() + optimizer.state[weight]["compensation"].float())
    assert torch.allclose(exact[0], exact[1], rtol=1e-6, atol=0)


def _follow_gradients(weight: torch.nn.Parameter, optimizer: torch.optim.Optimizer, grads: torch.Tensor) -> None:
    for grad in grads:
        (weight * grad.to(weight.dtype)).sum().backward()  # the gradient is exactly `grad`
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_kahan_bf16_weights_accumulate_small_updates_as_fp32_does() -> None:
    """Kahan's remainder keeps what bf16 rounding drops: bf16 weights then follow fp32 AdamW closely, where
    stochastic rounding follows it only on average (and round-to-nearest not at all)."""
    start = 1.0 + torch.rand(20_000, generator=torch.Generator().manual_seed(0))
    grads = torch.randn(60, 20_000, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).float()
    kwargs = dict(lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    reference = torch.nn.Parameter(start.to(torch.bfloat16).float())
    _follow_gradients(reference, torch.optim.AdamW([reference], **kwargs), grads)
    movement = (reference.detach() - start.to(torch.bfloat16).float()).abs().mean()
    errors = {}
    for rounding in ("kahan", "stochastic"):
        weight = torch.nn.Parameter(start.to(torch.bfloat16))
        optimizer = InBackwardAdamW([weight], kahan=rounding == "kahan", seed=0, **kwargs)
        _follow_gradients(weight, optimizer, grads)
        exact = weight.detach().float() + optimizer.state[weight].get("compensation", torch.zeros(())).float()
        errors[rounding] = (exact - reference.detach()).abs().mean()
    assert optimizer.state[weight].keys() == {"step", "exp_avg", "exp_avg_sq"}  # no remainder without kahan
    assert errors["kahan"] < 0.05 * movement, (errors, movement)
    assert errors["stochastic"] > 5 * errors["kahan"], errors


def _mlp(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.LayerNorm(16), torch.nn.GELU(),
                               torch.nn.Linear(16, 1)).to(dtype)


def test_grouped_vectors_follow_torch_adamw_and_hold_their_gradients_until_step() -> None:
    """group_vectors: biases and norm scales wait for step() and are updated together; matrices in backward."""
    kwargs = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    reference, ours = _mlp(), _mlp()
    expected = _train(reference, torch.optim.AdamW(reference.parameters(), **kwargs), 15)
    optimizer = InBackwardAdamW(ours.parameters(), group_vectors=True, **kwargs)
    got = _train(ours, optimizer, 15)
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    for a, b in zip(ours.parameters(), reference.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    # between backward and step(): the matrices are updated and freed, the vectors keep their gradients
    inputs = torch.randn(4, 6)
    ours(inputs).sum().backward()
    assert ours[0].weight.grad is None and ours[0].bias.grad is not None and ours[1].weight.grad is not None
    optimizer.step()
    assert all(p.grad is None for p in ours.parameters())


def test_grouped_bf16_vectors_keep_fp32_precision() -> None:
    """A bf16 norm scale of 1.0 moved by 1e-4 a step: its fp32 copy keeps every update, as fp32 AdamW does."""
    reference, ours = _mlp(), _mlp(torch.bfloat16)
    kwargs = dict(lr=1e-4, weight_decay=0.0)
    _train(reference, torch.optim.AdamW(reference.parameters(), **kwargs), 30)
    _train(ours, InBackwardAdamW(ours.parameters(), group_vectors=True, seed=0, **kwargs), 30)
    scale, expected = ours[1].weight.float(), reference[1].weight.detach()
    assert (expected - 1.0).abs().max() > 1e-3  # the updates moved it
    assert (scale - expected).abs().max() <= 4e-3  # bf16's spacing at 1.0 is 7.8e-3: nearest of the fp32 value


def _saved(state: dict) -> dict:
    """``state`` as a file holds it: copies, sharing no tensor with the live run."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_grouped_vectors_resume_exactly_and_adopt_a_state_saved_without_grouping() -> None:
    kwargs = dict(lr=1e-2, weight_decay=1e-2, group_vectors=True)
    first = _mlp()
    first_optimizer = InBackwardAdamW(first.parameters(), **kwargs)
    _train(first, first_optimizer, 3)
    saved_model, saved_state = _saved(first.state_dict()), _saved(first_optimizer.state_dict())
    resumed = _mlp()
    resumed.load_state_dict(saved_model)
    resumed_optimizer = InBackwardAdamW(resumed.parameters(), **kwargs)
    resumed_optimizer.load_state_dict(saved_state)
    _train(resumed, resumed_optimizer, 3)  # (_train seeds its batches: both halves see the same ones)
    _train(first, first_optimizer, 3)  # the unbroken run
    for a, b in zip(resumed.parameters(), first.parameters()):
        assert torch.equal(a, b)

    ungrouped = _mlp()
    ungrouped_optimizer = InBackwardAdamW(ungrouped.parameters(), lr=1e-2, weight_decay=1e-2)
    _train(ungrouped, ungrouped_optimizer, 3)
    adopted = _mlp()
    adopted.load_state_dict(_saved(ungrouped.state_dict()))
    adopted_optimizer = InBackwardAdamW(adopted.parameters(), **kwargs)
    adopted_optimizer.load_state_dict(_saved(ungrouped_optimizer.state_dict()))
    _train(adopted, adopted_optimizer, 3)
    _train(ungrouped, ungrouped_optimizer, 3)
    for a, b in zip(adopted.parameters(), ungrouped.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)  # the moments and step counts carried over
    counts = [float(s["step"]) for s in adopted_optimizer.state_dict()["vector_weights"]["0:torch.float32"]
              ["moments"]]
    assert counts == [6.0] * 4  # 3 saved + 3 after the resume, for each of the 4 vectors (3 biases, a scale)


def test_a_grouped_vector_without_a_gradient_is_left_alone_as_torch_adamw_does() -> None:
    model = _mlp()
    unused = torch.nn.Parameter(torch.ones(3))  # a 1-D weight the forward never uses
    reference = _mlp()
    kwargs = dict(lr=1e-2, weight_decay=1e-2)
    _train(reference, torch.optim.AdamW(reference.parameters(), **kwargs), 5)
    _train(model, InBackwardAdamW([*model.parameters(), unused], group_vectors=True, **kwargs), 5)
    assert torch.equal(unused.detach(), torch.ones(3))  # no gradient: no update, no weight decay
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def _train_clipped(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int,
                   max_norm: float) -> list[float]:
    """As ``_train``, with the loop's clipping between backward and step()."""
    torch.manual_seed(3)
    losses = []
    for _ in range(steps):
        inputs = torch.randn(8, 6) * 4  # large gradients: the clipping acts on every step
        loss = (model(inputs).float() - inputs.sum(1, keepdim=True)).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_held_gradients_are_clipped_by_the_global_norm_as_torch_adamw_with_clipping() -> None:
    """hold_gradients: the hooks keep every gradient until step(), so clipping sees the whole gradient."""
    kwargs = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    reference, ours, unclipped = _mlp(), _mlp(), _mlp()
    expected = _train_clipped(reference, torch.optim.AdamW(reference.parameters(), **kwargs), 12, 0.5)
    optimizer = InBackwardAdamW(ours.parameters(), group_vectors=True, hold_gradients=True, **kwargs)
    got = _train_clipped(ours, optimizer, 12, 0.5)
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    for a, b in zip(ours.parameters(), reference.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    # without holding, each matrix is updated inside backward, before any clipping could act
    _train_clipped(unclipped, InBackwardAdamW(unclipped.parameters(), group_vectors=True, **kwargs), 12, 0.5)
    assert not torch.allclose(unclipped[0].weight, reference[0].weight, rtol=1e-3, atol=1e-4)
    # held: between backward and step() every gradient is there
    ours(torch.randn(4, 6)).sum().backward()
    assert all(p.grad is not None for p in ours.parameters())
    optimizer.step()
    assert all(p.grad is None for p in ours.parameters())
