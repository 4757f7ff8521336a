"""Which of dreamcore's dependencies the host's Python has, and what install.py reported.

Standard library only: install.py loads this file by path before anything else is installed, and the tab
calls it at WebUI start, where it must stay cheap (package metadata and import specs, no imports of torch
or diffusers).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INSTALL_REPORT_NAME = ".dreamcore-install.json"
# Packages installed under one name and imported under another.
IMPORT_NAMES = {"pillow": "PIL"}
# Never installed by us: the host owns torch (a wrong build would break its GPU support).
HOST_OWNED = {"torch"}


@dataclass(frozen=True)
class Requirement:
    name: str          # distribution name as written in pyproject.toml
    specifier: str     # e.g. ">=0.31", "" for any version

    @property
    def import_name(self) -> str:
        return IMPORT_NAMES.get(self.name.lower(), self.name.replace("-", "_"))

    def __str__(self) -> str:
        return f"{self.name}{self.specifier}"


@dataclass
class DependencyReport:
    missing: list[Requirement] = field(default_factory=list)        # not installed at all
    too_old: list[tuple[Requirement, str]] = field(default_factory=list)  # installed version outside the range
    install_messages: list[str] = field(default_factory=list)       # what install.py could not do

    @property
    def ok(self) -> bool:
        return not self.missing

    def markdown(self, python: str = sys.executable) -> str:
        """What is wrong and what to do, for the tab's message panel."""
        lines: list[str] = []
        if self.missing:
            names = ", ".join(f"`{r.name}`" for r in self.missing)
            lines.append(f"**dreamcore cannot train here yet: {names} "
                         f"{'is' if len(self.missing) == 1 else 'are'} not installed in the WebUI's Python.**")
            owned = [r for r in self.missing if r.name.lower() in HOST_OWNED]
            ours = [r for r in self.missing if r.name.lower() not in HOST_OWNED]
            if ours:
                lines.append("Restart the WebUI without `--skip-install` / `--skip-prepare-environment` so that "
                             "dreamcore's install.py adds them (it never changes a package already installed), "
                             "or install them yourself with the WebUI's Python:")
                lines.append(f"`\"{python}\" -m pip install {' '.join(repr(str(r)) for r in ours)}`")
            if owned:
                lines.append("`torch` belongs to the WebUI: repair the WebUI's own installation first.")
        for requirement, version in self.too_old:
            lines.append(f"`{requirement.name}` {version} is installed; dreamcore is tested with "
                         f"`{requirement}`. Training may fail; dreamcore leaves the WebUI's version alone.")
        if self.install_messages:
            lines.append("**install.py reported:**")
            lines.extend(f"- {message}" for message in self.install_messages)
        return "\n\n".join(lines)


def read_requirements(extension_root: Path) -> list[Requirement]:
    """dreamcore's runtime dependencies, from the ``dependencies`` list of ``<root>/pyproject.toml``."""
    pyproject = extension_root / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    match = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.S | re.M)
    if match is None:
        raise ValueError(f"{pyproject}: no 'dependencies = [...]' list; the extension folder is incomplete - "
                         "reinstall it from the Extensions tab.")
    requirements = []
    for entry in re.findall(r"\"([^\"]+)\"", match.group(1)):
        name, specifier = re.match(r"([A-Za-z0-9._-]+)\s*(.*)", entry).groups()
        requirements.append(Requirement(name, specifier.replace(" ", "")))
    return requirements


def installed_version(requirement: Requirement) -> str | None:
    """The installed version, or None when the package is absent (or its import is blocked)."""
    try:
        version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return None
    if sys.modules.get(requirement.import_name, True) is None or \
            importlib.util.find_spec(requirement.import_name) is None:
        return None  # metadata left behind by a removed package, or the import is blocked
    return version


def version_satisfies(version: str, specifier: str) -> bool:
    if not specifier:
        return True
    specifier_set, version_class = _packaging()
    return version_class(version) in specifier_set(specifier)


def check_dependencies(extension_root: Path) -> DependencyReport:
    report = DependencyReport(install_messages=read_install_messages(extension_root))
    for requirement in read_requirements(extension_root):
        version = installed_version(requirement)
        if version is None:
            report.missing.append(requirement)
        elif not version_satisfies(version, requirement.specifier):
            report.too_old.append((requirement, version))
    return report


def read_install_messages(extension_root: Path) -> list[str]:
    path = extension_root / INSTALL_REPORT_NAME
    if not path.is_file():
        return []
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        return [f"{path} cannot be read ({error}); delete it and restart the WebUI to run install.py again."]
    return [str(message) for message in data.get("messages", [])]


def _packaging() -> tuple[Any, Any]:
    # packaging comes with transformers/accelerate/hub; pip vendors the same library when those are absent.
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:
        from pip._vendor.packaging.specifiers import SpecifierSet
        from pip._vendor.packaging.version import Version
    return SpecifierSet, Version
