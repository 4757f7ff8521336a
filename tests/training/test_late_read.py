"""Step values read one step late: the next step is launched before the host waits for the last one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dreamcore.training import train
from dreamcore.training.late_read import LateValues
from dreamcore.training.trainer import Trainer

from tiny_runs import tiny_config


def test_late_values_keep_the_order_of_tensors_and_floats() -> None:
    late = LateValues([torch.tensor(1.5), 2.25, torch.tensor([3.0]), torch.tensor(4, dtype=torch.bfloat16)])
    assert late.values() == [1.5, 2.25, 3.0, 4.0]
    assert LateValues([0.5]).values() == [0.5]


@pytest.mark.gpu
def test_late_values_arrive_from_the_gpu() -> None:
    values = [torch.full((), float(i), device="cuda") for i in range(3)]
    assert LateValues([*values, 1e-6]).values() == [0.0, 1.0, 2.0, 1e-6]


def test_each_step_is_reported_after_the_next_one_was_launched(tiny_model_dir: Path, photo_dir: Path,
                                                               tmp_path: Path, monkeypatch) -> None:
    launched: list[int] = []
    original = Trainer.micro_step

    def counting_micro_step(self, index):
        launched.append(index)
        return original(self, index)

    monkeypatch.setattr(Trainer, "micro_step", counting_micro_step)
    launched_at_report: dict[int, int] = {}

    def on_event(event) -> None:
        if event.kind == "progress":
            launched_at_report[event.step] = len(launched)

    config = tiny_config(tiny_model_dir, photo_dir, tmp_path / "out", max_train_steps=5, save_interval=3,
                         checkpointing_steps=0)
    result = train(config, callbacks=[on_event])
    # Step n is read while step n + 1 runs, except before a save (step 3: its loss is checked first) and at the end.
    assert launched_at_report == {1: 2, 2: 3, 3: 3, 4: 5, 5: 5}
    assert len(result.losses) == 5 and all(loss > 0 for loss in result.losses)
