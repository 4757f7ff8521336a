"""Resumable training state: trained weights, optimizer, schedule, random generators and the step.

Everything needed to continue a run exactly as if it had not stopped is written into one folder,
atomically (``<output_dir>/state``): a resumed run reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from dreamcore.fileio import atomic_directory
from dreamcore.lora.adapters import load_trainable_state_dict, trainable_state_dict

STATE_DIR_NAME = "state"
PROGRESS_FILE = "progress.json"


@dataclass
class TrainingProgress:
    step: int  # optimizer steps done
    total_steps: int
    seed: int


class ResumeError(ValueError):
    pass


def training_state_writer(folder: Path, progress: TrainingProgress, trained_modules: dict[str, torch.nn.Module],
                          optimizer: torch.optim.Optimizer, lr_scheduler: Any, scaler_state: dict | None,
                          noise_generator: torch.Generator, config_json: str) -> Callable[[], Path]:
    """Copy the resumable state to the host now; the returned function writes it (atomically) into ``folder``,
    on any thread, while training goes on."""
    from dreamcore.training.saving import host_copy

    weights = {name: host_copy(trainable_state_dict(module))  # LoRA runs: the adapters' weights only
               for name, module in trained_modules.items()}
    rest = host_copy({
        "optimizer": _plain_learning_rates(optimizer.state_dict()),
        "lr_scheduler": _plain_learning_rates(lr_scheduler.state_dict()),
        "scaler": scaler_state,
        "noise_generator": noise_generator.get_state(),
    })
    progress_json = json.dumps(progress.__dict__, indent=2) + "\n"

    def write() -> Path:
        with atomic_directory(folder) as temp:
            for name, state in weights.items():
                save_file(state, str(temp / f"{name}.safetensors"))
            torch.save(rest, temp / "optimizer.pt")
            (temp / PROGRESS_FILE).write_text(progress_json)
            (temp / "train_config.json").write_text(config_json)
        return folder

    return write


def _plain_learning_rates(state: dict) -> dict:
    """A state dict whose learning rates are plain numbers. The CUDA-graph step keeps its lr in a GPU tensor
    (optim.py); saved as numbers, a state resumes the same under either step and on any device."""
    def plain(value: Any) -> Any:
        return float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else value

    state = dict(state)
    if "param_groups" in state:  # an optimizer's
        state["param_groups"] = [{key: plain(value) if key in ("lr", "initial_lr") else value
                                  for key, value in group.items()} for group in state["param_groups"]]
    for key in ("base_lrs", "_last_lr"):  # a learning-rate scheduler's
        if isinstance(state.get(key), list):
            state[key] = [plain(value) for value in state[key]]
    return state


def resolve_state_folder(resume_from: str, output_dir: Path) -> Path:
    folder = output_dir / STATE_DIR_NAME if resume_from == "latest" else Path(resume_from)
    if not (folder / PROGRESS_FILE).is_file():
        raise ResumeError(f"resume_from_checkpoint: no saved training state in {folder} "
                          f"(expected {PROGRESS_FILE} there); start without resume_from_checkpoint.")
    return folder


def load_training_state(folder: Path, trained_modules: dict[str, torch.nn.Module],
                        optimizer: torch.optim.Optimizer, lr_scheduler: Any,
                        noise_generator: torch.Generator) -> tuple[TrainingProgress, dict | None]:
    """Restore a saved state in place; returns the progress and the gradient scaler's state."""
    progress = TrainingProgress(**json.loads((folder / PROGRESS_FILE).read_text()))
    for name, module in trained_modules.items():
        path = folder / f"{name}.safetensors"
        if not path.is_file():
            raise ResumeError(f"{folder}: the saved state has no {name} weights, but this run trains {name}; "
                              "resume with the same train_text_encoder setting as the saved run.")
        load_trainable_state_dict(module, load_file(str(path)), str(path))
    saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    live_rates = [group["lr"] for group in optimizer.param_groups]
    optimizer.load_state_dict(_plain_learning_rates(saved["optimizer"]))
    for group, live in zip(optimizer.param_groups, live_rates):
        if isinstance(live, torch.Tensor):  # the CUDA-graph step reads its lr from this very tensor
            live.fill_(float(group["lr"]))
            group["lr"] = live
    lr_scheduler.load_state_dict(_plain_learning_rates(saved["lr_scheduler"]))
    noise_generator.set_state(saved["noise_generator"])
    return progress, saved["scaler"]
