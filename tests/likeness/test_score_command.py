"""``python -m dreamcore score``: folders of samples, training's samples/ folder, models, and bad input."""

from __future__ import annotations

import json

import pytest

from dreamcore.cli import main


@pytest.fixture()
def training_samples(tmp_path, astronaut, grace_hopper, second_view):
    """Training's layout: samples/step-NNNNNN/ per checkpoint. Step 200 draws the user, step 100 a stranger."""
    root = tmp_path / "samples"
    for step, faces in ((100, [grace_hopper, grace_hopper.rotate(4)]),
                        (200, [second_view(astronaut), astronaut.rotate(4)])):
        folder = root / f"step-{step:06d}"
        folder.mkdir(parents=True)
        for index, face in enumerate(faces):
            face.save(folder / f"sample-{index:02d}-seed{1337 + index}.png")
    return root


def test_scores_training_sample_folders_and_marks_the_best(tmp_path, photo_folder, training_samples, capsys):
    out = tmp_path / "report"
    code = main(["score", str(training_samples), "--photos", str(photo_folder), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    rows = [line for line in printed.splitlines() if line.startswith("step-")]
    assert rows[0].startswith("step-000100") and rows[1].startswith("step-000200")
    assert rows[1].endswith("<- best") and "<- best" not in rows[0]
    report = json.loads((out / "scores.json").read_text())
    assert report["best_step"] == 200 and [c["step"] for c in report["checkpoints"]] == [100, 200]
    assert report["checkpoints"][1]["likeness"] > 0.5 > report["checkpoints"][0]["likeness"]
    assert (out / "likeness.png").is_file()


def test_scores_a_single_folder_with_class_samples(tmp_path, photo_folder, training_samples, grace_hopper, capsys):
    class_folder = tmp_path / "class"
    class_folder.mkdir()
    grace_hopper.save(class_folder / "c.png")
    code = main(["score", str(training_samples / "step-000200"), "--photos", str(photo_folder),
                 "--class_samples", str(class_folder), "--out", str(tmp_path / "out")])
    assert code == 0
    checkpoint = json.loads((tmp_path / "out" / "scores.json").read_text())["checkpoints"][0]
    assert checkpoint["num_class_samples"] == 1 and 0 < checkpoint["class_drift"] < 0.5


def test_scores_a_model(tmp_path, photo_folder, capsys):
    pytest.importorskip("dreamcore.models", reason="dreamcore.models (issue 2) is not in this tree")
    from dreamcore.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "model-step-000300", family="sd1", fmt="diffusers")
    out = tmp_path / "out"
    code = main(["score", str(model), "--photos", str(photo_folder), "--instance_prompt", "photo of sks person",
                 "--class_prompt", "photo of a person", "--num_samples", "2", "--num_inference_steps", "2",
                 "--prompt_variation", "{}, smiling", "--resolution", "64", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    checkpoint = json.loads((out / "scores.json").read_text())["checkpoints"][0]
    assert checkpoint["step"] == 300 and checkpoint["num_samples"] == 4 and checkpoint["num_class_samples"] == 2
    assert (out / "samples" / "model-step-000300" / "samples.json").is_file()
    # The saved samples score the same when given back as a folder.
    code = main(["score", str(out / "samples" / "model-step-000300"), "--photos", str(photo_folder),
                 "--out", str(tmp_path / "rescored")])
    assert code == 0
    rescored = json.loads((tmp_path / "rescored" / "scores.json").read_text())["checkpoints"][0]
    assert rescored["variety"] == pytest.approx(checkpoint["variety"])
    assert rescored["num_class_samples"] == 2


def test_scores_every_checkpoint_in_a_folder_and_only_those(tmp_path, photo_folder, capsys):
    pytest.importorskip("dreamcore.models", reason="dreamcore.models (issue 2) is not in this tree")
    from dreamcore.tiny import save_tiny_model

    checkpoints = tmp_path / "checkpoints"
    for step, seed in ((1000, 1), (500, 0)):
        save_tiny_model(checkpoints / f"run-step-{step:06d}", family="sd1", fmt="diffusers", seed=seed)
    (checkpoints / "train_config.json").write_text("{}")  # what training leaves beside them: not a checkpoint
    out = tmp_path / "out"
    code = main(["score", str(checkpoints), "--photos", str(photo_folder), "--instance_prompt", "photo of sks person",
                 "--num_samples", "1", "--num_inference_steps", "1", "--prompt_variation", "{}, smiling",
                 "--resolution", "64", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "scores.json").read_text())
    assert [(c["label"], c["step"]) for c in report["checkpoints"]] == [("run-step-000500", 500),
                                                                         ("run-step-001000", 1000)]
    assert all(c["class_drift"] is None for c in report["checkpoints"])  # no --class_prompt
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["run-step-000500", "run-step-001000"]


def test_bad_input_gets_a_clear_error(tmp_path, photo_folder, capsys):
    missing = tmp_path / "nowhere"
    assert main(["score", str(missing), "--photos", str(photo_folder)]) == 1
    assert f"{missing} does not exist" in capsys.readouterr().err

    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")
    assert main(["score", str(model), "--photos", str(photo_folder)]) == 1
    assert "--instance_prompt is needed" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["score", str(empty), "--photos", str(photo_folder)]) == 1
    assert "holds no images" in capsys.readouterr().err

    assert main(["score", str(photo_folder), "--photos", str(empty)]) == 1
    assert "no usable photos" in capsys.readouterr().err
