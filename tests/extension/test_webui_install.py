"""install.py: adds only what is missing, never changes an installed package, reports what it cannot do.

The A1111 test works on a copy of a venv holding AUTOMATIC1111 1.10's pins (gradio 3.41.2, transformers
4.30.2, accelerate 0.21, safetensors 0.4.2, Pillow 9.5.0, ...; built once under .venv-hosts/a1111), so the
cached venv stays as the WebUI ships it. The same copy then runs the whole extension: first as with
--skip-install (diffusers missing: the tab must say so), then after install.py, training a tiny model.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from host_venvs import ensure_host_venv
from scenario_checks import REPO_ROOT, assert_loaded_like_the_host, assert_trained_and_selected, run_scenario


def make_extension(folder: Path, pyproject_text: str | None = None) -> Path:
    """An extension folder holding copies of install.py and pyproject.toml (its report is written there)."""
    folder.mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / "install.py", folder / "install.py")
    (folder / "pyproject.toml").write_text(pyproject_text or (REPO_ROOT / "pyproject.toml").read_text())
    (folder / "extension").symlink_to(REPO_ROOT / "extension")
    return folder


def run_install(python: str | Path, extension: Path, cwd: Path) -> tuple[subprocess.CompletedProcess, float, dict]:
    started = time.perf_counter()
    result = subprocess.run([str(python), str(extension / "install.py")], capture_output=True, text=True,
                            cwd=cwd, timeout=1800)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    report = json.loads((extension / ".dreamcore-install.json").read_text())
    return result, seconds, report


def _dependencies(pyproject: Path) -> list[str]:
    text = pyproject.read_text()
    block = text[text.index("dependencies = ["):]
    return re.findall(r'"([^"]+)"', block[:block.index("]")])


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")


def freeze(python: str | Path) -> dict[str, str]:
    output = subprocess.run([str(python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                            check=True).stdout
    pins = {}
    for line in output.splitlines():
        name, _, version = line.partition("==")
        pins[name.lower().replace("_", "-")] = version or line
    return pins


def test_nothing_missing_is_a_fast_no_op_from_any_working_folder(tmp_path: Path) -> None:
    extension = make_extension(tmp_path / "extensions" / "dreamcore")
    # cwd = the WebUI root (A1111, Forge), then the extension folder (SD.Next).
    for cwd in (tmp_path, extension):
        result, seconds, report = run_install(sys.executable, extension, cwd)
        assert "installing" not in result.stdout
        assert report["messages"] == [] and report["installed"] == []
        assert seconds < 2.0, f"install.py took {seconds:.2f} s with nothing to install"


def test_a1111_pins_install_adds_only_packages_and_dreamcore_trains(tmp_path: Path, tiny_base_model: Path) -> None:
    pristine = ensure_host_venv("a1111").parent.parent
    venv = tmp_path / "a1111-venv"
    shutil.copytree(pristine, venv, symlinks=True)
    python = venv / "bin" / "python"
    before = freeze(python)
    assert before["gradio"] == "3.41.2" and before["transformers"] == "4.30.2" and "diffusers" not in before
    # What dreamcore needs and A1111 lacks (diffusers at least; the list follows pyproject.toml).
    requirements = [line for line in _dependencies(REPO_ROOT / "pyproject.toml")
                    if _name(line) not in before]
    assert "diffusers>=0.31" in requirements

    # 1. As started with --skip-install: diffusers is missing, and the tab says so instead of vanishing.
    skipped = run_scenario(python, tmp_path / "skip-install", base_model=tiny_base_model)
    assert skipped["tabs"] == [["Blocks", "DreamBooth", "dreamcore_tab"]]
    assert not skipped["tab_ready"]
    assert "`diffusers`" in skipped["dependency_message"] and "not installed" in skipped["dependency_message"]
    assert "install.py" in skipped["dependency_message"] and "pip install" in skipped["dependency_message"]
    assert skipped["api_jobs_status"] == 404  # no job API where no job could run

    # 2. No release fits: a requirement only satisfiable by changing the WebUI's packages (diffusers >= 0.40
    #    needs huggingface-hub 1.x; the WebUI has 0.x) is reported, and nothing changes.
    pyproject = (REPO_ROOT / "pyproject.toml").read_text().replace('"diffusers>=0.31"', '"diffusers>=0.40"')
    assert '"diffusers>=0.40"' in pyproject
    impossible = make_extension(tmp_path / "impossible", pyproject)
    _, _, report = run_install(python, impossible, tmp_path)
    assert report["installed"] == []
    assert len(report["messages"]) == 1 and "diffusers>=0.40" in report["messages"][0]
    assert "nothing was changed" in report["messages"][0]
    assert freeze(python) == before

    # 3. The real install: only additions, and the host's pins untouched.
    extension = make_extension(tmp_path / "webui" / "extensions" / "dreamcore")
    _, _, report = run_install(python, extension, tmp_path / "webui")
    assert report == {"messages": [], "installed": requirements, "python": str(python)}
    after = freeze(python)
    changed = {name: (version, after[name]) for name, version in before.items() if after.get(name) != version}
    assert changed == {}, f"install.py changed installed packages: {changed}"
    added = set(after) - set(before)
    assert "diffusers" in added
    print(f"install.py added: {sorted(f'{name}=={after[name]}' for name in added)}")

    # 4. A second start does nothing, quickly.
    result, seconds, _ = run_install(python, extension, extension)
    assert "installing" not in result.stdout and seconds < 2.0
    assert freeze(python) == after

    # 5. The WebUI starts with the extension; a tiny job trains through the tab under gradio 3.41.2.
    trained = run_scenario(python, tmp_path / "run", train=True, base_model=tiny_base_model)
    assert trained["gradio"] == "3.41.2"
    assert_loaded_like_the_host(trained)
    assert_trained_and_selected(trained)
