"""Resumable training state: trained weights, optimizer, schedule, random generators and the step.

Everything needed to continue a run exactly as if it had not stopped is written into one folder per saved
step, atomically (``<output_dir>/state/step-N``): a resumed run reaches the same weights as an uninterrupted
one. ``checkpoint-N`` names the same folder (diffusers' name for it). Outputs of earlier versions hold one
state directly in ``<output_dir>/state``; they resume as before.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from dreamcore.config import STATE_NAME
from dreamcore.fileio import atomic_directory
from dreamcore.lora.adapters import load_trainable_state_dict, trainable_state_dict
from dreamcore.training.saving import host_copy, map_leaves

STATE_DIR_NAME = "state"
PROGRESS_FILE = "progress.json"
OPTIMIZER_FILE = "optimizer.pt"  # optimizer, schedule, scaler and generator states, their tensors replaced by names
OPTIMIZER_TENSORS_FILE = "optimizer.safetensors"  # those tensors (states of earlier versions hold them in the .pt)
_TENSOR_MARK = "dreamcore.tensor:"  # + a name: where a tensor of optimizer.safetensors goes back
_NUMBERED = re.compile(r"step-(\d+)")  # the folders this version writes


@dataclass
class TrainingProgress:
    step: int  # optimizer steps done
    total_steps: int
    seed: int


class ResumeError(ValueError):
    pass


def training_state_writer(folder: Path, progress: TrainingProgress, trained_modules: dict[str, torch.nn.Module],
                          optimizer: torch.optim.Optimizer, lr_scheduler: Any, scaler_state: dict | None,
                          noise_generator: torch.Generator, config_json: str,
                          copy_to_host: Callable[[Any], Any] | None = None) -> Callable[[], Path]:
    """Copy the resumable state to the host now (``copy_to_host``: how, as ``saving.host_copy`` does by default);
    the returned function writes it (atomically) into ``folder``, on any thread, while training goes on."""
    snapshot = (copy_to_host or host_copy)({
        # LoRA runs: the adapters' weights only
        "weights": {name: trainable_state_dict(module) for name, module in trained_modules.items()},
        "rest": {"optimizer": _plain_learning_rates(optimizer.state_dict()),
                 "lr_scheduler": _plain_learning_rates(lr_scheduler.state_dict()),
                 "scaler": scaler_state,
                 "noise_generator": noise_generator.get_state()},
    })
    weights, rest = snapshot["weights"], snapshot["rest"]
    progress_json = json.dumps(progress.__dict__, indent=2) + "\n"

    # The tensors go to a safetensors file, the structure around them to a small optimizer.pt: torch.save holds
    # Python's lock for hundreds of milliseconds at a time while it writes large tensors, which would stall the
    # training thread beside the writer; safetensors writes without it.
    skeleton, tensors = _split_tensors(rest)

    def write() -> Path:
        with atomic_directory(folder) as temp:
            for name, state in weights.items():
                save_file(state, str(temp / f"{name}.safetensors"))
            save_file(tensors, str(temp / OPTIMIZER_TENSORS_FILE))
            torch.save(skeleton, temp / OPTIMIZER_FILE)
            (temp / PROGRESS_FILE).write_text(progress_json)
            (temp / "train_config.json").write_text(config_json)
        return folder

    return write


def read_saved_optimizer_state(folder: Path) -> dict[str, Any]:
    """The optimizer, learning-rate schedule, gradient scaler and noise generator states of a saved state, on
    the host (``{"optimizer": ..., "lr_scheduler": ..., "scaler": ..., "noise_generator": ...}``)."""
    skeleton = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    tensors_path = folder / OPTIMIZER_TENSORS_FILE
    if not tensors_path.is_file():  # written by an earlier version: the tensors are inside the .pt
        return skeleton
    return _join_tensors(skeleton, load_file(str(tensors_path)), tensors_path)


def _split_tensors(value: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """``value`` with each tensor replaced by a mark naming it, and the tensors by name."""
    tensors: dict[str, torch.Tensor] = {}

    def mark(leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor):
            return leaf
        name = f"t{len(tensors)}"
        tensors[name] = leaf.contiguous()
        return _TENSOR_MARK + name

    return map_leaves(value, mark), tensors


def _join_tensors(value: Any, tensors: dict[str, torch.Tensor], path: Path) -> Any:
    """The inverse of ``_split_tensors``."""
    def tensor(leaf: Any) -> Any:
        if not (isinstance(leaf, str) and leaf.startswith(_TENSOR_MARK)):
            return leaf
        name = leaf.removeprefix(_TENSOR_MARK)
        if name not in tensors:
            raise ResumeError(f"{path}: the saved state has no tensor {name!r}; the state is damaged, resume "
                              "from another state (step-N).")
        return tensors[name]

    return map_leaves(value, tensor)


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


def state_folder(output_dir: Path, step: int) -> Path:
    """Where the state of ``step`` is written."""
    return output_dir / STATE_DIR_NAME / f"step-{step}"


def saved_states(states_dir: Path) -> list[tuple[int, Path]]:
    """The complete numbered states in a ``state`` folder, (step, folder), oldest first. A folder without its
    progress file is not one (the atomic write puts it in place last of all, with everything else)."""
    if not states_dir.is_dir():
        return []
    found = []
    for folder in states_dir.iterdir():
        match = _NUMBERED.fullmatch(folder.name)
        if match and (folder / PROGRESS_FILE).is_file():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def latest_state_folder(output_dir: Path) -> Path | None:
    """The newest state of a run's output folder: its highest step-N, else the single state of an older
    output (``state/`` itself), else None."""
    return _latest_in(output_dir / STATE_DIR_NAME)


def _latest_in(states_dir: Path) -> Path | None:
    numbered = saved_states(states_dir)
    if numbered:
        return numbered[-1][1]
    return states_dir if (states_dir / PROGRESS_FILE).is_file() else None


def resolve_state_folder(resume_from: str, output_dir: Path) -> Path | None:
    """The state folder ``resume_from`` names; None for "latest" when the run has saved none yet.

    ``resume_from``: "latest"; "step-N" or "checkpoint-N" (a state of ``output_dir``); or a path: a state
    folder, a folder of states (its newest) or a run's output folder (its newest)."""
    if resume_from == "latest":
        return latest_state_folder(output_dir)
    name = STATE_NAME.fullmatch(resume_from)
    if name:
        folder = state_folder(output_dir, int(name.group(2)))
        if (folder / PROGRESS_FILE).is_file():
            return folder
        raise ResumeError(f"resume_from_checkpoint: there is no state of step {name.group(2)} in "
                          f"{output_dir / STATE_DIR_NAME} ({_saved_list(output_dir / STATE_DIR_NAME)}); "
                          "give one of those, 'latest', or a state folder.")
    path = Path(resume_from)
    if (path / PROGRESS_FILE).is_file() and not saved_states(path):
        return path
    folder = _latest_in(path) or _latest_in(path / STATE_DIR_NAME)
    if folder is None:
        raise ResumeError(f"resume_from_checkpoint: no saved training state in {path} (expected {PROGRESS_FILE} "
                          f"there, in its step-N folders or in {path / STATE_DIR_NAME}); give a state folder such "
                          "as <output_dir>/state/step-500, or 'latest'.")
    return folder


