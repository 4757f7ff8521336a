"""Saved training states keep learning rates as plain numbers, and a resumed run keeps its own kind of lr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dreamcore import TrainConfig
from dreamcore.config import ConfigError
from dreamcore.training import train
from dreamcore.training.optim import build_lr_scheduler
from dreamcore.training.state import TrainingProgress, load_training_state, training_state_writer


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
    write = training_state_writer(tmp_path / "state", TrainingProgress(2, 10, 0), {"unet": module}, optimizer,
                                  scheduler, None, torch.Generator().manual_seed(0), json.dumps({}))
    folder = write()
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


def test_resume_latest_without_a_state_starts_a_new_run_and_a_named_empty_folder_is_refused_first(
        tiny_model_dir: Path, photo_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_model_dir), instance_data_dir=str(photo_dir),
                         instance_prompt="photo of sks person", output_dir=str(tmp_path / "fresh"), resolution=64,
                         max_train_steps=2, checkpointing_steps=0, n_save_sample=1, save_infer_steps=1,
                         resume_from_checkpoint="latest")
    logs: list[str] = []
    result = train(config, callbacks=[lambda e: logs.append(e.message) if e.kind == "log" else None])
    assert result.status == "completed" and result.step == 2
    assert any("no saved training state" in line and "new run" in line for line in logs), logs
    stages: list[str] = []
    with pytest.raises(ConfigError, match="missing' is not a saved state folder"):
        train(config.replace(resume_from_checkpoint=str(tmp_path / "missing")),
              callbacks=[lambda e: stages.append(e.name) if e.kind == "stage" else None])
    assert stages == ["validate"]  # refused before the model loads
