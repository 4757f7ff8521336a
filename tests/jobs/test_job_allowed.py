"""Paths in jobs submitted through the API stay inside the allowed folders, and refusals tell nothing of the disk."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("fastapi", reason="the REST API needs fastapi (the dev extra installs it)")
from fastapi.testclient import TestClient  # noqa: E402

from dreamcore.config import ConfigError  # noqa: E402
from dreamcore.jobs.allowed import AllowedFolders  # noqa: E402

from jobs_helpers import LOCAL, api_app, make_photos  # noqa: E402

JOBS = "/dreamcore/v1/jobs"


@pytest.fixture
def setup(make_manager, fake_config, tmp_path):
    """Allowed: <tmp>/allowed (the model and photos are there); <tmp>/outside holds real photos too."""
    allowed = tmp_path / "allowed"
    model = allowed / "model"
    model.mkdir(parents=True)
    photos = make_photos(allowed / "photos")
    outside = make_photos(tmp_path / "outside" / "photos")
    manager = make_manager(run_queue=False)
    client = TestClient(api_app(manager, allowed), base_url=LOCAL)
    settings = {k: v for k, v in fake_config.to_dict().items() if k != "output_dir"}
    settings.update(pretrained_model_name_or_path=str(model), instance_data_dir=str(photos))
    return client, manager, settings, allowed, outside


def refused(client: TestClient, settings: dict, **changes) -> list[str]:
    answer = client.post(JOBS, json={"name": "probe", "config": {**settings, **changes}})
    assert answer.status_code == 422, answer.text
    return answer.json()["detail"]["problems"]


def test_inside_the_allowed_folders_a_job_is_queued(setup):
    client, _, settings, _, _ = setup
    assert client.post(JOBS, json={"name": "anna", "config": settings}).status_code == 201


@pytest.mark.parametrize("field", ["instance_data_dir", "class_data_dir", "pretrained_model_name_or_path",
                                   "pretrained_vae_name_or_path", "tokenizer_name", "concepts_list",
                                   "resume_from_checkpoint"])
def test_a_path_outside_is_refused_with_the_same_words_whether_it_exists_or_not(setup, field, tmp_path):
    client, manager, settings, allowed, outside = setup
    changes = {"concepts_list": {"instance_data_dir": "", "instance_prompt": ""}}.get(field, {})
    missing = tmp_path / "outside" / "no-such-thing"
    answers = [refused(client, settings, **changes, **{field: str(path)}) for path in (outside, missing)]
    assert answers[0] == [problem.replace(str(missing), str(outside)) for problem in answers[1]]
    assert len(answers[0]) == 1 and answers[0][0].startswith(f"{field}: ")
    assert "not inside a folder this server allows" in answers[0][0] and str(allowed) in answers[0][0]
    words = answers[0][0].replace(str(outside), "").replace(str(allowed), "")
    assert not any(word in words for word in ("exist", "not a folder", "photo", "cannot read"))
    assert list(manager.list()) == []


def test_links_relative_paths_and_dot_dot_cannot_leave(setup, tmp_path):
    client, _, settings, allowed, outside = setup
    (allowed / "link").symlink_to(outside)
    for value in (str(allowed / "link"), str(allowed / ".." / "outside" / "photos"), "photos", "../outside/photos",
                  "~/photos"):
        problems = refused(client, settings, instance_data_dir=value)
        assert problems == [problems[0]] and "not inside a folder this server allows" in problems[0], value


def test_a_concepts_file_inside_may_not_name_folders_outside(setup):
    client, _, settings, allowed, outside = setup
    concepts = allowed / "concepts.json"
    concepts.write_text(json.dumps([{"instance_prompt": "photo of sks person", "instance_data_dir": str(outside),
                                     "class_prompt": "photo of a person", "class_data_dir": "/etc"}]))
    problems = refused(client, settings, concepts_list=str(concepts), instance_data_dir="", instance_prompt="")
    assert [p.split(":")[0] for p in problems] == ["concepts_list entry 1 instance_data_dir",
                                                   "concepts_list entry 1 class_data_dir"]


def test_a_hub_id_is_never_looked_up_on_the_disk(setup, tmp_path, monkeypatch):
    """The CLI reads a relative model path from the working folder; through the API "owner/name" is a hub id,
    even where such a folder exists there (else the answer would tell whether it does)."""
    client, manager, settings, _, _ = setup
    (tmp_path / "cwd" / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    for name, model in (("present", "owner/name"), ("absent", "owner/other")):
        answer = client.post(JOBS, json={"name": name, "config": {**settings, "pretrained_model_name_or_path": model}})
        assert answer.status_code == 201, answer.text
        saved = json.loads((manager.root / name / "train_config.json").read_text())
        assert saved["pretrained_model_name_or_path"] == model


def test_submit_with_allowed_folders_refuses_too(make_manager, fake_config, tmp_path):
    """The manager applies the same rule for any caller that passes the folders, not only the API."""
    manager = make_manager(run_queue=False)
    folders = AllowedFolders([manager.root], "ask the admin")
    with pytest.raises(ConfigError) as refusal:
        manager.submit(fake_config, "anna", folders)
    assert all("ask the admin" in problem for problem in refusal.value.problems)
    assert not any(p for p in manager.root.iterdir() if not p.name.startswith("."))
    assert manager.submit(fake_config, "anna").status == "queued"  # without folders: the CLI and the tab


def test_allowed_folders_follow_links_once(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    folders = AllowedFolders([tmp_path / "alias"])
    assert folders.folders == (real,)
    assert folders.contains(str(real / "x")) and folders.contains(str(tmp_path / "alias" / "x"))
    assert not folders.contains(str(tmp_path / "realx")) and not folders.contains("x")
    assert os.path.isabs(str(folders.folders[0]))
    with pytest.raises(ValueError):
        AllowedFolders([])
