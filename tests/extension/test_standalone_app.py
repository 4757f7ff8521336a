"""The standalone app: the same tab over a folder, and the jobs REST API mounted beside it."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from form_loader import glue  # noqa: F401


def test_build_app_serves_the_tab_and_the_rest_api(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    app_module = importlib.import_module("dreamcore_webui.app")
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "models" / "base" / "tiny.safetensors").write_bytes(b"x")
    app, _blocks, handlers = app_module.build_app(tmp_path)
    assert handlers.controller.host.checkpoint_choices() == ["base/tiny.safetensors"]
    client = TestClient(app, base_url="http://127.0.0.1:7861")
    jobs = client.get("/dreamcore/v1/jobs")
    assert jobs.status_code == 200, jobs.text
    # The REST API mounted beside the tab checks every request: a foreign Host or a cross-site page is refused.
    assert client.get("/dreamcore/v1/jobs", headers={"host": "evil.example"}).status_code == 421
    assert client.post("/dreamcore/v1/jobs", content=b"{}", headers={
        "content-type": "text/plain", "origin": "http://evil.example"}).status_code == 403
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_published_loras_are_neither_base_models_nor_models_to_draw_with(tmp_path: Path) -> None:
    """A finished LoRA job is copied to models/Lora, inside the models folder: it was listed as a base model to
    train from and as a model in the Generate panel, where it can only fail ('this is a LoRA, not a full
    model'); its job's own entry draws with it."""
    app_module = importlib.import_module("dreamcore_webui.app")
    (tmp_path / "models" / "Lora" / "dreamcore").mkdir(parents=True)
    (tmp_path / "models" / "Lora" / "dreamcore" / "anna.safetensors").write_bytes(b"x")
    (tmp_path / "models" / "tiny.safetensors").write_bytes(b"x")
    _app, _blocks, handlers = app_module.build_app(tmp_path, share_api=False)
    assert handlers.controller.host.checkpoint_choices() == ["tiny.safetensors"]
    assert handlers.generate_panel.choices() == ["tiny.safetensors"]


def test_with_a_token_the_tab_asks_for_it_as_its_login(tmp_path: Path) -> None:
    """Listening beyond this computer the app has a token: the REST API asks for it, and so does the tab,
    which can start jobs too."""
    from fastapi.testclient import TestClient

    from dreamcore.jobs.access import ApiAccess

    app_module = importlib.import_module("dreamcore_webui.app")
    access = ApiAccess.for_listener("0.0.0.0", token="s3cret")
    app, _blocks, _handlers = app_module.build_app(tmp_path, access=access)
    client = TestClient(app, base_url="http://192.168.1.20:7861")
    assert client.get("/dreamcore/v1/jobs").status_code == 401
    assert client.get("/dreamcore/v1/jobs", headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/config").status_code == 401  # the tab's definition, before logging in
    assert client.post("/login", data={"username": app_module.TAB_USER, "password": "wrong"}).status_code == 400
    assert client.post("/login", data={"username": app_module.TAB_USER, "password": "s3cret"}).status_code == 200
    assert client.get("/config").status_code == 200


def _jobs_manager(jobs: dict[str, Any]) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(list=lambda: list(jobs.values()), get=lambda name: jobs[name])


def _page_load_follower(blocks: Any) -> Any:
    """The function the page runs after its load event: it follows the job shown."""
    found = [function.fn for function in blocks.fns.values()
             if getattr(function.fn, "__name__", "") == "follow_on_load"]
    assert len(found) == 1
    return found[0]


def test_a_reload_shows_the_running_job_else_the_newest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It used to show "Choose a job to watch." and an empty panel while a job trained."""
    from dreamcore.jobs.info import JobInfo

    app_module = importlib.import_module("dreamcore_webui.app")
    _app, blocks, handlers = app_module.build_app(tmp_path, share_api=False)
    jobs = {"older": JobInfo("older", "failed", error="out of memory", advice="lower the batch size",
                             created_at=1.0),
            "anna": JobInfo("anna", "running", step=40, total_steps=400, losses=[(40, 0.1)], stage="train",
                            created_at=2.0),
            "newest": JobInfo("newest", "queued", created_at=3.0)}
    monkeypatch.setattr(handlers.controller, "manager", lambda: _jobs_manager(jobs))
    follow = _page_load_follower(blocks)
    message, progress, plot, _samples, _log, job = next(follow())
    assert "anna: running" in progress and "step 40/400" in progress and 'data-points="1"' in plot
    assert job["value"] == "anna"
    jobs["anna"] = JobInfo("anna", "cancelled", created_at=2.0)
    jobs["newest"] = JobInfo("newest", "failed", error="no photos", advice="add photos", created_at=3.0)
    shown = list(follow())
    assert len(shown) == 1 and shown[0][0].startswith("**newest failed:** no photos")
    assert shown[0][-1]["value"] == "newest"
    jobs.clear()
    assert list(handlers.follow_shown_job()) == [("", "", "", [], "", "")]  # no job: no "Choose a job"


def test_a_finished_jobs_message_names_only_buttons_the_page_shows(tmp_path: Path) -> None:
    from types import SimpleNamespace

    tab = importlib.import_module("dreamcore_webui.tab")
    info = SimpleNamespace(name="anna", status="completed", outputs={})
    for flavor, wanted, absent in (("standalone", "*Generate* tab", "txt2img"),
                                   ("a1111", "*Use in txt2img*", "Generate")):
        controller = SimpleNamespace(host=SimpleNamespace(flavor=flavor), published=lambda name: None)
        message = tab._final_message(info, controller)
        assert wanted in message and absent not in message, flavor
    cancelled = tab._final_message(SimpleNamespace(name="anna", status="cancelled"), controller)
    assert "*Resume*" in cancelled and "REST API" not in cancelled
