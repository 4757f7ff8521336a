"""Data-parallel training (issue 10): 2 CPU processes (gloo) give what 1 process gives at the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dreamcore import TrainConfig
from dreamcore.events import StopRequest
from dreamcore.training import train

pytestmark = pytest.mark.slow  # several processes per test (torchrun/accelerate launches): run by .ci/run

ROOT = Path(__file__).resolve().parents[2]


def child_env() -> dict[str, str]:
    """The environment of a launched training: this checkout importable, offline, one thread a process."""
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=python_path, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def launch(config: TrainConfig, num_processes: int, tmp_path: Path,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    config_file = config.save(tmp_path / f"config-{num_processes}.json")
    return subprocess.run([sys.executable, "-m", "dreamcore", "train", "--config", str(config_file),
                           "--num_processes", str(num_processes)], capture_output=True, text=True,
                          env=env or child_env(), cwd=ROOT, timeout=600)


# Loaded by every launched Python (PYTHONPATH): says at exit whether the process still held a process group,
# which NCCL warns about as a leak (gloo, which these CPU tests use, stays silent).
EXIT_PROBE = """import atexit, sys

def _report_process_group():
    if "torch.distributed" in sys.modules and sys.modules["torch.distributed"].is_initialized():
        print("exit probe: process group still initialized", file=sys.stderr, flush=True)

