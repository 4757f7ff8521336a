"""A quiet console: the known notices of the libraries dreamcore drives are kept from the person, narrowly.

Each filter names its library's logger or warning category and the message it drops; anything else, and every
message of dreamcore's own, goes through. Progress bars of diffusers and transformers (model loading, "Writing
model shards") are switched off with their own switches: dreamcore draws one bar, for the training steps.
``quiet_console()`` is called by the command line, the job child and the WebUI glue.
``DREAMCORE_LIBRARY_WARNINGS=1`` leaves everything on, for a bug report.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Sequence

SHOW_ALL_VARIABLE = "DREAMCORE_LIBRARY_WARNINGS"


@dataclass(frozen=True)
class KnownNotice:
    """A library's log message that tells the person nothing they can act on, and why."""

    logger: str  # the logger that emits it (filters on a logger see only its own records)
    pattern: str  # a regular expression the message matches from its start
    why: str


KNOWN_NOTICES = (
    # dreamcore moves models with .to(dtype) on purpose; with an empty list nothing is to be kept in float32.
    KnownNotice("diffusers.models.modeling_utils", r"There are modules in \w+ that should be kept in float32: \[\]",
                "nothing is to be kept in float32"),
    # transformers' image processors serve the safety checker, which dreamcore never runs; PIL's version is used.
    KnownNotice("transformers.utils.import_utils", r"`\w+ImageProcessor` requires torchvision",
                "the image processors are not used in training"),
    # A LoRA without text-encoder parts (the UNet alone trained) is complete; diffusers warns for each encoder.
    KnownNotice("diffusers.loaders.lora_base", r"No LoRA keys associated to \w+ found with the prefix=",
                "a LoRA that adapts the UNet only is complete"),
    KnownNotice("diffusers.loaders.peft", r"No LoRA keys associated to \w+ found with the prefix=",
                "a LoRA that adapts the UNet only is complete"),
    # bitsandbytes' CPU 4-bit kernels: dreamcore uses its 8-bit Adam, on CUDA only (and says so on a CPU).
    KnownNotice("bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward",
                "4-bit CPU kernels are not used"),
)

# Libraries whose FutureWarnings are about their own or each other's future APIs: for dreamcore's developers,
# not for the person training. A FutureWarning raised at a line of dreamcore still shows.
LIBRARY_MODULES = ("torch", "transformers", "diffusers", "accelerate", "huggingface_hub", "peft", "bitsandbytes",
                   "safetensors", "tokenizers")


class KnownNoticeFilter(logging.Filter):
    """Drops the records of one logger whose message matches one of ``patterns``."""

    def __init__(self, patterns: Sequence[str]):
        super().__init__()
        self.patterns = [re.compile(pattern) for pattern in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.match(message) for pattern in self.patterns)


def format_duration(seconds: float | None) -> str:
    """H:MM:SS, or M:SS under an hour; "-" when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def library_warning_module_pattern() -> str:
    """The ``module`` regular expression of the FutureWarning filter: the libraries above and their submodules."""
    return r"(" + "|".join(re.escape(name) for name in LIBRARY_MODULES) + r")(\..*)?$"


def quiet_console(own_process: bool = True) -> bool:
    """Install the filters (idempotent; cheap: imports none of the libraries). In a process of dreamcore's own
    (the command line, a job's child) the libraries' FutureWarnings and progress bars go too, the bars switched
    off now in libraries already imported, else as they are imported. Inside a host program (the WebUI), whose
    console and libraries are its own, only the known notices above are dropped.
    Returns False when DREAMCORE_LIBRARY_WARNINGS asks for everything to be shown."""
    if os.environ.get(SHOW_ALL_VARIABLE, "").strip() not in ("", "0"):
        return False
    for logger_name in dict.fromkeys(notice.logger for notice in KNOWN_NOTICES):
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, KnownNoticeFilter) for f in logger.filters):
            logger.addFilter(KnownNoticeFilter([n.pattern for n in KNOWN_NOTICES if n.logger == logger_name]))
    if own_process:
        warnings.filterwarnings("ignore", category=FutureWarning, module=library_warning_module_pattern())
        for module_name, switch in PROGRESS_BAR_SWITCHES.items():
            when_imported(module_name, switch)
    return True


def _transformers_bars_off(logging_module: ModuleType) -> None:
    logging_module.disable_progress_bar()  # "Loading weights", "Writing model shards" (and the hub's bars)


def _diffusers_bars_off(logging_module: ModuleType) -> None:
    logging_module.disable_progress_bar()  # loading shards and pipeline components


PROGRESS_BAR_SWITCHES: dict[str, Callable[[ModuleType], None]] = {
    "transformers.utils.logging": _transformers_bars_off,
    "diffusers.utils.logging": _diffusers_bars_off,
}


def when_imported(module_name: str, action: Callable[[ModuleType], None]) -> None:
    """Run ``action(module)`` now if the module is imported, else right after it is: importing diffusers only to
    switch its bars off would cost seconds on every command, --help included."""
    module = sys.modules.get(module_name)
    if module is not None:
        action(module)
        return
    for finder in sys.meta_path:
        if isinstance(finder, _AfterImport):
            finder.actions.setdefault(module_name, action)
            return
    sys.meta_path.insert(0, _AfterImport({module_name: action}))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a watched module it asks the other finders, then runs the action once the
    module has executed."""

    def __init__(self, actions: dict[str, Callable[[ModuleType], None]]):
        self.actions = actions

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        action = self.actions.get(fullname)
        if action is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        del self.actions[fullname]
        spec.loader = _RunAfter(spec.loader, action)
        return spec


class _RunAfter(importlib.abc.Loader):
    def __init__(self, loader: Any, action: Callable[[ModuleType], None]):
        self.loader = loader
        self.action = action

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.action(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ...: the real loader's
        return getattr(self.loader, name)
