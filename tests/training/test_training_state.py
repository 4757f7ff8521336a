"""Saved training states keep learning rates as plain numbers, and a resumed run keeps its own kind of lr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dreamcore import TrainConfig
from dreamcore.training.optim import build_lr_scheduler
from dreamcore.training.state import TrainingProgress, load_training_state, save_training_state


def _run(lr: float | torch.Tensor) -> tuple[torch.nn.Linear, torch.optim.Optimizer, object]:
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, foreach=False)
    config = TrainConfig(lr_scheduler="linear", lr_warmup_steps=4, learning_rate=1e-3)
    return module, optimizer, build_lr_scheduler(config, optimizer, total_steps=10)


def _steps(module: torch.nn.Linear, optimizer: torch.optim.Optimizer, scheduler, count: int) -> None:
    for _ in range(count):
        module(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def test_a_state_with_a_tensor_lr_resumes_into_either_kind_of_optimizer(tmp_path: Path) -> None:
    # the CUDA-graph step's optimizer holds its lr in a tensor (on the GPU there; the CPU shows the same logic)
    module, optimizer, scheduler = _run(torch.tensor(1e-3))
    _steps(module, optimizer, scheduler, 2)
    expected = float(optimizer.param_groups[0]["lr"])
    folder = save_training_state(tmp_path / "state", TrainingProgress(2, 10, 0), {"unet": module}, optimizer,
                                 scheduler, None, torch.Generator().manual_seed(0), json.dumps({}))
    saved = torch.load(folder / "optimizer.pt", weights_only=True)
    assert type(saved["optimizer"]["param_groups"][0]["lr"]) is float
    assert all(type(rate) is float for rate in saved["lr_scheduler"]["base_lrs"] + saved["lr_scheduler"]["_last_lr"])

    graph_module, graph_optimizer, graph_scheduler = _run(torch.tensor(5.0))
    live = graph_optimizer.param_groups[0]["lr"]
    load_training_state(folder, {"unet": graph_module}, graph_optimizer, graph_scheduler,
                        torch.Generator())
    assert graph_optimizer.param_groups[0]["lr"] is live and float(live) == expected  # refilled in place
    _steps(graph_module, graph_optimizer, graph_scheduler, 1)
    assert graph_optimizer.param_groups[0]["lr"] is live  # the schedule keeps writing into the same tensor

    eager_module, eager_optimizer, eager_scheduler = _run(1e-3)
    load_training_state(folder, {"unet": eager_module}, eager_optimizer, eager_scheduler, torch.Generator())
    assert type(eager_optimizer.param_groups[0]["lr"]) is float and eager_optimizer.param_groups[0]["lr"] == expected
    _steps(eager_module, eager_optimizer, eager_scheduler, 1)
    assert type(eager_optimizer.param_groups[0]["lr"]) is float
    # both resumed runs took the same schedule step (the tensor holds it in fp32)
    assert float(live) == pytest.approx(eager_optimizer.param_groups[0]["lr"], rel=1e-6)
