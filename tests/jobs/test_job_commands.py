"""``python -m dreamcore jobs ...`` and ``python -m dreamcore ui`` (argument handling and error messages)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import dreamcore
from dreamcore.cli import main
from dreamcore.jobs import ui_command
from dreamcore.jobs.command import jobs_root

from jobs_helpers import make_photos


def config_file(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    path = tmp_path / "anna.json"
    path.write_text(json.dumps({"pretrained_model_name_or_path": str(model),
                                "instance_data_dir": str(make_photos(tmp_path / "photos")),
                                "instance_prompt": "photo of sks person", "max_train_steps": 5}))
    return path


def test_submit_list_show_cancel_remove(tmp_path, capsys):
    output = tmp_path / "out"
    common = ["jobs", "--output", str(output)]
    assert main([*common, "submit", "anna", "--config", str(config_file(tmp_path)), "--seed", "7"]) == 0
    assert "queued anna" in capsys.readouterr().out
    saved = json.loads((jobs_root(output) / "anna" / "train_config.json").read_text())
    assert saved["seed"] == 7 and saved["max_train_steps"] == 5  # flags override the file
    assert main([*common, "list"]) == 0
    listed = capsys.readouterr().out
    assert "anna" in listed and "queued" in listed and "#1 in queue" in listed
    assert main([*common, "show", "anna", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "queued"
    assert main([*common, "cancel", "anna"]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert main([*common, "remove", "anna"]) == 0
    assert not (jobs_root(output) / "anna").exists()


def test_refusals_exit_2_with_the_reason(tmp_path, capsys):
    common = ["jobs", "--output", str(tmp_path / "out")]
    assert main([*common, "submit", "../up", "--config", str(config_file(tmp_path))]) == 2
    assert "not allowed" in capsys.readouterr().err
    assert main([*common, "submit", "anna", "--config", str(config_file(tmp_path)), "--resolution", "30"]) == 2
    assert "resolution: 30 is not a multiple of 8" in capsys.readouterr().err
    assert main([*common, "cancel", "nobody"]) == 2
    assert "no job named 'nobody'" in capsys.readouterr().err
    assert main([*common, "run", "--gpus", "0,0"]) == 2
    assert "--gpus: give distinct CUDA device ids" in capsys.readouterr().err
    assert not any(p for p in jobs_root(tmp_path / "out").iterdir() if not p.name.startswith("."))


@pytest.fixture(autouse=True)
def glue_modules_restored():
    """The ui tests load stand-ins as the tab's modules; the real ones come back after each test."""
    names = (ui_command.GLUE_PACKAGE, f"{ui_command.GLUE_PACKAGE}.app")
    before = {name: sys.modules.get(name) for name in names}
    yield
    for name, module in before.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


