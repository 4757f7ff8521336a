"""The REST API under /dreamcore/v1/ (FastAPI TestClient), over a manager with a stand-in child."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi", reason="the REST API needs fastapi (the dev extra installs it)")
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from dreamcore.jobs.api import create_router  # noqa: E402

from jobs_helpers import wait_for  # noqa: E402

JOBS = "/dreamcore/v1/jobs"


@pytest.fixture
def client_and_manager(make_manager):
    manager = make_manager()
    app = FastAPI()
    app.include_router(create_router(manager))
    with TestClient(app) as client:
        yield client, manager


def settings(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k != "output_dir"}


def snapshot(root: Path) -> dict[str, str]:
    """Every file under the jobs root with a hash of its content: 'nothing changed' means this is equal."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def wait_final(client: TestClient, name: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{JOBS}/{name}").json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"{name} did not end: {job}")


def test_two_jobs_queued_through_the_api_finish_in_order_with_outputs(client_and_manager, fake_config):
    client, manager = client_and_manager
    for name in ("first", "second"):
        response = client.post(JOBS, json={"name": name, "config": settings(fake_config)})
        assert response.status_code == 201, response.text
        assert response.json()["name"] == name
    listed = client.get(JOBS).json()["jobs"]
    assert [job["name"] for job in listed] == ["first", "second"]
    first, second = wait_final(client, "first"), wait_final(client, "second")
    assert first["status"] == second["status"] == "completed"
    assert second["started_at"] >= first["finished_at"] - 0.5
    for job in (first, second):
        assert Path(job["outputs"]["single_file"]).is_file()
        assert Path(job["outputs"]["single_file"]).is_relative_to(manager.root / job["name"])
        assert job["step"] == job["total_steps"] == 5 and job["progress_fraction"] == 1.0
        assert [step for step, _ in job["losses"]] == [1, 2, 3, 4, 5]


def test_cancel_and_resume_through_the_api(client_and_manager, fake_config):
    client, manager = client_and_manager
    client.post(JOBS, json={"name": "anna", "config": settings(fake_config.replace(max_train_steps=300))})
    wait_for(manager, "anna", lambda i: i.step >= 1, what="step 1")
    assert client.post(f"{JOBS}/anna/cancel").json()["stop_requested"] is True
    assert wait_final(client, "anna")["status"] == "cancelled"
    assert client.post(f"{JOBS}/anna/cancel").status_code == 409
    resumed = client.post(f"{JOBS}/anna/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] in ("queued", "running")
    client.post(f"{JOBS}/anna/cancel")
    wait_final(client, "anna")
    rerun = client.post(f"{JOBS}/anna/rerun", json={"name": "anna-again"})
    assert rerun.status_code == 201 and rerun.json()["name"] == "anna-again"
    client.post(f"{JOBS}/anna-again/cancel")
    wait_final(client, "anna-again")
    assert client.delete(f"{JOBS}/anna").json() == {"removed": "anna"}
    assert client.get(f"{JOBS}/anna").status_code == 404


@pytest.mark.parametrize("body, status, words", [
    ({"name": "x", "config": {"resolutoin": 64}}, 422, "unknown setting 'resolutoin' (did you mean 'resolution'?)"),
    ({"name": "x", "config": {"max_train_steps": "many"}}, 422, "max_train_steps: expected a whole number"),
    ({"name": "x", "config": {"with_prior_preservation": "yes"}}, 422, "expected true or false"),
    ({"name": "x", "config": {"resolution": 30}}, 422, "not a multiple of 8"),
    ({"name": "x", "config": ["not", "an", "object"]}, 422, "expected a JSON object"),
    ({"name": "x", "config": {}, "priority": 1}, 422, "unknown key 'priority'"),
    ({"config": {}}, 422, "missing key 'name'"),
    ({"name": "../outside", "config": {}}, 400, "not allowed"),
    ({"name": "..", "config": {}}, 400, "not allowed"),
    ({"name": "a/../../b", "config": {}}, 400, "not allowed"),
    ({"name": "/etc/passwd", "config": {}}, 400, "not allowed"),
    ({"name": "C:\\evil", "config": {}}, 400, "not allowed"),
    ({"name": 7, "config": {}}, 400, "expected text"),
])
def test_bad_input_gets_a_clear_4xx_and_changes_nothing(client_and_manager, fake_config, body, status, words):
    client, manager = client_and_manager
    client.post(JOBS, json={"name": "existing", "config": settings(fake_config)})
    wait_final(client, "existing")
    if isinstance(body.get("config"), dict) and body["config"] != {} and "resolutoin" not in body["config"]:
        body = {**body, "config": {**settings(fake_config), **body["config"]}}
    before = snapshot(manager.root)
    response = client.post(JOBS, json=body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert words in detail["message"] + " ".join(detail["problems"])
    assert snapshot(manager.root) == before
    assert [job["name"] for job in client.get(JOBS).json()["jobs"]] == ["existing"]


def test_malformed_bodies_get_400(client_and_manager):
    client, manager = client_and_manager
    for content in (b"{not json", b"[1, 2]", b""):
        response = client.post(JOBS, content=content, headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["detail"]["message"]
    assert client.get(JOBS).json() == {"jobs": []}


def test_a_second_concurrent_start_of_the_same_job_is_refused(client_and_manager, fake_config):
    client, manager = client_and_manager
    body = {"name": "anna", "config": settings(fake_config.replace(max_train_steps=300))}
    assert client.post(JOBS, json=body).status_code == 201
    wait_for(manager, "anna", lambda i: i.status == "running", what="running")
    before = snapshot(manager.root / "anna" / "output"), (manager.root / "anna" / "job.json").read_bytes()
    second = client.post(JOBS, json=body)
    assert second.status_code == 409 and "already exists" in second.json()["detail"]["message"]
    resumed = client.post(f"{JOBS}/anna/resume")
    assert resumed.status_code == 409 and "cannot be started twice" in resumed.json()["detail"]["message"]
    removed = client.delete(f"{JOBS}/anna")
    assert removed.status_code == 409 and "cancel it first" in removed.json()["detail"]["message"]
    assert (manager.root / "anna" / "job.json").read_bytes() == before[1]
    assert client.get(f"{JOBS}/anna").json()["attempt"] == 1
    client.post(f"{JOBS}/anna/cancel")
    wait_final(client, "anna")


def test_unknown_jobs_get_404(client_and_manager):
    client, _ = client_and_manager
    for method, path in (("get", "nobody"), ("post", "nobody/cancel"), ("post", "nobody/resume"),
                         ("delete", "nobody")):
        response = getattr(client, method)(f"{JOBS}/{path}")
        assert response.status_code == 404 and "no job named 'nobody'" in response.json()["detail"]["message"]


def test_the_host_can_guard_every_route_with_its_own_login(make_manager):
    from fastapi import Depends, Header, HTTPException

    def host_login(authorization: str = Header(default="")) -> None:
        if authorization != "Bearer secret":
            raise HTTPException(status_code=401, detail="login required")

    app = FastAPI()
    app.include_router(create_router(make_manager(run_queue=False), dependencies=[Depends(host_login)]))
    client = TestClient(app)
    assert client.get(JOBS).status_code == 401
    assert client.post(JOBS, json={"name": "x", "config": {}}).status_code == 401
    assert client.get(JOBS, headers={"Authorization": "Bearer secret"}).json() == {"jobs": []}
