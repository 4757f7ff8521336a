"""Saved training states keep learning rates as plain numbers, and a resumed run keeps its own kind of lr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dreamcore import TrainConfig
from dreamcore.config import ConfigError
from dreamcore.training import train
from dreamcore.training.optim import build_lr_scheduler
from dreamcore.training.state import (OPTIMIZER_FILE, OPTIMIZER_TENSORS_FILE, TrainingProgress, load_training_state,
                                      read_saved_optimizer_state, training_state_writer)


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
    saved = read_saved_optimizer_state(folder)
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


def _fake_state(folder: Path, step: int, seed: int = 7) -> Path:
    folder.mkdir(parents=True)
    (folder / "progress.json").write_text(json.dumps({"step": step, "total_steps": 10, "seed": seed}))
    return folder


def test_states_are_found_by_step_name_or_path_newest_for_latest_and_older_outputs_still_resume(
        tmp_path: Path) -> None:
    from dreamcore.training.state import ResumeError, latest_state_folder, resolve_state_folder

    out = tmp_path / "out"
    assert resolve_state_folder("latest", out) is None
    legacy = _fake_state(out / "state", 3)  # an output of the single-state layout
    assert resolve_state_folder("latest", out) == legacy
    for step in (2, 10, 4):
        _fake_state(out / "state" / f"step-{step}", step)
    (out / "state" / "step-12").mkdir()  # not complete: no progress file
    assert latest_state_folder(out) == out / "state" / "step-10"  # numbers, not names, order them
    assert resolve_state_folder("checkpoint-4", out) == out / "state" / "step-4"
    assert resolve_state_folder("step-2", out) == out / "state" / "step-2"
    assert resolve_state_folder(str(out / "state" / "step-4"), out) == out / "state" / "step-4"
    assert resolve_state_folder(str(out), tmp_path / "elsewhere") == out / "state" / "step-10"
    with pytest.raises(ResumeError, match="no state of step 6 .*saved: step-2, step-4, step-10"):
        resolve_state_folder("checkpoint-6", out)
    with pytest.raises(ResumeError, match="no saved training state in"):
        resolve_state_folder(str(tmp_path), out)


def test_the_state_limit_keeps_the_newest_up_to_the_step_just_written(tmp_path: Path) -> None:
    from dreamcore.training.state import prune_states

    for step in (2, 4, 6, 8):
        _fake_state(tmp_path / "state" / f"step-{step}", step)
    removed = prune_states(tmp_path, keep=2, up_to_step=6)  # step-8 is an earlier run's: not counted
    assert [p.name for p in removed] == ["step-2"]
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["step-4", "step-6", "step-8"]


def _progress_steps(events: list) -> list[int]:
    return [e.step for e in events if e.kind == "progress"]


def test_a_finished_run_extended_continues_from_its_last_step_to_the_same_weights(
        tiny_model_dir: Path, photo_dir: Path, tmp_path: Path) -> None:
    from tests.training.tiny_runs import tiny_config

    whole = train(tiny_config(tiny_model_dir, photo_dir, tmp_path / "whole", max_train_steps=6,
                              checkpointing_steps=2))
    short = tiny_config(tiny_model_dir, photo_dir, tmp_path / "run", max_train_steps=4, checkpointing_steps=2)
    train(short)
    assert sorted(p.name for p in (tmp_path / "run" / "state").iterdir()) == ["step-2", "step-4"]  # 4: the end
    events: list = []
    extended = train(short.replace(max_train_steps=6, resume_from_checkpoint="latest"), callbacks=[events.append])
    assert _progress_steps(events) == [5, 6]  # steps 1-4 are not repeated
    assert any(e.kind == "log" and "at step 4" in e.message for e in events)
    assert extended.losses == pytest.approx(whole.losses[4:], rel=1e-5)
    resumed_unet = load_file(str(tmp_path / "run" / "state" / "step-6" / "unet.safetensors"))
    whole_unet = load_file(str(tmp_path / "whole" / "state" / "step-6" / "unet.safetensors"))
    for key, value in whole_unet.items():
        torch.testing.assert_close(resumed_unet[key], value)


def test_resuming_beyond_max_train_steps_or_with_another_seed_is_refused_before_the_model_loads(
        tiny_model_dir: Path, photo_dir: Path, tmp_path: Path) -> None:
    from tests.training.tiny_runs import tiny_config

    config = tiny_config(tiny_model_dir, photo_dir, tmp_path / "out", max_train_steps=4)
    _fake_state(tmp_path / "out" / "state" / "step-6", 6)
    stages: list[str] = []
    on_stage = lambda e: stages.append(e.name) if e.kind == "stage" else None  # noqa: E731
    with pytest.raises(ConfigError, match="at step 6, beyond this run's 4; give max_train_steps above 6"):
        train(config.replace(resume_from_checkpoint="checkpoint-6"), callbacks=[on_stage])
    with pytest.raises(ConfigError, match="seed 7, this one has 99"):
        train(config.replace(seed=99, max_train_steps=8, resume_from_checkpoint="latest"), callbacks=[on_stage])
    assert stages == ["validate", "validate"]


def test_the_optimizers_tensors_are_written_apart_and_a_state_of_an_earlier_version_still_resumes(
        tmp_path: Path) -> None:
    module, optimizer, scheduler = _run(1e-3)
    _steps(module, optimizer, scheduler, 2)
    generator = torch.Generator().manual_seed(3)
    folder = training_state_writer(tmp_path / "state", TrainingProgress(2, 10, 0), {"unet": module}, optimizer,
                                   scheduler, None, generator, json.dumps({}))()
    tensors = load_file(str(folder / OPTIMIZER_TENSORS_FILE))
    moments = [state["exp_avg"] for state in optimizer.state_dict()["state"].values()]
    assert len(tensors) >= 2 * len(moments) + 1  # both moments of every weight, and the generator's state
    skeleton = torch.load(folder / OPTIMIZER_FILE, weights_only=True)
    assert not any(isinstance(v, torch.Tensor) for state in skeleton["optimizer"]["state"].values()
                   for v in state.values())  # the .pt holds the structure only
    saved = read_saved_optimizer_state(folder)
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(saved["optimizer"]["state"][index][key], value), (index, key)
    assert torch.equal(saved["noise_generator"], generator.get_state())

    # an earlier version's state: every tensor inside optimizer.pt, no optimizer.safetensors
    (folder / OPTIMIZER_TENSORS_FILE).unlink()
    torch.save(saved, folder / OPTIMIZER_FILE)
    resumed_module, resumed_optimizer, resumed_scheduler = _run(1e-3)
    resumed_generator = torch.Generator()
    load_training_state(folder, {"unet": resumed_module}, resumed_optimizer, resumed_scheduler, resumed_generator)
    for index, state in optimizer.state_dict()["state"].items():
        assert torch.equal(resumed_optimizer.state_dict()["state"][index]["exp_avg"], state["exp_avg"])
    assert torch.equal(resumed_generator.get_state(), generator.get_state())


def test_a_damaged_optimizer_tensor_file_is_named(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from dreamcore.training.state import ResumeError

    module, optimizer, scheduler = _run(1e-3)
    _steps(module, optimizer, scheduler, 1)
    folder = training_state_writer(tmp_path / "state", TrainingProgress(1, 10, 0), {"unet": module}, optimizer,
                                   scheduler, None, torch.Generator(), json.dumps({}))()
    save_file({"other": torch.zeros(1)}, str(folder / OPTIMIZER_TENSORS_FILE))
    with pytest.raises(ResumeError, match="optimizer.safetensors.*has no tensor"):
        read_saved_optimizer_state(folder)
