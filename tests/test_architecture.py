"""The layering rules: scripts/ -> extension/ -> dreamcore/, never the other way; cheap imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_CORE = ("gradio", "modules", "extension", "scripts", "dreamcore_webui")


def imported_top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_neither_gradio_nor_the_webui() -> None:
    offenders = {}
    for path in sorted((ROOT / "dreamcore").rglob("*.py")):
        bad = imported_top_level_names(path) & set(FORBIDDEN_IN_CORE)
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_scripts_holds_only_the_entry_file() -> None:
    scripts = sorted(p.name for p in (ROOT / "scripts").glob("*.py")) if (ROOT / "scripts").is_dir() else []
    assert len(scripts) <= 1, scripts


def test_importing_dreamcore_is_cheap() -> None:
    """`import dreamcore` must not pull torch or diffusers: the WebUI imports it at start-up."""
    code = ("import sys, dreamcore; heavy = [m for m in ('torch', 'diffusers', 'transformers', 'gradio') "
            "if m in sys.modules]; print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == ""


def test_cli_help_lists_every_command() -> None:
    result = subprocess.run([sys.executable, "-m", "dreamcore", "--help"], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    for command in ("train", "generate", "tiny-model", "demo"):
        assert command in result.stdout


def test_test_modules_have_unique_names() -> None:
    """pytest imports test files by basename (no __init__.py): two files of one name break collection."""
    names: dict[str, list[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in names.items() if len(paths) > 1} == {}


def family_name_literals(path: Path, names: set[str]) -> list[int]:
    """Lines where a string constant is exactly a family name (docstrings and prose are whole sentences)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return sorted(node.lineno for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names)


def test_only_the_families_and_their_assets_name_a_family() -> None:
    """Adding a family is one new module: nothing outside dreamcore/families (and the shipped assets' folders)
    writes a family's name; the rest asks the registry or the family object."""
    from dreamcore.families import FAMILY_NAMES

    names = set(FAMILY_NAMES)
    offenders = {}
    for folder in ("dreamcore", "extension", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith(("dreamcore/families/", "dreamcore/assets/")):
                continue
            lines = family_name_literals(path, names)
            if lines:
                offenders[relative] = lines
    assert offenders == {}


def test_the_family_literal_check_sees_a_literal(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('"""Loads sd1 models."""\nFAMILY = "sd1"\nOTHER = "sd1-like"\n', encoding="utf-8")
    assert family_name_literals(sample, {"sd1"}) == [2]
