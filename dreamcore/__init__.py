"""dreamcore: teach Stable Diffusion a face with DreamBooth, offline.

    from dreamcore import TrainConfig, train, generate

Importing dreamcore is cheap (no torch); the heavy modules load on first use.
"""

from __future__ import annotations

from typing import Any

from dreamcore.config import ConfigError, TrainConfig
# The function itself, bound after its module loads: importing the submodule dreamcore.generate later would
# otherwise replace a wrapper of that name with the module (the module imports no torch at load).
from dreamcore.generate import generate

__version__ = "0.1.0"
__all__ = ["TrainConfig", "ConfigError", "train", "generate", "__version__"]


def train(config: TrainConfig, callbacks: Any = None, stop: Any = None) -> Any:
    """Run DreamBooth training; see ``dreamcore.training.train``."""
    from dreamcore.training import train as _train

    return _train(config, callbacks=callbacks, stop=stop)
