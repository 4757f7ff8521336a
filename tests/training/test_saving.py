"""Saves written by a thread while training goes on: complete files, the weights of their own step, errors
raised, events on the training thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dreamcore.training import train
from dreamcore.training.saving import BackgroundWriter, host_copy

from tiny_runs import tiny_config


def test_host_copy_is_a_copy_in_the_same_nesting() -> None:
    weight = torch.ones(3)
    snapshot = host_copy({"a": [weight, (weight, 2)], "b": "text"})
    weight.add_(1)  # training goes on in place
    assert torch.equal(snapshot["a"][0], torch.ones(3)) and torch.equal(snapshot["a"][1][0], torch.ones(3))
    assert isinstance(snapshot["a"][1], tuple) and snapshot["a"][1][1] == 2 and snapshot["b"] == "text"


def test_writes_run_in_order_without_the_caller_waiting_and_are_reported_on_its_thread() -> None:
    writer = BackgroundWriter()
    release = threading.Event()
    running: list[str] = []
    reported: list[tuple[str, str]] = []

    def slow(name: str):
        def write():
            running.append(name)
            release.wait(5)
        return write

    def report(name: str):
        return lambda: reported.append((name, threading.current_thread().name))

    writer.submit(slow("first"), report("first"))
    started = time.perf_counter()
    writer.submit(slow("second"), report("second"))  # a save's state and checkpoint: training waits for neither
    assert time.perf_counter() - started < 1
    time.sleep(0.1)
    assert writer.busy() and running == ["first"] and reported == []  # the second waits for the first
    release.set()
    writer.wait()
    assert running == ["first", "second"] and not writer.busy()
    assert reported == [("first", threading.current_thread().name), ("second", threading.current_thread().name)]


def test_a_write_after_a_failed_one_is_not_made_and_the_failure_is_raised() -> None:
    writer = BackgroundWriter()
    made: list[str] = []
    release = threading.Event()

    def failing():
        release.wait(5)
        raise OSError(28, "No space left on device")

    writer.submit(failing)
    writer.submit(lambda: made.append("checkpoint"))  # queued while the state is still being written
    release.set()
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    assert made == []


def test_a_failed_write_is_raised_at_the_next_poll_and_logged_after_a_training_error() -> None:
    writer = BackgroundWriter()

    def failing():
        raise OSError(28, "No space left on device")

    writer.submit(failing)
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    writer.wait()  # raised once, not again
    logged: list[tuple[str, str]] = []
    writer.submit(failing)
    writer.finish_after_error(lambda message, level: logged.append((message, level)))
    assert len(logged) == 1 and "No space left" in logged[0][0] and logged[0][1] == "error"


def test_training_goes_on_while_a_checkpoint_is_written_and_the_file_holds_its_steps_weights(
        tiny_model_dir: Path, photo_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from dreamcore.convert import single_file

    written = single_file.write_safetensors

    def slow_write(*args, **kwargs):
        time.sleep(1.5)  # a slow disk: training must not wait for it
        return written(*args, **kwargs)

    monkeypatch.setattr(single_file, "write_safetensors", slow_write)
    events: list = []
    long = train(tiny_config(tiny_model_dir, photo_dir, tmp_path / "long", max_train_steps=6, save_interval=2,
                             checkpointing_steps=2), callbacks=[events.append])
    kinds = [(e.kind, e.step, getattr(e, "what", "")) for e in events if e.kind in ("progress", "checkpoint")]
    saved_at = kinds.index(("checkpoint", 2, "checkpoint"))
    assert ("progress", 3, "") in kinds[:saved_at]  # step 3 ran while step 2's file was being written
    assert ("checkpoint", 2, "state") in kinds
    # Steps 3-6 changed the weights in place while the file of step 2 was written: it holds step 2's weights,
    # as the final file of a run of 2 steps does.
    short = train(tiny_config(tiny_model_dir, photo_dir, tmp_path / "short", max_train_steps=2))
    checkpoint = load_file(str(tmp_path / "long" / "checkpoints" / "long-step-000002.safetensors"))
    final = load_file(short.outputs["single_file"])
    assert checkpoint.keys() == final.keys()
    assert all(torch.equal(checkpoint[key], final[key]) for key in final)
    assert not list((tmp_path / "long").rglob(".tmp*"))  # every write finished under its final name
