"""The running WebUI as the tab sees it: checkpoint list, checkpoint folder, model selection, GPU use.

A1111, Forge and SD.Next differ in a few calls; this module is the only
place that knows which. ``StandaloneHost`` stands in for a WebUI in ``python -m dreamcore ui``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from pathlib import Path
from types import TracebackType
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

    def loaded_checkpoint(self) -> str | None: ...

    def select_checkpoint(self, path: Path) -> str: ...

    def free_gpu(self) -> str: ...

    def restore_gpu(self) -> str: ...


class CheckpointNotFound(LookupError):
    """The WebUI's checkpoint list does not contain a file we just wrote."""


class CheckpointNotLoaded(RuntimeError):
    """The WebUI was asked to switch to a checkpoint and does not have it loaded afterwards (its loader
    failed, or it kept another model). The message says what the WebUI reported and which model it has."""


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

    def loaded_checkpoint(self) -> str | None:
        """The title of the checkpoint the WebUI has loaded now (its file's path if the list lacks it), or
        None. Reads the host's model holder directly: ``shared.sd_model`` would start a load."""
        filename = self._loaded_checkpoint_file()
        if filename is None:
            return None
        for info in self._sd_models().checkpoints_list.values():
            if _same_file(info.filename, filename):
                return info.title
        return filename

    def _loaded_checkpoint_file(self) -> str | None:
        # All three hosts keep the model in sd_models.model_data.sd_model with the CheckpointInfo it was
        # loaded from; before the first load it is None (A1111, SD.Next) or a placeholder without one (Forge).
        model = getattr(self._sd_models().model_data, "sd_model", None)
        filename = getattr(getattr(model, "sd_checkpoint_info", None), "filename", None)
        return None if filename is None else str(filename)

    def select_checkpoint(self, path: Path) -> str:
        """Refresh the list, have the WebUI load ``path`` for txt2img and return its title once the WebUI's
        loaded model is that file. Otherwise the WebUI is put back on the model it had and
        CheckpointNotLoaded says what it reported: a failed load never reads as a switch."""
        self.refresh_checkpoints()
        info = self._find(path)
        previous_title = self.shared.opts.data.get("sd_model_checkpoint")
        if previous_title == info.title and _same_file(self._loaded_checkpoint_file(), info.filename):
            return info.title  # already loaded (pressed twice)
        reported = self._switch_to(info.title)
        if _same_file(self._loaded_checkpoint_file(), info.filename):
            return info.title
        logger.error("dreamcore: the WebUI did not load %s: %s", info.title, "; ".join(reported) or "no error")
        reported_going_back = self._go_back_to(previous_title, info.title)
        raise CheckpointNotLoaded(self._not_loaded_message(info.title, reported, previous_title,
                                                           reported_going_back))

    def _switch_to(self, title: str) -> list[str]:
        """Ask the WebUI to load ``title`` the way its own checkpoint list does; returns what it reported."""
        with _HostErrorReports(self.shared) as reports:
            try:
                if self.flavor == "forge":
                    # checkpoint_change only records the choice (Forge's sd_models load calls are stubs) and
                    # Forge loads at the next generation; load now, as that generation would, so a failure
                    # shows here instead of in txt2img.
                    importlib.import_module("modules_forge.main_entry").checkpoint_change(title)
                    from modules.call_queue import queue_lock

                    with queue_lock:  # never swap the model in the middle of a generation
                        self._sd_models().forge_model_reload()
                elif self.shared.opts.data.get("sd_model_checkpoint") == title:
                    # Already the selected one (a load that failed earlier): setting it again changes
                    # nothing and loads nothing, so ask for the reload directly.
                    from modules.call_queue import queue_lock

                    with queue_lock:
                        self._sd_models().reload_model_weights()
                elif not self.shared.opts.set("sd_model_checkpoint", title):
                    # No queue_lock around this: the host's reload on this option change takes it (a second
                    # hold deadlocks). False: the host refused the value or its reload failed (A1111 then
                    # records the error, read by _HostErrorReports).
                    reports.refused = True
            except Exception as error:  # the host's loader raises whatever torch, safetensors or its config
                # code raise (OSError, OutOfMemoryError, KeyError, ...): each means "not loaded" and is shown
                # to the person, with the traceback in the log.
                logger.exception("dreamcore: the WebUI's loader failed for %s", title)
                reports.add(f"{type(error).__name__}: {error}")
        return reports.messages

    def _go_back_to(self, previous_title: str | None, failed_title: str) -> list[str]:
        """After a failed switch, make sure the WebUI is on the model it had before (a failed load may have
        dropped it, or left the failed one selected, to be retried at every generation). Returns what the
        WebUI reported while going back."""
        if not previous_title or previous_title == failed_title:
            return []
        previous = self._sd_models().get_closet_checkpoint_match(previous_title)
        if previous is None:  # its file is gone: nothing to go back to
            return []
        if self.shared.opts.data.get("sd_model_checkpoint") == previous.title and \
                _same_file(self._loaded_checkpoint_file(), previous.filename):
            return []  # the host kept it (A1111 restores the previous weights itself)
        return self._switch_to(previous.title)

    def _not_loaded_message(self, title: str, reported: list[str], previous_title: str | None,
                            reported_going_back: list[str]) -> str:
        cause = "; ".join(message.rstrip(". ") for message in reported) or \
            "it reported no error, but its loaded model is not the new one"
        now = self.loaded_checkpoint()
        state = (f"It has {now} loaded" if now else
                 "It has no model loaded now: choose one in its checkpoint list") + "; txt2img was left as it was."
        if reported_going_back:
            state += f" Loading {previous_title} again failed too: {'; '.join(reported_going_back)}."
        text = " ".join(reported).lower()
        if any(word in text for word in ("out of memory", "outofmemory", "memoryerror", "not enough memory")):
            advice = ("Free memory (let running training jobs finish, close other programs that use the GPU), "
                      "then press Use in txt2img again.")
        else:
            advice = ("The WebUI's console shows the whole error. A damaged file: train or export the model "
                      "again; a missing config: put the model's .yaml beside it in the checkpoint folder.")
        return f"The WebUI did not load {title}: {cause}. {state} {advice}"

    def _find(self, path: Path) -> Any:
        for info in self._sd_models().checkpoints_list.values():
            if _same_file(info.filename, path):
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


