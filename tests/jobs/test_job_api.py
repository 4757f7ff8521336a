"""The REST API under /dreamcore/v1/ (FastAPI TestClient), over a manager with a stand-in child."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi", reason="the REST API needs fastapi (the dev extra installs it)")
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from dreamcore.config import TrainConfig  # noqa: E402
from dreamcore.jobs.api import create_router  # noqa: E402

from jobs_helpers import LOCAL, api_app, wait_for  # noqa: E402

JOBS = "/dreamcore/v1/jobs"


@pytest.fixture
def client_and_manager(make_manager, tmp_path):
    manager = make_manager()
    with TestClient(api_app(manager, tmp_path), base_url=LOCAL) as client:
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


def test_a_422_lists_unknown_keys_and_settings_that_cannot_train_together(client_and_manager, fake_config,
                                                                          tmp_path):
    client, manager = client_and_manager
    missing_photos = tmp_path / "no-such-photos"
    body = {"name": "anna", "config": {**settings(fake_config), "instance_data_dir": str(missing_photos),
                                       "resolution": 510, "learning_rat": 1e-6}}
    response = client.post(JOBS, json=body)
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]["problems"]
    assert any("unknown setting 'learning_rat'" in p and "did you mean 'learning_rate'" in p for p in problems)
    assert any(f"photo folder {missing_photos} does not exist" in p for p in problems), problems
    assert any("resolution: 510 is not a multiple of 8" in p and "use 504" in p for p in problems), problems
    assert len(problems) == 3, problems
    # An unknown key beside "name" and "config" is one more problem of the same answer.
    with_extra_key = client.post(JOBS, json={**body, "priority": 1})
    assert with_extra_key.status_code == 422
    assert with_extra_key.json()["detail"]["problems"] == ["unknown key 'priority'", *problems]
    assert client.get(JOBS).json() == {"jobs": []}


def test_a_mistyped_value_is_reported_once_beside_the_other_settings_problems(client_and_manager, fake_config):
    client, _ = client_and_manager
    body = {"name": "anna", "config": {**settings(fake_config), "instance_data_dir": 5, "resolution": 510,
                                       "max_train_steps": "many"}}
    response = client.post(JOBS, json=body)
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]["problems"]
    assert "config: instance_data_dir: expected text, got 5" in problems
    assert any("max_train_steps: expected a whole number" in p for p in problems)
    assert any("resolution: 510 is not a multiple of 8" in p for p in problems)
    # The refused photo folder is not judged again as if it had been left empty.
    assert not any("instance_data_dir is empty" in p for p in problems), problems
    assert len(problems) == 3, problems


def test_rest_jobs_name_their_files_after_the_job(make_manager, fake_config, tmp_path):
    from dreamcore.training.setup import plan_run

    manager = make_manager(run_queue=False)
    client = TestClient(api_app(manager, tmp_path), base_url=LOCAL)

    def file_name_of(name: str) -> str:
        """The name training gives the job's files (<name>.safetensors, checkpoints/<name>-step-N...)."""
        config = TrainConfig.load(manager.root / name / "train_config.json")
        return plan_run(config, warn=lambda message: None).model_name

    body = {**settings(fake_config), "resolution": 64}
    assert client.post(JOBS, json={"name": "anna", "config": body}).status_code == 201
    assert file_name_of("anna") == "anna"
    assert client.post(f"{JOBS}/anna/rerun").json()["name"] == "anna-2"
    assert file_name_of("anna-2") == "anna-2"  # a re-run's files follow its own name
    chosen = {**body, "model_name": "anna-final"}
    assert client.post(JOBS, json={"name": "anna-3", "config": chosen}).status_code == 201
    assert file_name_of("anna-3") == "anna-final"  # a model_name the person set is kept
    assert client.post(f"{JOBS}/anna-3/rerun", json={"name": "anna-4"}).status_code == 201
    assert file_name_of("anna-4") == "anna-final"


def test_inside_a_webui_the_wrapped_error_keeps_the_same_detail(make_manager):
    """AUTOMATIC1111 and Forge (with --api) answer every exception as {"error", "detail", "body", "errors"};
    docs/rest-api.md tells clients to read "detail", which holds the same object in both forms."""
    from fastapi import HTTPException, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import JSONResponse

    standalone, webui = FastAPI(), FastAPI()
    for app in (standalone, webui):
        app.include_router(create_router(make_manager(run_queue=False)))

    @webui.exception_handler(HTTPException)
    async def wrap_like_the_webui(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse(status_code=error.status_code, content=jsonable_encoder(
            {"error": type(error).__name__, "detail": error.detail, "body": "", "errors": str(error)}))

    answers = [TestClient(app, base_url=LOCAL).post(JOBS, json={"name": "x", "config": {"resolution": 510}})
               for app in (standalone, webui)]
    assert [answer.status_code for answer in answers] == [422, 422]
    plain, wrapped = (answer.json() for answer in answers)
    assert set(plain) == {"detail"} and wrapped["error"] == "HTTPException"
    assert wrapped["detail"] == plain["detail"]
    assert any("resolution: 510" in problem for problem in wrapped["detail"]["problems"])


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
    client = TestClient(app, base_url=LOCAL)
    assert client.get(JOBS).status_code == 401
    assert client.post(JOBS, json={"name": "x", "config": {}}).status_code == 401
    assert client.get(JOBS, headers={"Authorization": "Bearer secret"}).json() == {"jobs": []}