atexit.register(_report_process_group)
"""


def env_with_exit_probe(tmp_path: Path) -> dict[str, str]:
    probe = tmp_path / "exit-probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(EXIT_PROBE)
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(probe), env["PYTHONPATH"]])
    return env


def weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    name = "diffusion_pytorch_model.safetensors" if component == "unet" else "model.safetensors"
    return load_file(str(folder / component / name))


def assert_same_training(base_model: Path, one_process: Path, two_processes: Path) -> None:
    """The two runs' diffusers folders hold the same trained weights: they differ by far less than training
    moved them. Adam's first steps divide by sqrt(v) ~ |g|, so all-reduce rounding (sum/2 vs a mean over 2) shows
    up in the weights at the 1e-4 level; a different batch or order would differ as much as the update."""
    for component in ("unet", "text_encoder"):
        base = weights(base_model, component)
        one = weights(one_process, component)
        two = weights(two_processes, component)
        update = sum((one[k].float() - base[k].float()).abs().sum() for k in base)
        difference = sum((one[k].float() - two[k].float()).abs().sum() for k in base)
        assert update > 0 and difference < 0.1 * update, (component, float(difference), float(update))


def config_for(model: Path, photos: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(pretrained_model_name_or_path=str(model), instance_data_dir=str(photos),
                  instance_prompt="photo of sks person", output_dir=str(out), resolution=64, max_train_steps=3,
                  learning_rate=1e-3, lr_warmup_steps=0, checkpointing_steps=0, n_save_sample=1,
                  save_infer_steps=2, center_crop=True, train_text_encoder=True, seed=11,
                  with_prior_preservation=True, class_prompt="photo of a person", num_class_images=2,
                  class_infer_steps=2, class_data_dir=str(out.parent / "class"))
    values.update(overrides)
    return TrainConfig(**values)


def test_two_processes_match_one_at_the_same_global_batch(tiny_model_dir: Path, photo_dir: Path,
                                                           tmp_path: Path) -> None:
    single = train(config_for(tiny_model_dir, photo_dir, tmp_path / "one", train_batch_size=2))
    # shard_optimizer (on by default, asked for here all the same): AdamW after backward keeps its state whole, and
    # the run says so
    result = launch(config_for(tiny_model_dir, photo_dir, tmp_path / "two", train_batch_size=1, n_save_sample=3,
                               shard_optimizer=True), 2, tmp_path, env=env_with_exit_probe(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stdout
    # each process left its process group before exiting (the probe would say so otherwise)
    assert "exit probe" not in result.stderr
    assert "shard_optimizer: no effect here" in result.stdout + result.stderr
    # Samples are split across the processes (0 and 2 on one, 1 on the other) and written by the main one.
    samples = sorted(p.name for p in (tmp_path / "two" / "samples" / "step-000003").iterdir())
    assert samples == ["sample-00-seed11.png", "sample-01-seed12.png", "sample-02-seed13.png"]
    assert_same_training(tiny_model_dir, Path(single.outputs["diffusers"]), tmp_path / "two" / "diffusers")


@pytest.mark.parametrize("tier, shard", [(None, False), ("16GB", False), ("16GB", True)])
def test_resume_with_a_different_process_count(tiny_model_dir: Path, photo_dir: Path, tmp_path: Path,
                                               tier: str | None, shard: bool) -> None:
    """Saved by one process, resumed by two: with AdamW after backward (DistributedDataParallel) and with the
    in-backward tier, whose per-weight state, grouped 1-D weights and rounding generators each process loads
    (with shard_optimizer: its part of each weight's state)."""
    from dreamcore.presets import MEMORY_PRESETS

    settings = dict(MEMORY_PRESETS[tier], memory_preset="none", use_8bit_adam=False,
                    shard_optimizer=shard) if tier else {}
    stop = StopRequest()
    config = config_for(tiny_model_dir, photo_dir, tmp_path / "run", max_train_steps=4, train_batch_size=1,
                        **settings)
    first = train(config, callbacks=[lambda e: stop.set() if e.kind == "progress" and e.step == 2 else None],
                  stop=stop)
    assert first.status == "stopped" and first.step == 3  # after the step in flight (late_read.py)
    result = launch(config.replace(resume_from_checkpoint="latest"), 2, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout and "Training completed at step 4" in result.stdout
    assert "weights differ" not in result.stdout + result.stderr
    assert (tmp_path / "run" / "run.safetensors").is_file()


@pytest.mark.parametrize("shard", [False, True])
def test_in_backward_adamw_averages_each_gradient_across_processes(tiny_model_dir: Path, photo_dir: Path,
                                                                   tmp_path: Path, shard: bool) -> None:
    """The in-backward tiers with 2 processes: no DistributedDataParallel, each gradient averaged inside
    backward (gradient_average.py; with shard_optimizer each process updates half of each weight), the same
    weights as 1 process at the same global batch, on every process."""
    from dreamcore.presets import MEMORY_PRESETS

    # Kahan: no rounding noise; no clipping: several processes apply each gradient inside backward, unclipped
    tier = dict(MEMORY_PRESETS["16GB"], memory_preset="none", use_8bit_adam=False, max_grad_norm=0.0)
    single = train(config_for(tiny_model_dir, photo_dir, tmp_path / "one", train_batch_size=2, **tier))
    result = launch(config_for(tiny_model_dir, photo_dir, tmp_path / "two", train_batch_size=1, shard_optimizer=shard,
                               **tier), 2, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stdout
    assert "weights differ" not in result.stdout + result.stderr
    assert_same_training(tiny_model_dir, Path(single.outputs["diffusers"]), tmp_path / "two" / "diffusers")


def test_sharded_optimizer_state_is_saved_whole_and_resumes_in_one_process(tiny_model_dir: Path, photo_dir: Path,
                                                                             tmp_path: Path) -> None:
    """shard_optimizer with 2 processes: each holds AdamW's state for its half of every weight only
    (gradient_average.py); the saved state is still the whole one, as one process at the same global batch saves
    it, and one process resumes from it."""
    from dreamcore.presets import MEMORY_PRESETS

    tier = dict(MEMORY_PRESETS["16GB"], memory_preset="none", use_8bit_adam=False, max_grad_norm=0.0)
    steps = dict(max_train_steps=3, checkpointing_steps=2)
    train(config_for(tiny_model_dir, photo_dir, tmp_path / "one", train_batch_size=2, **steps, **tier))
    sharded = config_for(tiny_model_dir, photo_dir, tmp_path / "two", train_batch_size=1, shard_optimizer=True,
                         **steps, **tier)
    result = launch(sharded, 2, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stdout and "weights differ" not in result.stdout + result.stderr

    def saved_state(run: str) -> dict:
        from dreamcore.training.state import read_saved_optimizer_state

        return read_saved_optimizer_state(tmp_path / run / "state" / "step-2")["optimizer"]["state"]

    one, two = saved_state("one"), saved_state("two")
    assert len(one) > 10 and two.keys() == one.keys()  # every weight's state, though each process held half
    for index, state in two.items():
        assert float(state["step"]) == 2, index
        for moment in ("exp_avg", "exp_avg_sq"):  # the same averaged gradients (rounded at random: close; a
            # few text-encoder weights get gradients of ~1e-14, rounding residue, hence the floor)
            mine, theirs = state[moment].float(), one[index][moment].float()
            difference = (mine - theirs).abs().sum()
            assert difference <= 0.1 * theirs.abs().sum() + 1e-10 * theirs.numel(), (index, moment)
    resumed = train(sharded.replace(resume_from_checkpoint="step-2"))
    assert resumed.status == "completed" and resumed.step == 3


def test_stochastic_rounding_keeps_the_processes_weights_identical(tiny_model_dir: Path, photo_dir: Path,
                                                                   tmp_path: Path) -> None:
    """The 12GB tier rounds every update at random (here the PyTorch form, one generator per process): both
    processes must draw the same noise in the same order, or their weights come apart (the run's check after
    training says so). Nothing is compared with one process: its noise falls on other values."""
    from dreamcore.presets import MEMORY_PRESETS

    tier = dict(MEMORY_PRESETS["12GB"], memory_preset="none")
    assert tier["bf16_rounding"] == "stochastic"
    result = launch(config_for(tiny_model_dir, photo_dir, tmp_path / "two", train_batch_size=1, **tier), 2, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stdout
    assert "weights differ" not in result.stdout + result.stderr
    assert (tmp_path / "two" / "diffusers" / "unet").is_dir()


def test_two_machines_launched_as_accelerate_launches_them(tiny_model_dir: Path, photo_dir: Path,
                                                          tmp_path: Path) -> None:
    """Several machines: one torchrun agent per machine (what `accelerate launch` runs with a multi-machine
    config), here two on this host with one process each, meeting at the main machine's address. The in-backward
    tier trains across them and only the main process writes."""
    from dreamcore.presets import MEMORY_PRESETS

    tier = dict(MEMORY_PRESETS["16GB"], memory_preset="none", use_8bit_adam=False)
    config_file = config_for(tiny_model_dir, photo_dir, tmp_path / "run", train_batch_size=1, **tier).save(
        tmp_path / "config.json")
    port = free_port()
    logs = [(tmp_path / f"machine-{rank}.out", tmp_path / f"machine-{rank}.err") for rank in (0, 1)]
    machines = []
    for rank, (out, err) in enumerate(logs):  # files, not pipes: a full pipe would stall the collectives
        with out.open("w") as stdout, err.open("w") as stderr:
            machines.append(subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                 "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                 "-m", "dreamcore", "train", "--config", str(config_file)],
                stdout=stdout, stderr=stderr, env=child_env(), cwd=ROOT))
    codes = [machine.wait(timeout=600) for machine in machines]
    (main_out, main_err), (other_out, other_err) = ((o.read_text(), e.read_text()) for o, e in logs)
    assert codes == [0, 0], (main_err + other_err)[-3000:]
    assert "x 2 processes" in main_out and "Training completed at step 3" in main_out
    assert "Training completed" not in other_out  # the other machine's process reports nothing
    assert "weights differ" not in main_out + main_err
    assert (tmp_path / "run" / "run.safetensors").is_file()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.gpu
@pytest.mark.parametrize("shard", [False, True])
def test_two_gpus_record_the_step_with_its_all_reduces(tiny_model_dir: Path, photo_dir: Path, tmp_path: Path,
                                                       shard: bool) -> None:
    """On 2 GPUs the 16GB tier records its step, NCCL collectives included (all-reduces; with shard_optimizer
    reduce-scatters and all-gathers), and replays it: the weights match one GPU's at the same global batch, and
    each other's."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    from dreamcore.presets import MEMORY_PRESETS

    tier = dict(MEMORY_PRESETS["16GB"], memory_preset="none", max_train_steps=8)
    single = train(config_for(tiny_model_dir, photo_dir, tmp_path / "one", train_batch_size=2, **tier))
    result = launch(config_for(tiny_model_dir, photo_dir, tmp_path / "two", train_batch_size=1, shard_optimizer=shard,
                               **tier), 2, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "recorded the training step" in result.stdout + result.stderr
    assert "weights differ" not in result.stdout + result.stderr
    assert_same_training(tiny_model_dir, Path(single.outputs["diffusers"]), tmp_path / "two" / "diffusers")
