"""POST /dreamcore/v1/generate's handler: a job's model or checkpoint, every problem at once, training first."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from dreamcore import train
from dreamcore.generate import PipelineCache
from dreamcore.jobs.folder import JobFolder, JobRecord
from dreamcore.jobs.generate_api import GenerateService
from dreamcore.jobs.manager import JobManager

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from tiny_runs import tiny_config  # noqa: E402


def finished_job(root: Path, name: str, model: Path, photos: Path) -> Path:
    """A completed job as the queue leaves it (trained here, in this process: the child is not the point)."""
    folder = JobFolder(root / name)
    config = tiny_config(model, photos, folder.output, save_interval=2, model_name=name,
                         class_prompt="photo of a person")
    train(config)
    config.save(folder.config)
    now = time.time()
    folder.write_record(JobRecord(name=name, status="completed", created_at=now, queued_at=now, finished_at=now))
    return folder.path


@pytest.fixture(scope="module")
def jobs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dreamcore.commands.demo import make_demo_photos
    from dreamcore.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("jobs-root")
    model = save_tiny_model(root / "tiny", fmt="diffusers")
    make_demo_photos(root / "photos", count=3, size=64)
    finished_job(root / "jobs", "anna", model, root / "photos")
    return root / "jobs"


@pytest.fixture
def service(jobs_root: Path, tmp_path: Path) -> GenerateService:
    return GenerateService(JobManager(jobs_root, run_queue=False), out_dir=tmp_path / "generated", cache=PipelineCache())


def test_a_jobs_checkpoint_makes_pictures_with_their_parameters(service: GenerateService) -> None:
    status, body = service.handle({"job": "anna", "checkpoint": 2, "prompt": "photo of sks person", "seed": 12,
                                   "num_inference_steps": 2, "sampler": "DDIM", "batch_count": 2})
    assert status == 200, body
    assert [image["seed"] for image in body["images"]] == [12, 13]
    for image in body["images"]:
        text = Image.open(image["path"]).info["parameters"]
        assert text == image["parameters"]
        assert "Model: anna-step-000002" in text and "Sampler: DDIM" in text and f"Seed: {image['seed']}" in text
    assert body["model"].endswith("anna-step-000002.safetensors")


def test_every_problem_of_a_body_comes_back_at_once(service: GenerateService) -> None:
    status, body = service.handle({"job": "anna", "model": "/x", "checkpoint": "best", "steps": 3, "seed": "x",
                                   "width": 65})
    assert status == 422
    problems = " | ".join(body["detail"]["problems"])
    for expected in ("unknown key 'steps'", "model or job", "seed:", "width:", "prompt: missing"):
        assert expected in problems, expected


def test_unknown_job_and_checkpoint_are_404_naming_what_exists(service: GenerateService) -> None:
    status, body = service.handle({"job": "nobody", "prompt": "x"})
    assert status == 404 and "nobody" in body["detail"]["message"]
    status, body = service.handle({"job": "anna", "checkpoint": 999, "prompt": "x"})
    assert status == 404
    assert "999" in body["detail"]["message"] and "step 2" in body["detail"]["message"]


def test_a_model_outside_the_allowed_folders_is_refused_unread(jobs_root: Path, tmp_path: Path) -> None:
    from dreamcore.jobs.allowed import AllowedFolders

    service = GenerateService(JobManager(jobs_root, run_queue=False), out_dir=tmp_path, cache=PipelineCache(),
                              allowed=AllowedFolders([jobs_root]))
    status, body = service.handle({"model": "/etc/passwd", "prompt": "x"})
    assert status == 422 and "not inside a folder this server allows" in body["detail"]["problems"][0]


class GpuCache(PipelineCache):
    """A cache that says it sits on a GPU (this machine may have none), counting its releases."""

    def __init__(self) -> None:
        super().__init__(device="cuda")
        self.releases = 0
        self.holding = True

    def holds_gpu(self) -> bool:
        return self.holding

    def release(self) -> list[str]:
        self.releases += 1
        self.holding = False
        return ["model"]


def test_training_comes_first_on_the_gpu(jobs_root: Path, tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "jobs", run_queue=False)
    cache = GpuCache()
    service = GenerateService(manager, out_dir=tmp_path / "out", cache=cache, watch_seconds=0.05)
    service._watch_for_jobs()  # a model is loaded: the watcher follows the queue
    folder = JobFolder(manager.root / "queued-job")
    folder.path.mkdir(parents=True)
    folder.write_record(JobRecord(name="queued-job", status="queued", created_at=time.time(), queued_at=time.time()))
    deadline = time.monotonic() + 10
    while cache.releases == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.releases == 1, "the loaded model was not released when a job was queued"
    status, body = service.handle({"model": str(jobs_root / "anna" / "output" / "anna.safetensors"), "prompt": "x"})
    assert status == 409 and "queued-job" in body["detail"]["message"]


def test_the_job_api_serves_generate_with_its_checks(jobs_root: Path) -> None:
    """POST /dreamcore/v1/generate is one of the job routes: the same Host/content-type checks, 4xx with every
    problem, pictures of a job's model."""
    from fastapi.testclient import TestClient

    from jobs_helpers import LOCAL, api_app

    client = TestClient(api_app(JobManager(jobs_root, run_queue=False)), base_url=LOCAL)
    answer = client.post("/dreamcore/v1/generate", json={"job": "anna", "prompt": "photo of sks person",
                                                         "num_inference_steps": 1, "seed": 3})
    assert answer.status_code == 200 and answer.json()["images"][0]["seed"] == 3
    assert Path(answer.json()["images"][0]["path"]).is_file()
    bad = client.post("/dreamcore/v1/generate", json={"job": "anna", "num_inference_steps": 0, "seed": "x"})
    assert bad.status_code == 422 and len(bad.json()["detail"]["problems"]) >= 2
    plain_text = client.post("/dreamcore/v1/generate", content=b'{"job": "anna"}',
                             headers={"content-type": "text/plain"})
    assert plain_text.status_code == 415
    assert client.post("/dreamcore/v1/generate", json={"job": "nobody", "prompt": "x"}).status_code == 404
