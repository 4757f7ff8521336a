"""Who may call the job API: Host, Origin, login, content type and body size, on every route."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the REST API needs fastapi (the dev extra installs it)")
from fastapi.testclient import TestClient  # noqa: E402

from dreamcore.jobs.access import ApiAccess, needs_token, parse_basic_credentials  # noqa: E402

from jobs_helpers import LOCAL, api_app, live_server  # noqa: E402

JOBS = "/dreamcore/v1/jobs"
EVERY_ROUTE = [("get", JOBS), ("post", JOBS), ("get", f"{JOBS}/anna"), ("post", f"{JOBS}/anna/cancel"),
               ("post", f"{JOBS}/anna/resume"), ("post", f"{JOBS}/anna/rerun"), ("delete", f"{JOBS}/anna")]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}


@pytest.fixture
def api(make_manager, fake_config, tmp_path):
    """A client on 127.0.0.1, a manager that does not run the queue, and a queued job 'anna'."""
    manager = make_manager(run_queue=False)
    client = TestClient(api_app(manager, tmp_path), base_url=LOCAL)
    settings = {k: v for k, v in fake_config.to_dict().items() if k != "output_dir"}
    assert client.post(JOBS, json={"name": "anna", "config": settings}).status_code == 201
    return client, manager, settings


def send(client: TestClient, method: str, path: str, **options):
    return client.request(method.upper(), path, **options)


def test_a_cross_origin_text_plain_post_is_refused_with_nothing_changed(api):
    """What a web page can send without the browser asking first: text/plain, a form, with its Origin."""
    client, manager, settings = api
    before = snapshot(manager.root)
    body = json.dumps({"name": "evil", "config": {**settings, "class_data_dir": "/tmp/evil"}})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        for method, path in EVERY_ROUTE:
            answer = send(client, method, path, content=body,
                          headers={"content-type": content_type, "origin": "http://evil.example"})
            assert answer.status_code == 403, (method, path, answer.text)
            assert "evil.example" in answer.json()["detail"]["message"]
    # Without an Origin (a program, not a page) a non-JSON body is still refused.
    answer = client.post(JOBS, content=body, headers={"content-type": "text/plain"})
    assert answer.status_code == 415 and "application/json" in answer.json()["detail"]["message"]
    assert client.post(f"{JOBS}/anna/cancel", content=b"x=1",
                       headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 415
    assert snapshot(manager.root) == before
    assert [job["name"] for job in client.get(JOBS).json()["jobs"]] == ["anna"]
    assert client.get(f"{JOBS}/anna").json()["status"] == "queued"


def test_a_same_origin_page_and_programs_without_origin_may_use_it(api):
    client, _, settings = api
    own = {"origin": "http://127.0.0.1"}
    assert client.get(JOBS, headers=own).status_code == 200
    assert client.post(JOBS, json={"name": "bob", "config": settings}, headers=own).status_code == 201
    assert client.post(f"{JOBS}/bob/cancel").status_code == 200  # curl: no body, no content type
    other_port = {"origin": "http://127.0.0.1:8000"}  # another server on this computer is another origin
    assert client.post(f"{JOBS}/bob/resume", headers=other_port).status_code == 403
    assert client.get(JOBS, headers={"origin": "null"}).status_code == 403  # a sandboxed frame, a local file


@pytest.mark.parametrize("host", ["evil.example", "evil.example:7862", "127.0.0.1.evil.example", "", "[::1",
                                  "192.168.1.20"])
def test_a_foreign_host_is_refused_on_every_route(api, host):
    """DNS rebinding: a page whose own name now points at 127.0.0.1 sends that name as Host."""
    client, manager, settings = api
    before = snapshot(manager.root)
    for method, path in EVERY_ROUTE:
        options = {"json": {"name": "evil", "config": settings}} if path == JOBS and method == "post" else {}
        answer = send(client, method, path, headers={"host": host}, **options)
        assert answer.status_code == 421, (method, path, answer.text)
        assert "host name" in answer.json()["detail"]["message"]
        assert "anna" not in answer.text  # nothing of the jobs is read out
    assert snapshot(manager.root) == before


@pytest.mark.parametrize("host", ["localhost", "localhost:7862", "127.0.0.1:7862", "[::1]:7862", "LOCALHOST."])
def test_localhost_names_are_accepted(api, host):
    client, _, _ = api
    assert client.get(JOBS, headers={"host": host}).status_code == 200


def test_an_oversized_body_is_refused_with_nothing_changed(api):
    client, manager, settings = api
    before = snapshot(manager.root)
    big = json.dumps({"name": "big", "config": {**settings, "instance_prompt": "x" * (2 << 20)}})
    answer = client.post(JOBS, content=big, headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "larger than 1024 KiB" in answer.json()["detail"]["message"]
    assert snapshot(manager.root) == before


def test_a_huge_body_is_not_read_whole(make_manager, tmp_path):
    """Over a real socket: the answer comes before the body is sent, whether its length is announced or it
    comes in chunks; the server does not wait for (or keep) 300 MB."""
    manager = make_manager(run_queue=False)
    with live_server(api_app(manager, tmp_path)) as (host, port):
        for headers in ({"Content-Length": str(300 << 20)}, {"Transfer-Encoding": "chunked"}):
            connection = http.client.HTTPConnection(host, port, timeout=20)
            connection.putrequest("POST", JOBS)
            connection.putheader("Content-Type", "application/json")
            for key, value in headers.items():
                connection.putheader(key, value)
            connection.endheaders()
            chunk = b" " * (256 << 10)
            started = time.monotonic()
            try:
                for _ in range(8):  # 2 MiB of the body, then stop sending and wait for the answer
                    connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if "Transfer-Encoding" in headers
                                    else chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed before taking it all: what is wanted
            answer = connection.getresponse()
            assert answer.status == 413, answer.read()
            assert time.monotonic() - started < 15
            connection.close()
    assert list(manager.list()) == []


@pytest.mark.parametrize("content", [b"[" * 100_000, b"{\"a\":" * 100_000, b"[" * 200 + b"]" * 200,
                                     b'{"name": "x", "config": {"resolution": ' + b"[" * 50 + b"]" * 50 + b"}}",
                                     b'{"name": "x", "config": {"learning_rate": NaN}}',
                                     b'{"name": "x", "config": {"learning_rate": 1e999}}',
                                     b'{"name": "x", "config": {"max_train_steps": ' + b"9" * 5000 + b"}}",
                                     b"\xff\xfe\x00", b'"just a string"'])
def test_malformed_json_of_any_depth_is_a_400(api, content):
    client, manager, _ = api
    before = snapshot(manager.root)
    answer = client.post(JOBS, content=content, headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"]["message"].startswith("the request body")
    assert snapshot(manager.root) == before


def test_beyond_loopback_every_route_needs_the_token(make_manager, fake_config, tmp_path):
    manager = make_manager(run_queue=False)
    access = ApiAccess.for_listener("0.0.0.0", token="s3cret", extra_hosts=("trainer.lan",))
    client = TestClient(api_app(manager, tmp_path, access=access), base_url="http://192.168.1.20:7862")
    for method, path in EVERY_ROUTE:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Bearer s3cret-and-more"},
                        {"authorization": "Basic czNjcmV0OnMzY3JldA=="}, {"authorization": "Bearer ünïcode".encode("latin-1")}):
            answer = send(client, method, path, headers=headers)
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert "Authorization: Bearer" in answer.json()["detail"]["message"]
    good = {"authorization": "Bearer s3cret"}
    assert client.get(JOBS, headers=good).json() == {"jobs": []}
    assert client.get(JOBS, headers={**good, "host": "trainer.lan:7862"}).status_code == 200
    assert client.get(JOBS, headers={**good, "host": "evil.example"}).status_code == 421
    settings = {k: v for k, v in fake_config.to_dict().items() if k != "output_dir"}
    assert client.post(JOBS, json={"name": "anna", "config": settings}, headers=good).status_code == 201


def test_a_webui_login_is_asked_for_as_http_basic(make_manager, tmp_path):
    manager = make_manager(run_queue=False)
    access = ApiAccess(basic_credentials=parse_basic_credentials("anna:pa:ss,bob:x"), login_hint="--api-auth")
    client = TestClient(api_app(manager, tmp_path, access=access), base_url=LOCAL)

    def basic(user: str, password: str) -> dict[str, str]:
        return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    assert client.get(JOBS).status_code == 401
    assert client.get(JOBS).headers["www-authenticate"].startswith("Basic")
    assert client.get(JOBS, headers=basic("anna", "pa")).status_code == 401
    assert client.get(JOBS, headers={"authorization": "Basic not-base64!"}).status_code == 401
    assert client.get(JOBS, headers=basic("anna", "pa:ss")).status_code == 200  # a password may hold ':'
    assert client.get(JOBS, headers=basic("bob", "x")).status_code == 200


def test_which_addresses_need_a_token():
    assert [needs_token(a) for a in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2")] == [False] * 5
    assert [needs_token(a) for a in ("0.0.0.0", "::", "192.168.1.20", "trainer.lan")] == [True] * 4
    with pytest.raises(ValueError, match="needs a token"):
        ApiAccess.for_listener("0.0.0.0")
    only_there = ApiAccess.for_listener("192.168.1.20", token="t")
    assert only_there.refusal("GET", {"host": "192.168.1.20:7862", "authorization": "Bearer t"}) is None
    assert only_there.refusal("GET", {"host": "10.0.0.5", "authorization": "Bearer t"}).status == 421
