"""On a CUDA GPU (opt-in: --run-gpu): a real out-of-memory error in the training child fails only that job,
with advice, the next job trains on the GPU, and every byte the children took is free again afterwards."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dreamcore.config import TrainConfig
from dreamcore.jobs import JobManager

from jobs_helpers import make_photos

pytestmark = pytest.mark.gpu
MIB = 2 ** 20


@pytest.fixture
def cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.cuda.init()  # the parent's own context exists before the baseline is read
    return torch


class FreeMemoryWatcher:
    """Samples the GPU's free memory (all processes) every 50 ms; ``lowest`` is the fullest moment seen."""

    def __init__(self, torch):
        self.torch = torch
        self.lowest = torch.cuda.mem_get_info()[0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.lowest = min(self.lowest, self.torch.cuda.mem_get_info()[0])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_a_cuda_oom_fails_one_job_with_advice_and_the_gpu_is_fully_returned(cuda, tiny_base, tmp_path: Path):
    """As when a WebUI holds most of the card: the parent fills the GPU but for 1.5 GiB, a job at 8192 px
    runs out of memory for real; then the parent lets go and the next job trains on the GPU."""
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_base),
                         instance_data_dir=str(make_photos(tmp_path / "photos")),
                         instance_prompt="photo of sks person", resolution=64, max_train_steps=20,
                         learning_rate=1e-4, lr_warmup_steps=0, checkpointing_steps=0, n_save_sample=1,
                         save_infer_steps=2, prepare_photos=False)
    free_before, total = cuda.cuda.mem_get_info()
    manager = JobManager(tmp_path / "jobs", poll_interval=0.1)
    watcher = FreeMemoryWatcher(cuda)
    try:
        hog = cuda.empty(free_before - 1536 * MIB, dtype=cuda.uint8, device="cuda")
        manager.submit(config.replace(resolution=8192), "too-big")
        oom = manager.wait("too-big", timeout=300, poll_seconds=0.2)
        del hog
        cuda.cuda.empty_cache()
        lowest_with_hog, watcher.lowest = watcher.lowest, cuda.cuda.mem_get_info()[0]
        manager.submit(config, "fits")
        fits = manager.wait("fits", timeout=300, poll_seconds=0.2)
    finally:
        watcher.stop()
        manager.shutdown(stop_running=True, timeout=60)
    time.sleep(1.0)
    free_after = cuda.cuda.mem_get_info()[0]
    report = (f"GPU {cuda.cuda.get_device_name()}: free {free_before / MIB:.0f} MiB before; lowest "
              f"{lowest_with_hog / MIB:.0f} MiB during the OOM job (1536 MiB left to it); lowest "
              f"{watcher.lowest / MIB:.0f} MiB while the second job trained; {free_after / MIB:.0f} MiB after "
              f"(total {total / MIB:.0f} MiB)")
    print(report)
    print("OOM job error:", oom.error[:300])
    print("OOM job advice:", oom.advice)

    assert oom.status == "failed", oom.error + "\n".join(oom.log_tail)
    assert "out of memory" in oom.error.lower()
    assert "gradient_checkpointing" in oom.advice and "resolution" in oom.advice
    assert fits.status == "completed", fits.error + "\n".join(fits.log_tail)
    assert any("on cuda" in line for line in fits.log_tail), "the second job did not train on the GPU"
    assert free_before - watcher.lowest > 100 * MIB, report  # the child did use the GPU ...
    assert abs(free_after - free_before) < 16 * MIB, report  # ... and gave all of it back