def _same_file(first: str | Path | None, second: str | Path | None) -> bool:
    if first is None or second is None:
        return False
    return os.path.normcase(os.path.realpath(first)) == os.path.normcase(os.path.realpath(second))


class _HostErrorReports:
    """What the WebUI reported while it switched models. A1111 and Forge catch a failed load in
    ``opts.set``, print it and keep it in ``modules.errors.exception_records`` (the last five); SD.Next logs
    it on ``shared.log`` and returns as if all went well."""

    def __init__(self, shared: Any):
        self.messages: list[str] = []
        self.refused = False  # opts.set returned False
        self._records = _host_exception_records()
        self._records_before = list(self._records or [])
        host_log = getattr(shared, "log", None)
        self._host_log = host_log if isinstance(host_log, logging.Logger) else None
        self._handler = _CollectErrors(self)

    def add(self, message: str) -> None:
        if message and message not in self.messages:
            self.messages.append(message)

    def __enter__(self) -> _HostErrorReports:
        if self._host_log is not None:
            self._host_log.addHandler(self._handler)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._host_log is not None:
            self._host_log.removeHandler(self._handler)
        for record in self._records or []:
            if not any(record is seen for seen in self._records_before):
                self.add(str(record.get("exception", record)) if isinstance(record, dict) else str(record))
        if self.refused and not self.messages:
            self.add("it refused the new value of its sd_model_checkpoint setting (are its settings frozen, "
                     "e.g. --freeze-settings?)")


class _CollectErrors(logging.Handler):
    def __init__(self, reports: _HostErrorReports):
        super().__init__(level=logging.ERROR)
        self.reports = reports

    def emit(self, record: logging.LogRecord) -> None:
        self.reports.add(record.getMessage())


def _host_exception_records() -> list[Any] | None:
    try:
        errors = importlib.import_module("modules.errors")
    except ImportError:
        return None
    records = getattr(errors, "exception_records", None)
    return records if isinstance(records, list) else None


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
        # The LoRAs the app publishes lie in models/Lora: no base model to train from.
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                      if p.suffix in CHECKPOINT_SUFFIXES and ".vae." not in p.name
                      and not p.is_relative_to(self.lora_dir()))

    def checkpoint_path(self, title: str) -> str | None:
        path = self.checkpoint_dir() / title
        if path.is_file():
            return str(path)
        return title if Path(title).exists() else None  # the app also accepts a path typed in

    def refresh_checkpoints(self) -> None:
        return None  # the list is read from the folder each time

    def loaded_checkpoint(self) -> str | None:
        return None  # no WebUI holds a model here

    def select_checkpoint(self, path: Path) -> str:
        self.selected = str(Path(path).relative_to(self.checkpoint_dir()))
        return self.selected

    def free_gpu(self) -> str:
        return ""

    def restore_gpu(self) -> str:
        return ""
