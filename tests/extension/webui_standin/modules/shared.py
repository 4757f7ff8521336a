"""Options, command-line options, job state and the checkpoint-list refresh."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Callable

from modules import errors, sd_models
from modules.call_queue import wrap_queued_call

FLAVOR = os.environ.get("DREAMCORE_STANDIN_FLAVOR", "a1111")

if FLAVOR == "sdnext":
    log = logging.getLogger("sd")  # SD.Next reports through its own logger


class OptionInfo:
    def __init__(self, default: Any = None, label: str = "", component: Any = None, component_args: Any = None,
                 onchange: Callable[[], None] | None = None, section: tuple[str, str] | None = None,
                 refresh: Any = None, category_id: str | None = None, **_: Any):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id


class Options:
    def __init__(self) -> None:
        object.__setattr__(self, "data", {"sd_model_checkpoint": None})
        object.__setattr__(self, "data_labels", {})
        if FLAVOR == "sdnext":
            self.data["ckpt_dir"] = os.path.join(os.environ["DREAMCORE_STANDIN_DATA_DIR"], "models",
                                                 "Stable-diffusion")

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def set(self, key: str, value: Any) -> bool:
        """As the host: True when the value changed; False when it was already set, or when the option's
        onchange failed (the error is shown and recorded, and the old value comes back)."""
        old = self.data.get(key)
        if old == value:
            return False
        self.data[key] = value
        info = self.data_labels.get(key)
        if info is not None and info.onchange is not None:
            try:
                info.onchange()
            except Exception as error:  # the host catches every onchange error this way
                errors.display(error, f"changing setting {key} to {value}")
                self.data[key] = old
                return False
        return True

    def __getattr__(self, key: str) -> Any:
        data = object.__getattribute__(self, "data")
        if key in data:
            return data[key]
        raise AttributeError(key)


opts = Options()
# A1111 and SD.Next reload the model when this option changes, queued behind the host's lock; Forge only
# records the choice (modules_forge.main_entry) and loads at the next generation.
opts.add_option("sd_model_checkpoint", OptionInfo(
    None, "Stable Diffusion checkpoint",
    onchange=None if FLAVOR == "forge" else wrap_queued_call(lambda: sd_models.reload_model_weights())))
cmd_opts = argparse.Namespace(ckpt_dir=None, api=False, nowebui=False)


class State:
    def __init__(self) -> None:
        self.job = ""
        self.interrupted = False

    def begin(self, job: str = "(unknown)") -> None:
        self.job = job
        self.interrupted = False

    def end(self) -> None:
        self.job = ""


state = State()


def refresh_checkpoints() -> None:
    sd_models.list_models()
