"""The glue's small parts: dependency check, progress and loss views, publishing into the checkpoint folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from form_loader import REPO_ROOT, glue  # noqa: F401
import importlib

deps = importlib.import_module("dreamcore_webui.deps")
views = importlib.import_module("dreamcore_webui.views")
publish = importlib.import_module("dreamcore_webui.publish")


def test_requirements_come_from_pyproject_and_installed_ones_pass() -> None:
    requirements = {r.name: r for r in deps.read_requirements(REPO_ROOT)}
    assert {"torch", "diffusers", "transformers", "accelerate", "safetensors", "Pillow"} <= set(requirements)
    assert requirements["Pillow"].import_name == "PIL"
    report = deps.check_dependencies(REPO_ROOT)
    assert report.ok and report.missing == []


def test_blocked_or_old_packages_are_reported_with_what_to_do(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text('dependencies = [\n  "torch>=2.1",\n  "safetensors>=99",\n'
                                             '  "diffusers>=0.31",\n]\n')
    (tmp_path / deps.INSTALL_REPORT_NAME).write_text(json.dumps({"messages": ["no diffusers fits"]}))
    monkeypatch.setitem(sys.modules, "diffusers", None)
    monkeypatch.setitem(sys.modules, "torch", None)
    report = deps.check_dependencies(tmp_path)
    assert [r.name for r in report.missing] == ["torch", "diffusers"]
    assert [r.name for r, _ in report.too_old] == ["safetensors"]
    text = report.markdown(python="/webui/venv/bin/python")
    assert "\"/webui/venv/bin/python\" -m pip install 'diffusers>=0.31'" in text
    assert "torch` belongs to the WebUI" in text
    assert "no diffusers fits" in text and "safetensors>=99" in text


def test_version_ranges() -> None:
    assert deps.version_satisfies("4.30.2", "<4.37")
    assert not deps.version_satisfies("4.46.1", "<4.37")
    assert deps.version_satisfies("2.13.0+cpu", ">=2.1")


def test_progress_and_loss_plot() -> None:
    html = views.progress_html("anna", "running", 50, 200, 1.25, 120.0, 0.1234, "train")
    assert 'data-step="50"' in html and "width:25.0%" in html
    assert "1.25 it/s" in html and "ETA 2:00" in html and "loss 0.1234" in html
    svg = views.loss_plot_svg([(1, 0.5), (2, float("nan")), (3, 0.25), (4, 0.3)])
    assert 'data-points="3"' in svg and "<polyline" in svg and "step 4" in svg
    assert "No loss yet" in views.loss_plot_svg([])
    assert views.format_duration(3725) == "1:02:05" and views.format_duration(None) == "-"


def test_publish_writes_model_metadata_and_yaml_atomically(tmp_path: Path) -> None:
    exported = tmp_path / "job" / "output" / "anna.safetensors"
    exported.parent.mkdir(parents=True)
    exported.write_bytes(b"weights" * 100)
    exported.with_suffix(".yaml").write_text("model: v\n")
    published = publish.publish_checkpoint(exported, tmp_path / "Stable-diffusion", "anna", "photo of ukj person")
    assert published.path == tmp_path / "Stable-diffusion" / "dreamcore" / "anna.safetensors"
    assert published.path.read_bytes() == exported.read_bytes()
    assert published.path.with_suffix(".yaml").read_text() == "model: v\n"
    metadata = json.loads(published.metadata_path.read_text())
    assert metadata["activation text"] == "photo of ukj person"
    assert sorted(p.name for p in published.path.parent.iterdir()) == ["anna.json", "anna.safetensors", "anna.yaml"]
    with pytest.raises(FileNotFoundError, match="missing"):
        publish.publish_checkpoint(tmp_path / "nope.safetensors", tmp_path / "Stable-diffusion", "x", "p")


def test_the_likeness_report_of_a_job_is_shown(tmp_path: Path) -> None:
    from types import SimpleNamespace

    tab = importlib.import_module("dreamcore_webui.tab")
    folder = tmp_path / "likeness"
    folder.mkdir()
    (folder / "table.txt").write_text("step  likeness\n 500  0.61  <- best")
    (folder / "likeness.png").write_bytes(b"png")
    info = SimpleNamespace(name="anna", status="completed", samples=[], outputs={"likeness": str(folder)})
    controller = SimpleNamespace(host=SimpleNamespace(flavor="a1111"), published=lambda name: None)
    assert "0.61  <- best" in tab._final_message(info, controller)
    assert tab._gallery(info)[-1][0] == str(folder / "likeness.png")
    plain = SimpleNamespace(name="anna", status="completed", samples=[], outputs={})
    assert "Likeness" not in tab._final_message(plain, controller) and tab._gallery(plain) == []


def test_the_tab_says_how_to_enable_scoring_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import dreamcore.likeness

    tab = importlib.import_module("dreamcore_webui.tab")
    monkeypatch.setattr(dreamcore.likeness, "scoring_available",
                        lambda: (False, "pip install 'dreamcore[faces]' to enable it."))
    assert "not available" in tab.likeness_status() and "dreamcore[faces]" in tab.likeness_status()
