"""Exercise the REST API under whatever fastapi/pydantic this Python has; prints 'api ok' or fails.

Run by test_job_api_hosts.py inside the WebUI hosts' pinned venvs (AUTOMATIC1111: fastapi 0.94 with
pydantic 1; Forge: fastapi 0.135 with pydantic 2.8). No training runs: the manager does not run the queue.
"""

import sys
import tempfile
from pathlib import Path

import fastapi
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dreamcore.jobs import JobManager
from dreamcore.jobs.allowed import AllowedFolders
from dreamcore.jobs.api import create_router

root = Path(tempfile.mkdtemp())
(root / "model").mkdir()
(root / "photos").mkdir()
(root / "photos" / "a.png").write_bytes(b"")  # validation lists photos by name; nothing decodes them here
manager = JobManager(root / "jobs", run_queue=False)
app = FastAPI()
app.include_router(create_router(manager, allowed=AllowedFolders([root])))
client = TestClient(app, base_url="http://127.0.0.1")
jobs = "/dreamcore/v1/jobs"
config = {"pretrained_model_name_or_path": str(root / "model"), "instance_data_dir": str(root / "photos"),
          "instance_prompt": "photo of sks person", "resolution": 64}


def expect(response, status, words=""):
    text = response.text
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {text}"
    assert words in text, f"{words!r} not in {text}"
    return response.json()


expect(client.get(jobs), 200, '"jobs":[]')
expect(client.post(jobs, json={"name": "../x", "config": config}), 400, "not allowed")
expect(client.post(jobs, json={"name": "x", "config": {**config, "resolutoin": 64}}), 422, "did you mean")
expect(client.post(jobs, json={"name": "x", "config": {**config, "resolution": "big"}}), 422, "whole number")
every_problem = expect(client.post(jobs, json={"name": "x", "config": {
    **config, "instance_data_dir": str(root / "no-photos"), "resolution": 510, "learning_rat": 1e-6}}), 422)
assert len(every_problem["detail"]["problems"]) == 3, every_problem  # unknown key, photo folder, resolution
expect(client.post(jobs, content=b"{oops", headers={"content-type": "application/json"}), 400, "not valid JSON")
assert expect(client.post(jobs, json={"name": "anna", "config": config}), 201)["status"] == "queued"
expect(client.post(jobs, json={"name": "anna", "config": config}), 409, "already exists")
assert expect(client.get(f"{jobs}/anna"), 200)["queue_position"] == 1
assert expect(client.post(f"{jobs}/anna/cancel"), 200)["status"] == "cancelled"
expect(client.post(f"{jobs}/anna/cancel"), 409, "already ended")
expect(client.delete(f"{jobs}/anna"), 200, "removed")
expect(client.get(f"{jobs}/anna"), 404, "no job named")
# The request checks work with this fastapi too: nothing above was changed by these.
expect(client.get(jobs, headers={"host": "evil.example"}), 421, "host name")
expect(client.post(jobs, content=b'{"name": "x", "config": {}}',
                   headers={"content-type": "text/plain", "origin": "http://evil.example"}), 403, "evil.example")
expect(client.post(jobs, content=b'{"name": "x", "config": {}}', headers={"content-type": "text/plain"}), 415,
       "application/json")
expect(client.post(jobs, content=b"[" * 100_000, headers={"content-type": "application/json"}), 400, "nests deeper")
expect(client.post(jobs, content=b" " * (2 << 20), headers={"content-type": "application/json"}), 413, "larger than")
expect(client.post(jobs, json={"name": "x", "config": {**config, "instance_data_dir": "/etc"}}), 422,
       "not inside a folder this server allows")
expect(client.get(jobs), 200, '"jobs":[]')
print(f"api ok with fastapi {fastapi.__version__} on Python {sys.version.split()[0]}")
