"""DreamBooth training: ``train(config, callbacks=..., stop=...)``.

- ``run.py``: a run (plan, set-up, the loop over the steps, export); ``train`` is its entry point.
- ``trainer.py``: the trainer, holding a run's live state, and its step; ``fast_step.py`` and ``graph_step.py``
  are step executors (subclasses that run the same step faster).
- ``checkpoints.py``: resumable states, samples, checkpoints and the final model.
- ``optim.py``: optimizers by name and the learning-rate schedule.
"""

from dreamcore.training.run import TrainResult, leave_process_group, train
from dreamcore.training.setup import TrainingError
from dreamcore.training.trainer import compute_loss

__all__ = ["train", "TrainResult", "TrainingError", "compute_loss", "leave_process_group"]
