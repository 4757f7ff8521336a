"""The checkpoint list and model (un)loading, as the host exposes them to extensions."""

from __future__ import annotations

import os
from typing import Any

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors")

checkpoints_list: dict[str, "CheckpointInfo"] = {}
checkpoint_aliases: dict[str, "CheckpointInfo"] = {}
calls: list[str] = []  # stand-in only: what happened to the loaded model, for tests to read


class CheckpointInfo:
    def __init__(self, filename: str, root: str):
        self.filename = filename
        relative = os.path.relpath(filename, root) if filename.startswith(root) else os.path.basename(filename)
        self.name = relative
        self.model_name = os.path.splitext(relative.replace("/", "_").replace("\\", "_"))[0]
        self.hash = None
        self.shorthash = None
        self.title = relative  # a fresh file shows no hash until it is first loaded

    def register(self) -> None:
        checkpoints_list[self.title] = self
        for alias in (self.title, self.model_name, self.name):
            checkpoint_aliases[alias] = self


class ModelData:
    def __init__(self) -> None:
        self.sd_model: Any = None


model_data = ModelData()


def checkpoint_folder() -> str:
    from modules import paths, shared

    if shared.FLAVOR == "sdnext":
        return shared.opts.data["ckpt_dir"]
    return shared.cmd_opts.ckpt_dir or os.path.join(paths.models_path, "Stable-diffusion")


def list_models() -> None:
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    root = checkpoint_folder()
    found = []
    for folder, _dirs, files in os.walk(root):
        for file in files:
            if file.endswith(CHECKPOINT_SUFFIXES) and ".vae." not in file:
                found.append(os.path.join(folder, file))
    for filename in sorted(found):
        CheckpointInfo(filename, root).register()


def get_closet_checkpoint_match(search: str) -> CheckpointInfo | None:
    if search in checkpoint_aliases:
        return checkpoint_aliases[search]
    found = sorted((info for info in checkpoints_list.values() if search in info.title),
                   key=lambda info: len(info.title))
    return found[0] if found else None


def unload_model_weights(sd_model: Any = None, info: Any = None) -> None:
    calls.append("unload")
    model_data.sd_model = None


def reload_model_weights(sd_model: Any = None, info: Any = None) -> None:
    from modules import shared

    if shared.FLAVOR == "forge":
        return  # Forge keeps these as empty stubs
    calls.append(f"load:{shared.opts.data.get('sd_model_checkpoint')}")
    model_data.sd_model = shared.opts.data.get("sd_model_checkpoint")
