"""The bench's parts on CPU: preset specs, phases and the projected total, the table, and one tiny run."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dreamcore.bench.measure import Phases, RunTimes, phases
from dreamcore.bench.recipe import GUIDE, BenchPreset, parse_preset, recipe_config
from dreamcore.bench.report import PresetResult, format_parts, format_table
from dreamcore.events import ClassImagesProgress, Finished, Progress, SamplesSaved, Stage


def test_preset_specs_parse_and_refuse_unknown_names() -> None:
    assert parse_preset("24GB") == BenchPreset("24GB")
    preset = parse_preset("8GB:fast_step=false,learning_rate=2e-6,save_infer_steps=3")
    assert preset.overrides == (("fast_step", False), ("learning_rate", 2e-6), ("save_infer_steps", 3))
    assert parse_preset(preset.spec()) == preset
    with pytest.raises(ValueError, match="unknown preset '4GB'"):
        parse_preset("4GB")
    with pytest.raises(ValueError, match="'fast=true' is not field=value"):
        parse_preset("24GB:fast=true")


def test_recipe_is_the_guides_with_the_presets_memory_settings(tmp_path: Path) -> None:
    guide = recipe_config(parse_preset(GUIDE), tmp_path / "m", tmp_path / "p", tmp_path / "o", 50, 512)
    assert (guide.mixed_precision, guide.use_8bit_adam, guide.train_text_encoder) == ("fp16", True, True)
    assert (guide.with_prior_preservation, guide.num_class_images, guide.learning_rate) == (True, 12, 1e-6)
    assert guide.memory_preset == "none" and guide.max_train_steps == 50 and guide.train_batch_size == 1
    small = recipe_config(parse_preset("8GB:n_save_sample=1"), tmp_path / "m", tmp_path / "p", tmp_path / "o",
                          50, 512)
    assert small.pure_bf16 and small.optimizer_in_backward and small.n_save_sample == 1
    # an override beats the tier's own setting (a bench variant of a preset measures what it says)
    plain_step = recipe_config(parse_preset("24GB:fast_step=false"), tmp_path / "m", tmp_path / "p",
                               tmp_path / "o", 50, 512)
    assert not plain_step.fast_step and plain_step.mixed_precision == "bf16" and plain_step.memory_preset == "none"
    lora = recipe_config(parse_preset("lora-5GB"), tmp_path / "m", tmp_path / "p", tmp_path / "o", 50, 512)
    assert lora.use_lora and lora.memory_preset == "none" and lora.with_prior_preservation


def _finished_run(step_times: list[float]) -> RunTimes:
    """Checks 0-0.5 s, load 0.5-2 s, class images 2-7 s, prepare 7-10 s, steps at ``step_times``, export 3 s
    (samples 1.25 s)."""
    times = RunTimes(started=0.0)
    times.stages = {"validate": 0.0, "load": 0.5, "class_images": 2.0, "train": 10.0, "export": step_times[-1]}
    times.last_class_image = 7.0
    times.class_image_stamps = [3.5, 5.0, 6.0, 7.0]  # generation starts at 3.5 s; three batches
    times.last_samples = step_times[-1] + 1.25
    times.steps = step_times
    times.finished = step_times[-1] + 3.0
    return times


def test_phases_and_the_projected_total() -> None:
    steps = [10.0 + 2.0] + [12.0 + 0.5 * i for i in range(1, 11)]  # first step 2 s, then 0.5 s each
    result = phases(_finished_run(steps), warmup_steps=1)
    assert result.load_s == 2.0 and result.class_images_s == 5.0 and result.prepare_s == 3.0
    assert result.warmup_s == 2.0 and result.export_s == 3.0
    assert result.validate_s == 0.5 and result.export_samples_s == 1.25
    assert (result.class_setup_s, result.class_first_batch_s, result.class_batch_s, result.class_batches) == \
        (1.5, 1.5, 1.0, 3)
    assert result.steady_s_per_step == pytest.approx(0.5) and result.steady_it_per_s == pytest.approx(2.0)
    # 2 + 5 + 3 + 2 (warm-up, 1 step) + 1999 x 0.5 + 3
    assert result.projected_total_s(2000) == pytest.approx(1014.5)
    with pytest.raises(ValueError, match="raise --steps"):
        phases(_finished_run(steps[:3]), warmup_steps=2)
    assert result.total_s == steps[-1] + 3.0 and result.median_step_s == pytest.approx(0.5)
    # a save that stalls training shows as one slow step, named
    stalled = [10.0 + 2.0] + [12.0 + 0.5 * i + (1.5 if i >= 6 else 0.0) for i in range(1, 11)]
    slow = phases(_finished_run(stalled), warmup_steps=1)
    assert slow.slowest_step == 7 and slow.slowest_step_s == pytest.approx(2.0)
    assert slow.median_step_s == pytest.approx(0.5)
    assert slow.save_pauses_s == () and slow.slowest_other_step == 7  # no save was announced
    # the same stall announced as a save (the trainer's "saving" stage after step 6): its step is the save's
    # pause, and the slowest other step is an ordinary one
    announced = _finished_run(stalled)
    announced.save_stamps = [stalled[5] + 0.01]
    saved = phases(announced, warmup_steps=1)
    assert saved.save_pauses_s == (pytest.approx(2.0),) and saved.slowest_step == 7
    assert saved.slowest_other_step_s == pytest.approx(0.5) and saved.slowest_other_step != 7
    # launch-bound: the last step is reported right after the one before it (no launch follows it)
    early_last = [12.0, 12.5, 13.0, 13.01]
    assert phases(_finished_run(early_last), warmup_steps=2).steady_s_per_step == pytest.approx(0.5)


def test_events_fill_the_run_times() -> None:
    times = RunTimes()
    for event in (Stage("class_images"), ClassImagesProgress(1, 12), Stage("train"),
                  Progress(1, 2, 0.5, 1e-6, 1.0, 1.0), Progress(2, 2, 0.25, 1e-6, 1.0, 0.0), Stage("export"),
                  SamplesSaved(2, ("a.png",), "photo"), Finished("completed", 2, {})):
        times(event)
    assert times.losses == [0.5, 0.25] and len(times.steps) == 2 and times.finished is not None
    assert times.stages["export"] <= times.last_samples <= times.finished
    assert set(times.stages) == {"class_images", "train", "export"} and times.train_window is not None


def test_table_shows_every_preset_and_how_the_total_is_made() -> None:
    measured = PresetResult("24GB", "ok", 60, Phases(10.0, 6.0, 1.0, 15, 4.0, 0.2, 18.0, 3.0, 5.0), 15.7, 17.1,
                            14.0, 16.0)
    failed = PresetResult("8GB", "out of memory")
    table = format_table([measured, failed], 2000)
    lines = table.splitlines()
    assert lines[0].startswith("| preset") and len(lines) == 4
    assert "| 24GB" in lines[2] and "0.2000" in lines[2] and "5.00" in lines[2] and "436" in lines[2]
    assert "out of memory" in lines[3]
    assert PresetResult.from_dict(json.loads(json.dumps(measured.to_dict()))) == measured
    parts = format_parts([measured, failed], 2000)
    assert "24GB: 10.0 + 6.0 + 1.0 + 4.0 + 1985 x 0.2000 + 18.0 = 436 s" in parts
    assert "load: 3.0 s to the model load, 7.0 s loading; export: 5.0 s samples, 13.0 s files" in parts
    timed_batches = dataclasses.replace(measured, phases=dataclasses.replace(
        measured.phases, class_setup_s=2.0, class_first_batch_s=3.0, class_batch_s=1.25, class_batches=4))
    assert "class images: 2.0 s to the first batch, first batch 3.00 s, then 3 more at 1.25 s each" in \
        format_parts([timed_batches], 2000)


@pytest.mark.slow
def test_bench_command_runs_a_tiny_recipe_end_to_end(tmp_path: Path) -> None:
    quick = "guide:num_class_images=1,class_infer_steps=1,save_infer_steps=1,n_save_sample=1"
    result = subprocess.run([sys.executable, "-m", "dreamcore", "bench", "--model-size", "tiny", "--steps", "4",
                             "--warmup", "1", "--preset", quick, "--work", str(tmp_path),
                             "--json", str(tmp_path / "bench.json"), "--python-profile"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    (run,) = report["results"]
    assert run["status"] == "ok" and run["steps"] == 4 and run["phases"]["steady_s_per_step"] > 0
    assert report["card"]["gpu"] == "none (CPU)"
    assert "| guide num_class_images=1" in result.stdout and "2000-step total" in result.stdout
    assert list((tmp_path / "runs").glob("*/*.safetensors"))  # the export ran and is in the timing
    (python_profile,) = tmp_path.glob("python-profile-0-*.txt")
    assert "load_models" in python_profile.read_text()  # where the start-up went


def test_guide_verbatim_is_the_guides_command_on_single_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from dreamcore.presets import apply_memory_preset

    model = tmp_path / "model-tiny"
    shutil.copytree(tiny_model_dir, model)
    config = recipe_config(parse_preset("guide-verbatim"), model, tmp_path / "p", tmp_path / "o", 2000, 64)
    assert Path(config.pretrained_model_name_or_path).is_file() and Path(config.pretrained_vae_name_or_path).is_file()
    assert (config.mixed_precision, config.use_8bit_adam, config.save_interval, config.checkpointing_steps) == \
        ("fp16", True, 500, 500)
    assert config.memory_preset == "auto" and config.chose("use_8bit_adam") and not config.chose("memory_preset")
    tiered, message = apply_memory_preset(config, free_bytes=80 * 2**30)  # as on a large card
    assert tiered.memory_preset == "16GB" and "ask for a memory budget" in message


@pytest.mark.slow
def test_bench_runs_the_guides_command_with_its_saves(tmp_path: Path) -> None:
    quick = "guide-verbatim:num_class_images=1,class_infer_steps=1,save_infer_steps=1,n_save_sample=1,save_interval=2"
    result = subprocess.run([sys.executable, "-m", "dreamcore", "bench", "--model-size", "tiny", "--steps", "4",
                             "--warmup", "1", "--preset", quick, "--work", str(tmp_path),
                             "--json", str(tmp_path / "bench.json")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (run,) = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert run["status"] == "ok" and run["steps"] == 4
    (folder,) = (tmp_path / "runs").iterdir()
    assert len(list((folder / "checkpoints").glob("*-step-000002.safetensors"))) == 1  # written beside training
    assert "| guide-verbatim" in result.stdout


def test_bench_refuses_a_run_without_steady_state(capsys) -> None:
    from dreamcore.cli import main

    assert main(["bench", "--steps", "5", "--warmup", "4"]) == 2
    assert "no steady state" in capsys.readouterr().err
    assert main(["bench", "--preset", "nope"]) == 2


@pytest.mark.slow
def test_bench_runs_a_preset_data_parallel_in_two_processes(tmp_path: Path) -> None:
    quick = "guide:num_class_images=2,class_infer_steps=1,save_infer_steps=1,n_save_sample=1"
    result = subprocess.run([sys.executable, "-m", "dreamcore", "bench", "--model-size", "tiny", "--steps", "4",
                             "--warmup", "1", "--preset", quick, "--num-processes", "2", "--work", str(tmp_path),
                             "--json", str(tmp_path / "bench.json"), "--python-profile"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (run,) = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert run["status"] == "ok" and run["steps"] == 4 and run["label"].endswith("x2 processes")
    assert re.search(r"train: 4 steps on cpu\S* x 2 processes", result.stdout)  # the trainer says so itself
    (folder,) = (tmp_path / "runs").iterdir()
    assert len(list((folder / "class_images").glob("*/*.png"))) == 2  # each process generated its share


def test_step_profiler_summarizes_the_profiled_steps(tmp_path: Path) -> None:
    import torch

    from dreamcore.bench.profile import StepProfiler

    out = tmp_path / "profile.txt"
    profiler = StepProfiler(out, first_step=2, steps=3, label="tiny")
    weights = torch.randn(64, 64)
    for step in range(1, 7):
        if step > 2:
            torch.mm(weights, weights).relu_()  # the profiled "training step"
        profiler(Progress(step, 6, 0.1, 1e-6, 1.0, 1.0))
    text = out.read_text()
    assert text.startswith("tiny: 3 steps profiled; wall ") and "% busy" in text
    mm_line = next(line for line in text.splitlines() if "aten::mm" in line)
    assert "1.0x" in mm_line  # one matrix product a step, counted per step


def test_busy_time_counts_overlapping_kernels_once() -> None:
    from dreamcore.bench.profile import busy_time_by_key

    intervals = [(7, 0.0, 10.0), (7, 5.0, 12.0), (7, 20.0, 25.0), (7, 21.0, 22.0),  # 12 + 5 on stream 7
                 (13, 3.0, 4.0), (13, 30.0, 31.5)]
    assert busy_time_by_key(intervals) == {7: 17.0, 13: 2.5}
    assert busy_time_by_key([]) == {}


def test_profiling_ends_before_the_steady_window_opens() -> None:
    """StepProfiler stops and summarizes (a second or two) in the progress callback of its last step, after
    the bench's timer has stamped that step; the steady window must not contain that second (run N measured
    0.1015 s/step for a 0.046 s step when it did)."""
    from dreamcore.bench.profile import PROFILED_STEPS, profile_start_step

    for warmup in (10, 15, 20):
        first = profile_start_step(warmup)
        assert first >= 4  # the CUDA-graph step is recorded at step 4: profile the replayed step
        stops_at = first + PROFILED_STEPS  # StepProfiler's last step (see the test above)
        times, clock = RunTimes(started=0.0), 0.0
        times.stages.update(load=0.0, train=0.0)
        for step in range(1, warmup + 6):
            clock += 0.05  # every step takes 50 ms
            times.steps.append(clock)  # the timer comes first in the bench's callbacks
            if step == stops_at:
                clock += 2.0  # the profiler's summary
        times.stages["export"] = times.finished = clock
        assert phases(times, warmup).steady_s_per_step == pytest.approx(0.05), warmup
