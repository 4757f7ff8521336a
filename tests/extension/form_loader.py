"""Import the glue package the way scripts/dreamcore_tab.py does (as ``dreamcore_webui``), for unit tests."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_glue_package():
    if "dreamcore_webui" in sys.modules:
        return sys.modules["dreamcore_webui"]
    folder = REPO_ROOT / "extension"
    spec = importlib.util.spec_from_file_location("dreamcore_webui", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["dreamcore_webui"] = module
    spec.loader.exec_module(module)
    return module


glue = load_glue_package()
form = importlib.import_module("dreamcore_webui.form")
