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
from dreamcore.training.saving import BackgroundWriter, HostStaging, host_copy

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


def test_staging_without_cuda_tensors_copies_as_host_copy_does() -> None:
    logged: list[tuple[str, str]] = []
    staging = HostStaging(lambda message, level: logged.append((message, level)))
    weight = torch.ones(3)
    snapshot = staging.copier("state")({"a": [weight, (weight, 2)], "n": 5})
    weight.add_(1)
    assert torch.equal(snapshot["a"][0], torch.ones(3)) and torch.equal(snapshot["a"][1][0], torch.ones(3))
    assert snapshot["a"][0] is not snapshot["a"][1][0] and snapshot["n"] == 5
    staging.release()
    assert logged == []  # nothing to stage on the CPU, nothing to say


def test_a_save_copies_its_state_in_one_call_through_the_trainers_staging(
        tiny_model_dir: Path, photo_dir: Path, tmp_path: Path, monkeypatch) -> None:
    copies: list[tuple[str, set]] = []
    real = HostStaging.copy

    def spy(self, kind, value):
        copies.append((kind, set(value)))
        return real(self, kind, value)

    monkeypatch.setattr(HostStaging, "copy", spy)
    train(tiny_config(tiny_model_dir, photo_dir, tmp_path / "run", max_train_steps=4, save_interval=2,
                      checkpointing_steps=2))
    state_copies = [keys for kind, keys in copies if kind == "state"]
    # step 2's state and the final one's; each holds the weights and the optimizer's state together
    assert state_copies == [{"weights", "rest"}] * 2
    assert [kind for kind, _ in copies].count("checkpoint") == 1  # step 2's file (the final one is written at once)


@pytest.mark.gpu
def test_staging_on_cuda_equals_host_copy_reuses_its_buffer_and_releases_it() -> None:
    logged: list[tuple[str, str]] = []
    staging = HostStaging(lambda message, level: logged.append((message, level)))
    base = torch.randn(64, 33, device="cuda")
    value = {"w": base.t(), "same": [base, base], "half": base.half()[:5], "step": torch.tensor(3.0, device="cuda"),
             "flags": torch.ones(7, dtype=torch.bool, device="cuda"), "cpu": torch.arange(4), "text": "x"}
    first = staging.copy("state", value)
    expected = host_copy(value)
    for key in ("w", "half", "step", "flags", "cpu"):
        assert torch.equal(first[key], expected[key]) and first[key].device.type == "cpu", key
    assert torch.equal(first["same"][0], base.cpu()) and first["same"][0].data_ptr() != first["same"][1].data_ptr()
    assert first["text"] == "x"
    pointer = first["w"].data_ptr()
    base.add_(1)
    second = staging.copy("state", value)
    assert second["w"].data_ptr() == pointer and torch.equal(second["w"], base.t().cpu())  # the same buffer
    staging.release()
    assert logged == []


@pytest.mark.gpu
def test_staging_says_once_why_it_copies_to_ordinary_memory(monkeypatch) -> None:
    from dreamcore.training import saving

    monkeypatch.setattr(saving, "STAGING_HEADROOM_BYTES", 1 << 60)  # no host has this much memory spare
    logged: list[tuple[str, str]] = []
    staging = HostStaging(lambda message, level: logged.append((message, level)))
    tensor = torch.randn(10, device="cuda")
    for _ in range(2):
        assert torch.equal(staging.copy("state", {"t": tensor})["t"], tensor.cpu())
    assert len(logged) == 1 and "ordinary host memory" in logged[0][0]


def test_a_run_whose_states_will_not_fit_on_the_disk_says_so_once_after_the_first(
        tiny_model_dir: Path, photo_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import shutil as real_shutil
    from collections import namedtuple

    from dreamcore.training import checkpoints

    usage = namedtuple("usage", "total used free")
    free = {"bytes": 10**12}

    class Disk:  # shutil as the checkpoints module sees it, with the free space set by the test
        def __getattr__(self, name):
            return getattr(real_shutil, name)

        @staticmethod
        def disk_usage(path):
            return usage(free["bytes"], 0, free["bytes"])

    monkeypatch.setattr(checkpoints, "shutil", Disk())
    roomy: list = []
    train(tiny_config(tiny_model_dir, photo_dir, tmp_path / "roomy", max_train_steps=4, checkpointing_steps=1),
          callbacks=[roomy.append])
    assert not [e for e in roomy if e.kind == "log" and "resumable state is" in e.message]

    state_bytes = sum(p.stat().st_size for p in (tmp_path / "roomy" / "state" / "step-1").iterdir())
    free["bytes"] = 2 * state_bytes  # three more states (steps 2, 3 and the last) will not fit
    tight: list = []
    train(tiny_config(tiny_model_dir, photo_dir, tmp_path / "tight", max_train_steps=4, checkpointing_steps=1),
          callbacks=[tight.append])
    warnings = [e for e in tight if e.kind == "log" and "resumable state is" in e.message]
    assert len(warnings) == 1 and warnings[0].level == "warning"
    assert "3 more will be written" in warnings[0].message and "--checkpoints_total_limit 1" in warnings[0].message
