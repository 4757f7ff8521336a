"""The standalone app: the same tab over a folder, and the jobs REST API mounted beside it."""

from __future__ import annotations

import importlib
from pathlib import Path

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