def test_ui_says_when_the_tab_folder_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dreamcore, "__file__", str(tmp_path / "dreamcore" / "__init__.py"))
    monkeypatch.delitem(sys.modules, ui_command.GLUE_PACKAGE, raising=False)
    assert main(["ui", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "dreamcore tab" in err and str(tmp_path / "extension") in err


def test_ui_says_when_gradio_is_missing(tmp_path, monkeypatch, capsys):
    real_find_spec = ui_command.importlib.util.find_spec
    monkeypatch.setattr(ui_command.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gradio" else real_find_spec(name, *a))
    assert main(["ui"]) == 2
    assert "needs gradio" in capsys.readouterr().err


def test_ui_loads_the_tab_by_path_as_dreamcore_webui_and_launches_it(tmp_path, monkeypatch, capsys):
    """A stand-in extension folder beside a stand-in package: what the app is given, and the warning."""
    extension = tmp_path / "extension"
    extension.mkdir()
    (extension / "__init__.py").write_text("")
    (extension / "app.py").write_text(
        "CALLS = []\n"
        "def launch_standalone(output_root, host, port, access, allowed):\n"
        "    CALLS.append((output_root, host, port, access, allowed))\n")
    monkeypatch.setattr(dreamcore, "__file__", str(tmp_path / "dreamcore" / "__init__.py"))
    monkeypatch.delitem(sys.modules, ui_command.GLUE_PACKAGE, raising=False)
    monkeypatch.delitem(sys.modules, f"{ui_command.GLUE_PACKAGE}.app", raising=False)
    monkeypatch.setattr(ui_command.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "gradio" else None)
    assert main(["ui", "--output", str(tmp_path / "out"), "--port", "7999"]) == 0
    app = sys.modules[f"{ui_command.GLUE_PACKAGE}.app"]
    output, host, port, access, allowed = app.CALLS[-1]
    assert (output, host, port) == ((tmp_path / "out").resolve(), "127.0.0.1", 7999)
    assert access.token is None and allowed.folders == ((tmp_path / "out").resolve(),)
    printed = capsys.readouterr()
    assert "warning" not in printed.err and "token" not in printed.out
    assert main(["ui", "--host", "0.0.0.0", "--allow-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr()
    assert "other computers can reach port 7861" in printed.err
    _, host, port, access, allowed = app.CALLS[-1]
    assert (host, port) == ("0.0.0.0", 7861) and tmp_path.resolve() in allowed.folders
    assert access.token and f"Bearer <token>'): {access.token}" in printed.out  # made and printed at start
    assert main(["ui", "--host", "0.0.0.0", "--token", "chosen"]) == 0
    assert app.CALLS[-1][3].token == "chosen" and "chosen" not in capsys.readouterr().out
    assert main(["ui", "--allow-dir", str(tmp_path / "no-such-folder")]) == 2
    assert "--allow-dir" in capsys.readouterr().err


def test_jobs_run_works_the_queue_until_it_is_empty(tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["jobs", "--output", str(output), "run"]) == 0  # nothing queued: returns at once
    assert main(["jobs", "--output", str(output), "submit", "broken", "--config", str(config_file(tmp_path))]) == 0
    (jobs_root(output) / "broken" / "train_config.json").write_text("{damaged")  # fails fast in the real child
    capsys.readouterr()
    assert main(["jobs", "--output", str(output), "run"]) == 1
    printed = capsys.readouterr().out
    assert "broken" in printed and "failed" in printed and "not valid JSON" in printed


def test_jobs_serve_answers_on_loopback_and_stops_on_ctrl_c(tmp_path):
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    repo = Path(__file__).resolve().parents[2]
    server = subprocess.Popen([sys.executable, "-m", "dreamcore", "jobs", "--output", str(tmp_path / "out"), "serve",
                               "--port", str(port)], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/dreamcore/v1/jobs", timeout=5) as response:
                    assert json.loads(response.read()) == {"jobs": []}
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode()
                time.sleep(0.3)
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) in (0, 130), server.stdout.read().decode()


def test_jobs_serve_checks_the_token_and_the_host_it_was_given(tmp_path):
    import socket
    import subprocess
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    repo = Path(__file__).resolve().parents[2]
    photos = make_photos(tmp_path / "photos")
    server = subprocess.Popen([sys.executable, "-m", "dreamcore", "jobs", "--output", str(tmp_path / "out"), "serve",
                               "--port", str(port), "--token", "s3cret", "--allow-dir", str(photos)],
                              cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def status(**headers) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/dreamcore/v1/jobs", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                first = status()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode()
                time.sleep(0.3)
        assert first == 401  # a token given on loopback is asked for too
        assert status(Authorization="Bearer s3cret") == 200
        assert status(Authorization="Bearer s3cret", Host="evil.example") == 421
    finally:
        server.terminate()
        printed = server.communicate(timeout=30)[0].decode()
    assert f"jobs may use files in: {(tmp_path / 'out').resolve()}, {photos.resolve()}" in printed
    assert "s3cret" not in printed  # a token given is not printed
