"""The Done-when tests with real tiny training in the child (``python -m dreamcore.jobs.child``).

A kill of the training child, two jobs through the REST API, and a cancel + resume of real training.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from dreamcore.config import TrainConfig
from dreamcore.jobs import JobManager

from jobs_helpers import make_photos, wait_for, wait_until_final


@pytest.fixture
def tiny_config(tiny_base: Path, tmp_path: Path) -> TrainConfig:
    """Real training of the tiny SD1 model at 64 px: a few steps, one 2-step sample at the end."""
    return TrainConfig(pretrained_model_name_or_path=str(tiny_base),
                       instance_data_dir=str(make_photos(tmp_path / "photos")),
                       instance_prompt="photo of sks person", resolution=64, max_train_steps=4,
                       learning_rate=1e-4, lr_warmup_steps=0, checkpointing_steps=0, n_save_sample=1,
                       save_infer_steps=2, seed=3)


@pytest.fixture
def manager(tmp_path: Path):
    manager = JobManager(tmp_path / "jobs", poll_interval=0.1)
    yield manager
    manager.shutdown(stop_running=True, timeout=120)


@pytest.mark.slow
def test_a_killed_child_fails_its_job_and_two_jobs_queued_through_the_api_then_finish_in_order(
        manager, tiny_config):
    """Both Done-when tests in one queue (each real job costs a child start-up of ~10-20 s on 2 cores):
    SIGKILL of the training child mid-run -> the parent keeps answering, the job is failed with the reason,
    the next jobs start; and those two jobs, queued through the REST API, finish in order with outputs."""
    pytest.importorskip("fastapi", reason="the REST API needs fastapi (the dev extra installs it)")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from dreamcore.jobs.allowed import AllowedFolders
    from dreamcore.jobs.api import create_router

    app = FastAPI()
    folders = [manager.root.parent, Path(tiny_config.pretrained_model_name_or_path).parent]  # jobs, photos, model
    app.include_router(create_router(manager, allowed=AllowedFolders(folders)))
    client = TestClient(app, base_url="http://127.0.0.1")
    body = {k: v for k, v in tiny_config.to_dict().items() if k != "output_dir"}
    jobs = "/dreamcore/v1/jobs"
    for name, steps in (("victim", 100_000), ("first", 4), ("second", 4)):
        response = client.post(jobs, json={"name": name, "config": {**body, "max_train_steps": steps}})
        assert response.status_code == 201, response.text
    assert [j["queue_position"] for j in client.get(jobs).json()["jobs"]][1:] == [1, 2]

    wait_for(manager, "victim", lambda i: i.step >= 2, timeout=180, what="training step 2")
    os.kill(manager._folder("victim").read_record().pid, signal.SIGKILL)
    started = time.monotonic()
    assert client.get(f"{jobs}/victim").status_code == 200  # the parent answers at once
    assert time.monotonic() - started < 2.0
    failed = wait_until_final(manager, "victim", timeout=30)
    assert failed.status == "failed"
    assert "killed by SIGKILL" in failed.error and "at step" in failed.error
    assert "Resume" in failed.advice
    assert wait_for(manager, "first", lambda i: i.status != "queued", timeout=30, what="a start").status in (
        "running", "completed")

    first = wait_until_final(manager, "first", timeout=180)
    second = wait_until_final(manager, "second", timeout=180)
    for job in (first, second):
        assert job.status == "completed", job.error + "\n".join(job.log_tail)
        model = Path(job.outputs["single_file"])
        assert model.name == f"{job.name}.safetensors" and model.stat().st_size > 0  # named after the job
        assert model.is_relative_to(manager.root / job.name)
        assert job.samples and all(Path(p).is_file() for p in job.samples[-1][1])
        assert [step for step, _ in job.losses] == [1, 2, 3, 4]
    assert first.started_at >= failed.finished_at - 0.5
    assert second.started_at >= first.finished_at - 0.5
    listed = client.get(jobs).json()["jobs"]
    assert [(j["name"], j["status"]) for j in listed] == [
        ("victim", "failed"), ("first", "completed"), ("second", "completed")]


@pytest.mark.slow  # two more child start-ups; the runner's cancel/resume logic is covered fast with a stand-in child
def test_cancel_saves_a_state_and_resume_continues_real_training(manager, tiny_config):
    manager.submit(tiny_config.replace(max_train_steps=100_000), "anna")
    wait_for(manager, "anna", lambda i: i.step >= 3, timeout=180, what="training step 3")
    manager.cancel("anna")
    stopped = wait_until_final(manager, "anna", timeout=120)
    assert stopped.status == "cancelled", stopped.error + "\n".join(stopped.log_tail)
    assert Path(stopped.outputs["state"]).is_dir()
    stopped_at = stopped.step
    assert stopped_at >= 3

    manager.resume("anna")
    wait_for(manager, "anna", lambda i: i.attempt == 2 and i.step > stopped_at, timeout=180,
             what="a step after the saved one")
    manager.cancel("anna")
    again = wait_until_final(manager, "anna", timeout=120)
    assert again.status == "cancelled"
    assert any("resumed from" in m and f"at step {stopped_at}" in m for m in again.messages), again.messages
    steps = [step for step, _ in again.losses]
    assert steps == sorted(set(steps)) and steps[0] == 1  # one loss curve across both attempts