def _saved_list(states_dir: Path) -> str:
    steps = [f"step-{step}" for step, _ in saved_states(states_dir)]
    return "saved: " + ", ".join(steps) if steps else "none saved"


def prune_states(output_dir: Path, keep: int, up_to_step: int) -> list[Path]:
    """Remove all but the ``keep`` newest numbered states up to ``up_to_step`` (the one just written); returns
    the folders removed. States of later steps, left by an earlier run, are not this run's to count."""
    numbered = [entry for entry in saved_states(output_dir / STATE_DIR_NAME) if entry[0] <= up_to_step]
    removed = [folder for _, folder in numbered[:max(0, len(numbered) - keep)]]
    for folder in removed:
        shutil.rmtree(folder)
    return removed


def read_progress(folder: Path) -> TrainingProgress:
    """The step, length and seed of a saved state (cheap: no weights are read)."""
    path = folder / PROGRESS_FILE
    try:
        return TrainingProgress(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as error:
        raise ResumeError(f"{path}: the saved state's progress file cannot be read ({error}); resume from another "
                          "state (step-N) or start without resume_from_checkpoint.") from None


def load_training_state(folder: Path, trained_modules: dict[str, torch.nn.Module],
                        optimizer: torch.optim.Optimizer, lr_scheduler: Any,
                        noise_generator: torch.Generator) -> tuple[TrainingProgress, dict | None]:
    """Restore a saved state in place; returns the progress and the gradient scaler's state."""
    progress = read_progress(folder)
    for name, module in trained_modules.items():
        path = folder / f"{name}.safetensors"
        if not path.is_file():
            raise ResumeError(f"{folder}: the saved state has no {name} weights, but this run trains {name}; "
                              "resume with the same train_text_encoder setting as the saved run.")
        load_trainable_state_dict(module, load_file(str(path)), str(path))
    saved = read_saved_optimizer_state(folder)
    live_rates = [group["lr"] for group in optimizer.param_groups]
    optimizer.load_state_dict(_plain_learning_rates(saved["optimizer"]))
    for group, live in zip(optimizer.param_groups, live_rates):
        if isinstance(live, torch.Tensor):  # the CUDA-graph step reads its lr from this very tensor
            live.fill_(float(group["lr"]))
            group["lr"] = live
    lr_scheduler.load_state_dict(_plain_learning_rates(saved["lr_scheduler"]))
    noise_generator.set_state(saved["noise_generator"])
    return progress, saved["scaler"]
