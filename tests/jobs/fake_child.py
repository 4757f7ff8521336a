"""A stand-in training child for the runner's unit tests: writes the events real training writes.

    python fake_child.py JOB_FOLDER ATTEMPT

Behaviour comes from the job's train_config.json: ``max_train_steps`` steps, ``seed`` selects a mode:
0 = train normally, 1 = raise a CUDA out-of-memory error at step 2, 2 = ignore stop requests.
A step takes ``save_interval`` milliseconds (0 = 50 ms).
"""

import json
import os
import sys
import time
from pathlib import Path

from dreamcore.config import TrainConfig
from dreamcore.events import CheckpointSaved, Finished, Progress, SamplesSaved
from dreamcore.jobs.advice import advice_for_error
from dreamcore.jobs.events_file import JOB_STARTED, EventWriter

folder, attempt = Path(sys.argv[1]), int(sys.argv[2])
config = TrainConfig.load(folder / "train_config.json")
writer = EventWriter(folder / "events.jsonl")
writer.write({"kind": JOB_STARTED, "attempt": attempt, "pid": os.getpid()})
print(f"fake child attempt {attempt} resume={config.resume_from_checkpoint!r} "
      f"gpu={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
step_seconds = (config.save_interval or 50) / 1000
output = Path(config.output_dir)
output.mkdir(parents=True, exist_ok=True)
for step in range(1, config.max_train_steps + 1):
    if (folder / "stop").exists() and config.seed != 2:
        (output / "state").mkdir(exist_ok=True)  # what real training saves on stop (resume looks for it)
        (output / "state" / "progress.json").write_text(json.dumps({"step": step - 1}))
        writer(Finished("stopped", step - 1, {"state": str(output / "state")}))
        sys.exit(0)
    if config.seed == 1 and step == 2:
        error = RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")
        writer.error(error, advice_for_error("OutOfMemoryError", str(error), config))
        raise error
    time.sleep(step_seconds)
    writer(Progress(step, config.max_train_steps, 1.0 / step, 1e-6, 1 / step_seconds,
                    (config.max_train_steps - step) * step_seconds))
sample = output / "samples" / "sample-0.png"
sample.parent.mkdir(exist_ok=True)
sample.write_bytes(b"png")
writer(SamplesSaved(config.max_train_steps, (str(sample),), "photo of sks person"))
model = output / f"{folder.name}.safetensors"
model.write_bytes(b"model")
writer(CheckpointSaved(config.max_train_steps, str(model), "final"))
writer(Finished("completed", config.max_train_steps, {"single_file": str(model)}))
