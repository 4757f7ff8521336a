"""Load an extension's ``scripts/`` the way the WebUI does.

Each ``.py`` in ``<extension>/scripts/`` is imported with ``spec_from_file_location(basename, path)``
while the extension root is first on ``sys.path``; the root is removed again right after that import.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import sys
from pathlib import Path
from types import ModuleType

STANDIN_DIR = Path(__file__).resolve().parent / "webui_standin"


def use_standin_host(data_dir: str | Path, flavor: str = "a1111") -> None:
    """Make the stand-in ``modules`` importable as the host's own (its root is on sys.path in a WebUI)."""
    os.environ["DREAMCORE_STANDIN_DATA_DIR"] = str(data_dir)
    os.environ["DREAMCORE_STANDIN_FLAVOR"] = flavor
    for name in [n for n in sys.modules if n == "modules" or n.startswith(("modules.", "modules_forge"))]:
        del sys.modules[name]
    if str(STANDIN_DIR) not in sys.path:
        sys.path.insert(0, str(STANDIN_DIR))


def load_extension_scripts(extension_root: str | Path) -> list[ModuleType]:
    extension_root = Path(extension_root)
    loaded = []
    for path in sorted((extension_root / "scripts").glob("*.py")):
        sys.path.insert(0, str(extension_root))
        try:
            spec = importlib.util.spec_from_file_location(path.stem, str(path))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(extension_root))
        loaded.append(module)
    return loaded


def remove_standin_host() -> None:
    """Undo use_standin_host (tests in one process use several flavors)."""
    for name in [n for n in sys.modules if n == "modules" or n.startswith(("modules.", "modules_forge"))]:
        del sys.modules[name]
    if str(STANDIN_DIR) in sys.path:
        sys.path.remove(str(STANDIN_DIR))


def write_loadable_checkpoint(path: str | Path) -> Path:
    """A file the stand-in host loads: a safetensors header (8-byte little-endian length, then JSON) and no
    tensors. Real weights are not needed to test how a model switch is reported."""
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path
