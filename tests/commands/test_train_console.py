"""What `python -m dreamcore train` shows and keeps: one bar of the training steps with an honest rate, the stages
named, no library noise, and log.txt, events.jsonl (and TensorBoard scalars) in the output folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from dreamcore.commands.train import TensorBoardScalars, TrainingProgressPrinter, report_to_messages
from dreamcore.events import (CheckpointSaved, Finished, Log, Progress, Stage, StepClock, describe)
from dreamcore.jobs.events_file import EventsReader, RunFiles

from test_train_command import run_dreamcore


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_leaves_out_the_warm_up_steps_and_the_pauses_for_saving() -> None:
    clock = FakeClock()
    steps = StepClock(warmup=2, clock=clock)
    clock.now += 30.0  # step 1: compilation
    assert steps.step_done() == 30.0 and steps.steps_per_second == 0.0 and steps.eta_seconds(9) is None
    clock.now += 5.0
    steps.step_done()
    assert steps.eta_seconds(8) is None  # still warming up: no rate rather than a wild one
    for _ in range(2):
        clock.now += 0.5
        assert steps.step_done() == 0.5
    with steps.paused():
        clock.now += 120.0  # a checkpoint and its samples
    clock.now += 0.5
    assert steps.step_done() == 0.5
    assert steps.steps_per_second == 2.0 and steps.eta_seconds(100) == 50.0


def progress(step: int, total: int = 4, rate: float = 0.0, eta: float | None = None) -> Progress:
    return Progress(step, total, 0.25, 1e-6, rate, eta, None, 0.5)


def test_the_bar_shows_a_rate_only_once_measured_names_the_save_and_closes_at_the_export() -> None:
    out = io.StringIO()
    printer = TrainingProgressPrinter(out, interactive=True)
    printer(progress(1))
    first = out.getvalue()
    assert "1/4" in first and "step/s" not in first and "ETA" not in first and "it/s" not in first
    printer(Stage("saving", "step 1: state, samples, checkpoint"))
    assert out.getvalue().rsplit("\r", 1)[-1].startswith("saving step 1: state, samples, checkpoint")
    printer(progress(2, rate=2.0, eta=1.0))
    last = out.getvalue().rsplit("\r", 1)[-1]
    assert not last.startswith("saving") and "2.00 step/s, ETA 0:01" in last
    printer(Stage("export", "final model"))
    assert printer.bar is None  # closed: not a bar sitting at 100% through the export


def test_without_a_terminal_the_bar_is_a_line_per_hundredth(capsys: pytest.CaptureFixture) -> None:
    out = io.StringIO()
    printer = TrainingProgressPrinter(out, interactive=False)
    for step in range(1, 401):
        printer(progress(step, total=400, rate=2.0, eta=(400 - step) / 2))
    lines = out.getvalue().splitlines()
    assert len(lines) == 101 and lines[-1].startswith("step 400/400: loss 0.2500")
    assert "\r" not in out.getvalue()


def test_report_to_tensorboard_without_the_package_says_so_and_other_trackers_are_explained(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dreamcore.commands import train as train_command

    monkeypatch.setattr(train_command, "tensorboard_available", lambda: False)
    write, notes = report_to_messages("tensorboard", tmp_path, None)
    assert not write and len(notes) == 1
    assert "tensorboard package is not installed" in notes[0] and "dreamcore[tensorboard]" in notes[0]
    write, notes = report_to_messages("wandb,comet_ml", tmp_path, None)
    assert not write and [note.split(":")[0] for note in notes] == ["--report_to wandb", "--report_to comet_ml"]
    monkeypatch.setattr(train_command, "tensorboard_available", lambda: True)
    write, notes = report_to_messages("all", tmp_path, "tb")
    assert write and str(tmp_path / "tb") in notes[0]


def test_tensorboard_scalars_of_each_step() -> None:
    written: list[tuple[str, float, int]] = []

    class Writer:
        closed = False

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            written.append((tag, value, step))

        def close(self) -> None:
            Writer.closed = True

    scalars = TensorBoardScalars(Path("logs"), make_writer=lambda folder: Writer())
    scalars(Log("no writer before the first step"))
    assert scalars.writer is None
    scalars(Progress(1, 2, 0.5, 1e-6, 0.0, None, 0.25, 0.8))
    scalars(Finished("completed", 1, {}))
    assert written == [("train/loss", 0.5, 1), ("train/learning_rate", 1e-6, 1), ("train/prior_loss", 0.25, 1),
                       ("train/step_seconds", 0.8, 1)]
    assert Writer.closed


def test_run_files_open_only_once_the_run_is_accepted(tmp_path: Path) -> None:
    refused = RunFiles(tmp_path / "refused")
    refused(Stage("validate"))
    refused.error(ValueError("bad settings"))
    refused.close()
    assert not (tmp_path / "refused").exists()

    files = RunFiles(tmp_path / "out", command="python -m dreamcore train ...")
    for event in (Stage("validate"), Log("a note", "warning"), Stage("load", "tiny"), Stage("train"),
                  progress(1), Stage("saving", "step 1: state"), CheckpointSaved(1, "state/step-1", "state"),
                  progress(2, rate=2.0, eta=1.0)):
        files(event)
    files.error(RuntimeError("out of memory"), "lower the batch size")
    files.close()
    log = (tmp_path / "out" / "log.txt").read_text()
    assert log.startswith("=== run started ") and "python -m dreamcore train ..." in log.splitlines()[0]
    for line in ("== validate", "WARNING: a note", "saving step 1: state", "step 1: state saved to state/step-1",
                 "step 2/4: loss 0.2500, lr 1.00e-06, 0.50 s/step, ETA 0:01", "error: out of memory"):
        assert line in log, line
    read = EventsReader(tmp_path / "out" / "events.jsonl").read()  # as the tab reads a job's events
    assert read.losses == [(1, 0.25), (2, 0.25)] and read.stage == "train"
    assert read.error is not None and read.error["message"] == "out of memory"


def test_a_save_is_the_stage_a_job_shows_until_training_goes_on(tmp_path: Path) -> None:
    files = RunFiles(tmp_path)
    reader = EventsReader(tmp_path / "events.jsonl")
    for event in (Stage("load"), Stage("train"), progress(1), Stage("saving", "step 1: samples, checkpoint")):
        files(event)
    assert reader.read().stage == "saving step 1: samples, checkpoint"
    files(progress(2))
    assert reader.read().stage == "train"
    files.close()
    assert describe(Stage("saving", "step 1: samples")) == "saving step 1: samples"


def test_the_command_line_run_is_quiet_and_keeps_its_log_and_events(tmp_path: Path) -> None:
    """Prior preservation on the tiny model: every run of it printed diffusers' float32 notice, transformers'
    torchvision notice and their bars; the rate of step 1 was thousands of steps a second."""
    from dreamcore.commands.demo import make_demo_photos
    from dreamcore.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny", fmt="diffusers")
    make_demo_photos(tmp_path / "photos", count=2, size=64)
    out = tmp_path / "out"
    result = run_dreamcore(
        "train", f"--pretrained_model_name_or_path={model}", f"--instance_data_dir={tmp_path / 'photos'}",
        "--instance_prompt=photo of sks person", "--class_prompt=photo of a person", "--with_prior_preservation",
        f"--class_data_dir={tmp_path / 'class'}", "--num_class_images=1", "--class_infer_steps=1",
        f"--output_dir={out}", "--resolution=64", "--max_train_steps=4", "--save_interval=2",
        "--save_infer_steps=1", "--n_save_sample=1", "--mixed_precision=fp16", "--report_to=wandb")
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    for noise in ("should be kept in float32", "requires torchvision", "FutureWarning", "Loading weights",
                  "Writing model shards", "\x1b[A", "it/s"):
        assert noise not in console, noise
    assert "--report_to wandb: dreamcore sends nothing to online trackers" in result.stderr
    progress_lines = [line for line in result.stderr.splitlines() if line.startswith("step ")]
    assert len(progress_lines) == 4 and "ETA" not in progress_lines[0]  # no rate from step 1
    assert "saving step 2: samples, checkpoint" in result.stdout

    log = (out / "log.txt").read_text()
    assert "saving step 2: samples, checkpoint" in log and "Training completed at step 4" in log
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    steps = [event for event in events if event["kind"] == "progress"]
    assert [event["step"] for event in steps] == [1, 2, 3, 4]
    assert all(event["step_seconds"] > 0 and event["learning_rate"] > 0 for event in steps)
    assert events[-1]["kind"] == "finished"


def test_tensorboard_reads_the_scalars_written(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the optional extra dreamcore[tensorboard]")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = TensorBoardScalars(tmp_path / "logs")
    for step in (1, 2):
        scalars(Progress(step, 2, 1.0 / step, 1e-6, 0.0, None, None, 0.5))
    scalars(Finished("completed", 2, {}))
    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("train/loss")] == [(1, 1.0), (2, 0.5)]
