"""The job REST API inside a WebUI: the WebUI's own API login and addresses, its CORS origins, and the
folders jobs may use (dreamcore's output folder, the WebUI's model folders, our setting)."""

from __future__ import annotations

import argparse
import base64
import importlib
from pathlib import Path
from typing import Iterator

import pytest

from form_loader import glue  # noqa: F401
from host_loader import remove_standin_host, use_standin_host

pytest.importorskip("fastapi", reason="the REST API needs fastapi (the dev extra installs it)")
callbacks = importlib.import_module("dreamcore_webui.dreamcore_callbacks")

JOBS = "/dreamcore/v1/jobs"


@pytest.fixture(params=["a1111", "forge", "sdnext"])
def webui(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("DREAMCORE_STANDIN_DATA_DIR", str(tmp_path / "webui"))
    monkeypatch.setenv("DREAMCORE_STANDIN_FLAVOR", request.param)
    use_standin_host(tmp_path / "webui", request.param)
    yield tmp_path / "webui"
    for extension in _MOUNTED:
        extension.controller.manager().shutdown()
    _MOUNTED.clear()
    remove_standin_host()


_MOUNTED: list = []


def mounted(webui: Path, monkeypatch: pytest.MonkeyPatch, **cmd_opts) -> tuple[object, object]:
    """The WebUI's FastAPI app after our app-started callback, with these command-line options."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from modules import shared

    monkeypatch.setattr(shared, "cmd_opts", argparse.Namespace(**{"ckpt_dir": None, **cmd_opts}))
    extension = callbacks.WebUIExtension(webui / "extensions" / "dreamcore")
    app = FastAPI()
    extension.on_app_started(None, app)
    _MOUNTED.append(extension)
    return TestClient(app, base_url="http://127.0.0.1:7860"), extension


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_without_a_webui_login_only_this_computer_and_same_origin_pages_get_in(webui, monkeypatch):
    client, _ = mounted(webui, monkeypatch)
    assert client.get(JOBS).status_code == 200
    assert client.get(JOBS, headers={"host": "evil.example:7860"}).status_code == 421
    assert client.get(JOBS, headers={"host": "192.168.1.20:7860"}).status_code == 421  # not listening there
    assert client.post(JOBS, content=b"{}", headers={"content-type": "text/plain",
                                                     "origin": "http://evil.example"}).status_code == 403


def test_the_webuis_api_login_guards_the_routes(webui, monkeypatch):
    client, _ = mounted(webui, monkeypatch, api_auth="anna:secret,bob:other", listen=True)
    answer = client.get(JOBS)
    assert answer.status_code == 401 and "--api-auth" in answer.json()["detail"]["message"]
    assert client.get(JOBS, headers=basic("anna", "wrong")).status_code == 401
    assert client.get(JOBS, headers=basic("anna", "secret")).status_code == 200
    # --listen: the WebUI answers on the network, under any address of this computer, never under a name
    # a web page chose.
    assert client.get(JOBS, headers={**basic("bob", "other"), "host": "192.168.1.20:7860"}).status_code == 200
    assert client.get(JOBS, headers={**basic("bob", "other"), "host": "evil.example"}).status_code == 421


def test_sdnext_auth_and_auth_file_are_its_api_login(webui, monkeypatch, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("carol:from-file\n")
    client, _ = mounted(webui, monkeypatch, auth="anna:secret", auth_file=str(users))
    assert client.get(JOBS).status_code == 401
    assert client.get(JOBS, headers=basic("anna", "secret")).status_code == 200
    assert client.get(JOBS, headers=basic("carol", "from-file")).status_code == 200


def test_origins_the_webui_allows_for_cors_are_allowed(webui, monkeypatch):
    client, _ = mounted(webui, monkeypatch, cors_allow_origins="http://studio.example:3000",
                        cors_allow_origins_regex=r"https://.*\.trusted\.example")
    for origin, status in (("http://studio.example:3000", 200), ("https://app.trusted.example", 200),
                           ("http://evil.example", 403)):
        assert client.get(JOBS, headers={"origin": origin}).status_code == status, origin


def test_jobs_may_use_the_output_the_model_folders_and_the_listed_ones(webui, monkeypatch, tmp_path):
    from modules import paths, shared

    extra = tmp_path / "my photos"
    extra.mkdir()
    shared.opts.data[callbacks.OPTION_API_FOLDERS] = f"{extra}; "
    _, extension = mounted(webui, monkeypatch)
    folders = extension.api_folders()
    for inside in (extension.output_root() / "uploads" / "anna", Path(paths.models_path) / "Stable-diffusion" / "x",
                   extension.host.lora_dir(), extra / "anna"):
        assert folders.contains(str(inside)), inside
    assert not folders.contains(str(tmp_path / "elsewhere"))
    assert "Settings > DreamBooth (dreamcore)" in folders._refusal("instance_data_dir", "/x")
