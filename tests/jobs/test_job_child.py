"""The training child's entry (dreamcore.jobs.child), run in-process with a stand-in for dreamcore.train."""

from __future__ import annotations

import json
import os
import signal

import pytest

import dreamcore
from dreamcore.events import Finished, Progress
from dreamcore.jobs import child
from dreamcore.jobs.events_file import EventsReader
from dreamcore.jobs.folder import JobFolder


@pytest.fixture
def job(tmp_path, fake_config) -> JobFolder:
    folder = JobFolder(tmp_path / "job")
    folder.path.mkdir()
    fake_config.replace(output_dir=str(folder.output)).save(folder.config)
    return folder


@pytest.fixture
def restore_signals():
    saved = {name: signal.getsignal(getattr(signal, name)) for name in ("SIGINT", "SIGTERM")}
    yield
    for name, handler in saved.items():
        signal.signal(getattr(signal, name), handler)


def events(folder: JobFolder) -> list[dict]:
    return [json.loads(line) for line in folder.events.read_text().splitlines()]


def test_events_reach_the_file_and_sigterm_or_the_stop_file_stop_training(job, monkeypatch, restore_signals):
    seen_stop = []

    def fake_train(config, callbacks, stop):
        for step in range(1, 4):
            for callback in callbacks:
                callback(Progress(step, 3, 0.5, 1e-6, 10.0, 0.1))
            if step == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # what Ctrl+C in a terminal or a service stop sends
            seen_stop.append(stop.is_set())
        for callback in callbacks:
            callback(Finished("stopped", 3, {"state": "s"}))

    monkeypatch.setattr(dreamcore, "train", fake_train)
    assert child.main([str(job.path), "--attempt", "3"]) == 0
    assert seen_stop == [False, True, True]
    kinds = [event["kind"] for event in events(job)]
    assert kinds == ["job_started", "progress", "progress", "progress", "finished"]
    progress = EventsReader(job.events).read()
    assert progress.attempt == 3 and progress.finished_status == "stopped" and progress.step == 3

    stop = child.StopFileOrSignal(job.stop_file)
    assert not stop.is_set()
    job.stop_file.touch()  # what JobManager.cancel writes, from any process
    assert stop.is_set()


def test_an_error_is_written_with_advice_and_raised(job, monkeypatch, restore_signals):
    def failing_train(config, callbacks, stop):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(dreamcore, "train", failing_train)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        child.main([str(job.path)])
    error = events(job)[-1]
    assert error["kind"] == "job_error" and error["error_type"] == "RuntimeError"
    assert "gradient_checkpointing" in error["advice"] and "Traceback" in error["traceback"]


def test_a_line_cut_short_by_a_kill_does_not_break_the_next_attempt(job, monkeypatch, restore_signals):
    job.events.write_text('{"kind": "job_started", "attempt": 1}\n{"kind": "progress", "st')  # killed mid-write
    monkeypatch.setattr(dreamcore, "train", lambda config, callbacks, stop: [
        c(Finished("completed", 5, {"single_file": "m.safetensors"})) for c in callbacks])
    child.main([str(job.path), "--attempt", "2"])
    progress = EventsReader(job.events).read()
    assert progress.attempt == 2 and progress.finished_status == "completed"
    assert progress.outputs == {"single_file": "m.safetensors"}
    assert any("unfinished event line" in message for message in progress.messages)


def test_a_completed_job_shows_no_stage_but_a_stopped_one_keeps_where_it_stopped():
    from dreamcore.jobs.events_file import JobProgress

    def progress_after(status: str) -> JobProgress:
        progress = JobProgress()
        for event in ({"kind": "job_started", "attempt": 1}, {"kind": "stage", "name": "export"},
                      {"kind": "finished", "status": status, "step": 12}):
            progress.apply(event)
        return progress

    assert progress_after("completed").stage == ""  # it showed "completed (export)"
    assert progress_after("stopped").stage == "export"
