"""JobManager with a stand-in child (tests/jobs/fake_child.py): queue order, cancel, resume, crash, restart."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from dreamcore.config import ConfigError, TrainConfig
from dreamcore.jobs import JobConflictError, JobNameError, JobNotFoundError
from dreamcore.jobs.folder import JobFolder, JobRecord

from jobs_helpers import wait_for, wait_until_final


def test_a_job_runs_in_a_child_and_reports_progress_samples_and_outputs(make_manager, fake_config):
    manager = make_manager()
    info = manager.submit(fake_config, "anna")
    assert info.status in ("queued", "running")
    done = wait_until_final(manager, "anna")
    assert done.status == "completed", done.error
    assert (done.step, done.total_steps) == (5, 5)
    assert [step for step, _ in done.losses] == [1, 2, 3, 4, 5]
    assert done.loss == pytest.approx(1 / 5)
    assert done.samples and Path(done.samples[0][1][0]).is_file()
    assert Path(done.outputs["single_file"]).read_bytes() == b"model"
    # Everything lives in the job's folder; the child trained with output_dir pointing there.
    folder = Path(done.folder)
    assert folder == manager.root / "anna"
    saved = json.loads((folder / "train_config.json").read_text())
    assert saved["output_dir"] == str(folder / "output")
    assert Path(done.outputs["single_file"]).parent == folder / "output"
    assert any("fake child attempt 1" in line for line in done.log_tail)
    assert done.progress_fraction == 1.0 and done.eta_seconds is None


def test_jobs_run_one_after_another_in_submit_order(make_manager, fake_config):
    manager = make_manager()
    for name in ("first", "second", "third"):
        manager.submit(fake_config, name)
    assert [i.queue_position for i in manager.list() if i.status == "queued"][-2:] == [1, 2] or \
        [i.status for i in manager.list()].count("queued") >= 2
    infos = [wait_until_final(manager, name) for name in ("first", "second", "third")]
    assert [i.status for i in infos] == ["completed"] * 3
    for earlier, later in zip(infos, infos[1:]):
        assert later.started_at >= earlier.finished_at - 0.5  # never two at once (one poll of slack)


def test_with_gpus_one_job_runs_on_each_gpu_at_once(make_manager, fake_config):
    manager = make_manager(gpus=["0", "1"])
    slow = fake_config.replace(max_train_steps=20)  # 20 steps of 30 ms: long enough to overlap
    for name in ("a", "b", "c"):
        manager.submit(slow, name)
    a, b, c = (wait_until_final(manager, name) for name in ("a", "b", "c"))
    assert [i.status for i in (a, b, c)] == ["completed"] * 3

    def gpu_of(info) -> str:
        return next(line.split("gpu=")[1] for line in info.log_tail if "gpu=" in line).strip()

    assert {gpu_of(a), gpu_of(b)} == {"0", "1"}  # the first two ran side by side, each on its own GPU
    assert b.started_at < a.finished_at and a.started_at < b.finished_at
    assert c.started_at >= min(a.finished_at, b.finished_at) - 0.5  # the third waited for a free GPU
    assert gpu_of(c) in {"0", "1"}
    assert JobFolder(Path(c.folder)).read_record().gpu == gpu_of(c)


@pytest.mark.parametrize("gpus", [[], ["0", "0"], ["0", ""], ["0,1"]])
def test_gpus_must_be_distinct_device_ids(make_manager, gpus):
    with pytest.raises(ValueError, match="gpus: give distinct CUDA device ids"):
        make_manager(gpus=gpus)


def test_cancel_a_queued_job_never_starts_it(make_manager, fake_config):
    manager = make_manager()
    manager.submit(fake_config.replace(max_train_steps=40), "long")
    manager.submit(fake_config, "waiting")
    cancelled = manager.cancel("waiting")
    assert cancelled.status == "cancelled"
    manager.cancel("long")
    wait_until_final(manager, "long")
    time.sleep(0.3)
    assert manager.get("waiting").status == "cancelled"
    assert not (manager.root / "waiting" / "events.jsonl").exists()


def test_cancel_stops_the_child_cleanly_and_resume_continues_it(make_manager, fake_config):
    manager = make_manager()
    manager.submit(fake_config.replace(max_train_steps=200), "anna")
    wait_for(manager, "anna", lambda i: i.step >= 2, what="step 2")
    assert manager.cancel("anna").stop_requested
    stopped = wait_until_final(manager, "anna")
    assert stopped.status == "cancelled" and "Resume" in stopped.advice
    assert stopped.step < 200
    with pytest.raises(JobConflictError, match="already ended"):
        manager.cancel("anna")

    resumed = manager.resume("anna")
    assert resumed.status in ("queued", "running")
    with pytest.raises(JobConflictError, match="cannot be started twice"):
        manager.resume("anna")
    assert json.loads((manager.root / "anna" / "train_config.json").read_text())["resume_from_checkpoint"] == "latest"
    wait_for(manager, "anna", lambda i: i.attempt == 2 and i.status == "running", what="attempt 2 running")
    manager.cancel("anna")  # the fake child needs 200 steps; what matters is that attempt 2 ran resuming
    again = wait_until_final(manager, "anna")
    assert again.attempt == 2
    assert any("fake child attempt 2 resume='latest'" in line for line in again.log_tail)


def test_an_out_of_memory_error_in_the_child_fails_the_job_with_advice(make_manager, fake_config):
    manager = make_manager()
    manager.submit(fake_config.replace(seed=1), "oom")
    manager.submit(fake_config, "after")
    failed = wait_until_final(manager, "oom")
    assert failed.status == "failed"
    assert "CUDA out of memory" in failed.error
    assert "gradient_checkpointing" in failed.advice and "use_8bit_adam" in failed.advice
    assert wait_until_final(manager, "after").status == "completed"
    # It failed before saving any state: Resume starts it over instead of asking for a state that is not there.
    manager.resume("oom")
    assert TrainConfig.load(manager.root / "oom" / "train_config.json").resume_from_checkpoint == ""
    assert wait_until_final(manager, "oom").attempt == 2


def test_a_killed_child_fails_the_job_and_the_queue_goes_on(make_manager, fake_config):
    manager = make_manager()
    manager.submit(fake_config.replace(max_train_steps=400), "victim")
    manager.submit(fake_config, "next")
    running = wait_for(manager, "victim", lambda i: i.step >= 1, what="step 1")
    pid = manager._folder("victim").read_record().pid
    assert running.status == "running" and pid
    os.kill(pid, signal.SIGKILL)
    failed = wait_until_final(manager, "victim")
    assert failed.status == "failed"
    assert "SIGKILL" in failed.error and "step" in failed.error
    assert "Resume" in failed.advice
    assert wait_until_final(manager, "next").status == "completed"


def test_a_child_ignoring_cancel_is_ended_after_the_grace_period(make_manager, fake_config):
    manager = make_manager(stop_grace_seconds=0.3)
    manager.submit(fake_config.replace(seed=2, max_train_steps=400), "stubborn")
    wait_for(manager, "stubborn", lambda i: i.step >= 1, what="step 1")
    manager.cancel("stubborn")
    ended = wait_until_final(manager, "stubborn", timeout=20)
    assert ended.status == "cancelled" and "did not stop" in ended.error
    assert ended.step < 400


def test_a_new_manager_on_the_same_root_shows_the_jobs_and_follows_the_running_child(make_manager, fake_config,
                                                                                     tmp_path):
    first = make_manager()
    first.submit(fake_config, "done-before")
    wait_until_final(first, "done-before")
    first.submit(fake_config.replace(max_train_steps=30), "running-across")
    first.submit(fake_config, "queued-across")
    wait_for(first, "running-across", lambda i: i.step >= 1, what="step 1")
    first.shutdown()  # the WebUI restarts; the child keeps training

    second = make_manager()
    assert second.runs_queue
    by_name = {i.name: i for i in second.list()}
    assert by_name["done-before"].status == "completed"
    assert by_name["running-across"].status == "running"
    assert by_name["queued-across"].status == "queued"
    assert wait_until_final(second, "running-across").status == "completed"
    assert wait_until_final(second, "queued-across").status == "completed"


def test_a_job_left_running_by_a_dead_process_is_marked_failed_on_start(tmp_path, make_manager, fake_config):
    root = tmp_path / "jobs"
    folder = JobFolder(root / "orphan")
    folder.path.mkdir(parents=True)
    fake_config.save(folder.config)
    folder.write_record(JobRecord(name="orphan", status="running", created_at=1.0, queued_at=1.0, attempt=1,
                                  pid=2 ** 22 + 12345))  # above pid_max: never a live process
    manager = make_manager(root)
    info = manager.get("orphan")
    assert info.status == "failed"
    assert "gone" in info.error and "started again" in info.error
    assert "Resume" in info.advice


def test_only_one_manager_runs_a_root_and_others_see_the_same_jobs(make_manager, fake_config):
    worker = make_manager()
    viewer = make_manager()
    assert worker.runs_queue and not viewer.runs_queue
    viewer.submit(fake_config, "from-viewer")  # e.g. the CLI adding a job while the WebUI runs the queue
    assert wait_until_final(worker, "from-viewer").status == "completed"
    assert viewer.get("from-viewer").status == "completed"


def test_bad_requests_are_refused_and_change_nothing(make_manager, fake_config, tmp_path):
    manager = make_manager(run_queue=False)
    for bad in ("../escape", "a/b", "..", ".hidden", "", "name.", "con", "x" * 65, "spa ce"):
        with pytest.raises(JobNameError):
            manager.submit(fake_config, bad)
    with pytest.raises(ConfigError) as problems:
        manager.submit(fake_config.replace(instance_data_dir=str(tmp_path / "missing"), resolution=30), "bad")
    assert len(problems.value.problems) == 2
    assert sorted(p.name for p in manager.root.iterdir() if not p.name.startswith(".")) == []
    manager.submit(fake_config, "taken")
    before = (manager.root / "taken" / "job.json").read_bytes()
    with pytest.raises(JobConflictError, match="already exists"):
        manager.submit(fake_config.replace(max_train_steps=9), "taken")
    assert (manager.root / "taken" / "job.json").read_bytes() == before
    with pytest.raises(JobNotFoundError):
        manager.get("nobody")


def test_remove_and_rerun(make_manager, fake_config):
    manager = make_manager()
    manager.submit(fake_config.replace(max_train_steps=300), "anna")
    wait_for(manager, "anna", lambda i: i.status == "running", what="running")
    with pytest.raises(JobConflictError, match="cancel it first"):
        manager.remove("anna")
    manager.cancel("anna")
    wait_until_final(manager, "anna")
    rerun = manager.rerun("anna")
    assert rerun.name == "anna-2"
    config = TrainConfig.load(manager.root / "anna-2" / "train_config.json")
    assert config.resume_from_checkpoint == "" and config.output_dir == str(manager.root / "anna-2" / "output")
    manager.cancel("anna-2")
    manager.remove("anna")
    assert not (manager.root / "anna").exists()
    assert [i.name for i in manager.list()] == ["anna-2"]
    with pytest.raises(JobNotFoundError):
        manager.get("anna")


def test_a_missing_interpreter_fails_the_job_with_the_reason(make_manager, fake_config, tmp_path):
    manager = make_manager(python=str(tmp_path / "no-such-python"), child_command=None)
    manager.submit(fake_config, "anna")
    failed = wait_until_final(manager, "anna")
    assert failed.status == "failed"
    assert "could not start the training process" in failed.error and "no-such-python" in failed.error
    assert "interpreter" in failed.advice


def test_a_damaged_settings_file_fails_the_job_with_the_file_named(make_manager, fake_config):
    manager = make_manager(child_command=None, run_queue=False)  # the real child, queue started below
    manager.submit(fake_config, "anna")
    (manager.root / "anna" / "train_config.json").write_text("{not json")
    manager.shutdown()
    runner = make_manager(child_command=None)
    failed = wait_until_final(runner, "anna")
    assert failed.status == "failed"
    assert "ConfigError" in failed.error and "train_config.json" in failed.error and "not valid JSON" in failed.error
