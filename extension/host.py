"""The running WebUI as the tab sees it: checkpoint list, checkpoint folder, model selection, GPU use.

A1111, Forge and SD.Next differ in a few calls (../shared/docs/webui-host.md); this module is the only
place that knows which. ``StandaloneHost`` stands in for a WebUI in ``python -m dreamcore ui``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger("dreamcore.webui")

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
PUBLISH_SUBFOLDER = "dreamcore"  # our models go to <checkpoint folder>/dreamcore/<name>.safetensors


class Host(Protocol):
    flavor: str

    def checkpoint_choices(self) -> list[str]: ...

    def checkpoint_path(self, title: str) -> str | None: ...

    def checkpoint_dir(self) -> Path: ...

    def lora_dir(self) -> Path: ...

    def default_output_dir(self) -> Path: ...

    def option(self, key: str, default: Any) -> Any: ...

    def refresh_checkpoints(self) -> None: ...

    def select_checkpoint(self, path: Path) -> str: ...

    def free_gpu(self) -> str: ...

    def restore_gpu(self) -> str: ...


class CheckpointNotFound(LookupError):
    """The WebUI's checkpoint list does not contain a file we just wrote."""


class WebUIHost:
    """The host's ``modules`` (imported on first use; they exist only inside a WebUI)."""

    def __init__(self) -> None:
        from modules import shared

        self.shared = shared
        if _importable("modules_forge"):
            self.flavor = "forge"
        elif "ckpt_dir" in getattr(shared.opts, "data", {}):
            self.flavor = "sdnext"  # SD.Next keeps the checkpoint folder among its options
        else:
            self.flavor = "a1111"
        self._unloaded = False

    # --- checkpoints -----------------------------------------------------------------------------
    def _sd_models(self) -> Any:
        return importlib.import_module("modules.sd_models")

    def checkpoint_choices(self) -> list[str]:
        return sorted(self._sd_models().checkpoints_list)

    def checkpoint_path(self, title: str) -> str | None:
        info = self._sd_models().checkpoints_list.get(title)
        return None if info is None else str(info.filename)

    def checkpoint_dir(self) -> Path:
        if self.flavor == "sdnext":
            return Path(self.shared.opts.data["ckpt_dir"])
        configured = getattr(self.shared.cmd_opts, "ckpt_dir", None)
        if configured:
            return Path(configured)
        from modules import paths

        return Path(paths.models_path) / "Stable-diffusion"

    def lora_dir(self) -> Path:
        """Where the WebUI's built-in Lora support looks: --lora-dir (SD.Next: its lora_dir option), else
        <models>/Lora."""
        configured = self.shared.opts.data.get("lora_dir") if self.flavor == "sdnext" else \
            getattr(self.shared.cmd_opts, "lora_dir", None)
        if configured:
            return Path(configured)
        from modules import paths

        return Path(paths.models_path) / "Lora"

    def default_output_dir(self) -> Path:
        from modules import paths

        return Path(getattr(paths, "data_path", Path(paths.models_path).parent)) / "outputs" / "dreamcore"

    def option(self, key: str, default: Any) -> Any:
        value = getattr(self.shared.opts, "data", {}).get(key)
        return default if value in (None, "") else value

    def refresh_checkpoints(self) -> None:
        from modules.call_queue import queue_lock

        with queue_lock:  # the host's lock for model changes: never refresh during a generation
            self.shared.refresh_checkpoints()

    def select_checkpoint(self, path: Path) -> str:
        """Refresh the list, select ``path`` for txt2img and return its title."""
        self.refresh_checkpoints()
        info = self._find(path)
        # No queue_lock here: the host's own reload on this option change takes it (a second hold deadlocks).
        if self.flavor == "forge":
            # Forge's sd_models load calls are stubs; its own entry point switches the model.
            main_entry = importlib.import_module("modules_forge.main_entry")
            main_entry.checkpoint_change(info.title)
        else:
            self.shared.opts.set("sd_model_checkpoint", info.title)
        return info.title

    def _find(self, path: Path) -> Any:
        target = os.path.normcase(os.path.realpath(path))
        for info in self._sd_models().checkpoints_list.values():
            if os.path.normcase(os.path.realpath(info.filename)) == target:
                return info
        raise CheckpointNotFound(
            f"{path} was written but the WebUI's checkpoint list does not show it; the list is read from "
            f"{self.checkpoint_dir()}. Press the refresh button next to the checkpoint list, or check the "
            "WebUI's --ckpt-dir setting.")

    # --- GPU -------------------------------------------------------------------------------------
    def free_gpu(self) -> str:
        """Move the WebUI's model out of GPU memory while training; returns what was done."""
        from modules.call_queue import queue_lock

        if self.flavor == "forge":
            if importlib.util.find_spec("backend") is None:
                return "Forge: no backend.memory_management here; the WebUI's model stays loaded."
            memory_management = importlib.import_module("backend.memory_management")
            with queue_lock:
                memory_management.unload_all_models()
            self._unloaded = True
            return "Freed the WebUI's model from GPU memory (Forge loads it again on the next generation)."
        with queue_lock:  # never pull the model away in the middle of a generation
            self._sd_models().unload_model_weights()
        self._unloaded = True
        return "Moved the WebUI's model out of GPU memory for training."

    def restore_gpu(self) -> str:
        if not self._unloaded:
            return ""
        self._unloaded = False
        if self.flavor == "forge":
            return ""
        from modules.call_queue import queue_lock

        with queue_lock:
            self._sd_models().reload_model_weights()
        return "Loaded the WebUI's model again."


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


class StandaloneHost:
    """No WebUI: checkpoints live in ``<output root>/models`` and nothing holds the GPU."""

    flavor = "standalone"

    def __init__(self, output_root: Path):
        self.output_root = Path(output_root)
        self.selected: str | None = None

    def checkpoint_dir(self) -> Path:
        return self.output_root / "models"

    def lora_dir(self) -> Path:
        return self.output_root / "models" / "Lora"

    def default_output_dir(self) -> Path:
        return self.output_root

    def option(self, key: str, default: Any) -> Any:
        return default

    def checkpoint_choices(self) -> list[str]:
        folder = self.checkpoint_dir()
        if not folder.is_dir():
            return []
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                      if p.suffix in CHECKPOINT_SUFFIXES and ".vae." not in p.name)

    def checkpoint_path(self, title: str) -> str | None:
        path = self.checkpoint_dir() / title
        if path.is_file():
            return str(path)
        return title if Path(title).exists() else None  # the app also accepts a path typed in

    def refresh_checkpoints(self) -> None:
        return None  # the list is read from the folder each time

    def select_checkpoint(self, path: Path) -> str:
        self.selected = str(Path(path).relative_to(self.checkpoint_dir()))
        return self.selected

    def free_gpu(self) -> str:
        return ""

    def restore_gpu(self) -> str:
        return ""
