"""Requests racing on the same jobs: random concurrent operations against a running server with the stand-in
child, and cancel/resume/remove/rerun of one queued job at once. Never a 5xx; the queue stays consistent."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter

import pytest

httpx = pytest.importorskip("httpx", reason="the fuzz test needs httpx (the dev extra installs it)")
pytest.importorskip("uvicorn", reason="the fuzz test needs uvicorn (the dev extra installs it)")

from dreamcore.jobs import JobConflictError, JobNotFoundError  # noqa: E402
from dreamcore.jobs.folder import FINAL_STATUSES, JobFolder  # noqa: E402

from jobs_helpers import api_app, live_server, wait_until_final  # noqa: E402

JOBS = "/dreamcore/v1/jobs"
NAMES = ["ann", "bob", "cid"]
SECONDS = 4.0
THREADS = 6


def test_random_concurrent_requests_never_get_a_5xx_and_leave_a_consistent_queue(make_manager, fake_config,
                                                                                 tmp_path):
    manager = make_manager()
    settings = {k: v for k, v in fake_config.to_dict().items() if k != "output_dir"}
    answers: Counter = Counter()
    failures: list[str] = []
    running_at_once: list[int] = []
    stop = threading.Event()

    def request(client: httpx.Client, rng: random.Random) -> tuple[str, httpx.Response]:
        name = rng.choice(NAMES + [f"{n}-2" for n in NAMES])
        action = rng.choice(["submit", "submit", "cancel", "resume", "remove", "rerun", "rerun-as", "get", "list",
                             "bad-json", "bad-name"])
        if action == "submit":
            body = {"name": name, "config": {**settings, "max_train_steps": rng.randint(2, 6), "save_interval": 10}}
            return action, client.post(JOBS, json=body)
        if action in ("cancel", "resume"):
            return action, client.post(f"{JOBS}/{name}/{action}")
        if action == "remove":
            return action, client.delete(f"{JOBS}/{name}")
        if action == "rerun":
            return action, client.post(f"{JOBS}/{name}/rerun")
        if action == "rerun-as":
            return action, client.post(f"{JOBS}/{name}/rerun", json={"name": rng.choice(NAMES)})
        if action == "get":
            return action, client.get(f"{JOBS}/{name}")
        if action == "list":
            return action, client.get(JOBS)
        if action == "bad-json":
            return action, client.post(JOBS, content=b'{"name": "x", "config": {' * rng.randint(1, 40),
                                       headers={"content-type": "application/json"})
        return action, client.post(f"{JOBS}/{name}%20copy/cancel")  # a space: not a job name

    expected = {"submit": {201, 409}, "cancel": {200, 404, 409}, "resume": {200, 404, 409}, "remove": {200, 404, 409},
                "rerun": {201, 404}, "rerun-as": {201, 404, 409}, "get": {200, 404}, "list": {200},
                "bad-json": {400}, "bad-name": {400}}

    def hammer(seed: int, base: str) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=base, timeout=60) as client:
            while not stop.is_set():
                try:
                    action, answer = request(client, rng)
                except httpx.HTTPError as error:  # a dropped connection is a failure too, not a silent thread end
                    failures.append(f"no answer: {error!r}")
                    return
                answers[(action, answer.status_code)] += 1
                if answer.status_code not in expected[action]:
                    failures.append(f"{action} -> {answer.status_code}: {answer.text[:300]}")

    def watch(base: str) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            while not stop.is_set():
                jobs = client.get(JOBS).json()["jobs"]
                running_at_once.append(sum(job["status"] == "running" for job in jobs))
                time.sleep(0.02)

    with live_server(api_app(manager, tmp_path)) as (host, port):
        base = f"http://{host}:{port}"
        threads = [threading.Thread(target=hammer, args=(seed, base)) for seed in range(THREADS)]
        threads.append(threading.Thread(target=watch, args=(base,)))
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 4 * SECONDS  # on a busy machine, go on until enough requests were sent
        time.sleep(SECONDS)
        while sum(answers.values()) < 150 and time.monotonic() < deadline and not failures:
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert not failures, "\n".join(failures[:20])
        assert sum(answers.values()) >= 150, answers  # it did hammer
        assert answers[("submit", 201)] and answers[("remove", 200)] and answers[("cancel", 200)], answers
        assert max(running_at_once) <= 1, running_at_once  # one slot: never two jobs running at once
        with httpx.Client(base_url=base, timeout=30) as client:  # let the queue settle: stop whatever runs
            for job in client.get(JOBS).json()["jobs"]:
                assert client.post(f"{JOBS}/{job['name']}/cancel").status_code in (200, 409)
            for job in client.get(JOBS).json()["jobs"]:
                wait_until_final(manager, job["name"], timeout=60)
            listed = client.get(JOBS).json()["jobs"]

    # Consistent: the list is the folders, every record is whole and final, nothing is left half-done.
    folders = sorted(p.name for p in manager.root.iterdir() if not p.name.startswith("."))
    assert sorted(job["name"] for job in listed) == folders, (listed, folders)
    for name in folders:
        record = JobFolder(manager.root / name).read_record()
        assert record.status in FINAL_STATUSES and record.pid is None, (name, record)
        assert json.loads((manager.root / name / "train_config.json").read_text())["output_dir"] == str(
            manager.root / name / "output")
    hidden = sorted(p.name for p in manager.root.iterdir() if p.name.startswith("."))
    assert hidden == [".jobs.lock", ".worker.lock"], hidden  # no half-made or half-removed job left
    assert not manager._running


def test_cancel_resume_remove_and_rerun_of_one_job_at_once_are_each_applied_or_refused(make_manager, fake_config):
    manager = make_manager(run_queue=False)  # the job stays queued: the requests race on its record alone
    outcomes: Counter = Counter()
    unexpected: list[BaseException] = []
    for round_number in range(12):
        manager.submit(fake_config, "anna")
        barrier = threading.Barrier(8)

        def race(operation: str) -> None:
            barrier.wait()
            try:
                if operation == "rerun":
                    manager.rerun("anna")
                else:
                    getattr(manager, operation)("anna")
                outcomes[(operation, "done")] += 1
            except (JobNotFoundError, JobConflictError) as refusal:
                outcomes[(operation, type(refusal).__name__)] += 1
            except BaseException as error:  # what the API would have answered with a 500
                unexpected.append(error)

        threads = [threading.Thread(target=race, args=(operation,))
                   for operation in ["cancel", "resume", "remove", "rerun"] * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not unexpected, repr(unexpected[:3])
        for info in manager.list():  # every job left is whole
            assert info.status in ("queued", "cancelled") and not info.error.startswith("JobRecordError")
            manager.remove(info.name)
    assert outcomes[("remove", "done")] == 12  # a job is removed once per round ...
    assert outcomes[("remove", "JobNotFoundError")] >= 1  # ... and the racing removals are told it is gone


def test_a_job_removed_and_submitted_again_while_being_read_is_read_anew(make_manager, fake_config, monkeypatch):
    """The window the fuzz test can hit: a read finds the record, then the job is removed and a new one of the
    same name submitted before its events file is opened."""
    manager = make_manager(run_queue=False)
    manager.submit(fake_config, "anna")
    read_progress = manager._read_progress
    calls = []

    def replaced_while_reading(folder):
        calls.append(folder.name)
        if len(calls) == 1:
            manager.remove("anna")
            manager.submit(fake_config.replace(max_train_steps=9), "anna")
            raise FileNotFoundError(folder.events)  # what opening the first job's events file then raises
        return read_progress(folder)

    monkeypatch.setattr(manager, "_read_progress", replaced_while_reading)
    info = manager.get("anna")
    assert info.status == "queued" and len(calls) >= 2
    assert json.loads((manager.root / "anna" / "train_config.json").read_text())["max_train_steps"] == 9
