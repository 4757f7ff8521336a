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
