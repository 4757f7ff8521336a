"""DreamBooth training: ``train(config, callbacks=..., stop=...)``."""

from dreamcore.training.loop import TrainResult, compute_loss, leave_process_group, train
from dreamcore.training.setup import TrainingError

__all__ = ["train", "TrainResult", "TrainingError", "compute_loss", "leave_process_group"]
