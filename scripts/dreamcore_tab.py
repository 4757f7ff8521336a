"""The WebUI imports this file at start (every .py in scripts/ is imported); it only wires dreamcore in.

While this file is imported the extension root is on sys.path; right after, the WebUI removes it. So what
needs that path is imported now: the glue package (under the unique name ``dreamcore_webui``: a top-level
``extension`` would collide with other extensions' folders of that name in the shared sys.modules) and the
``dreamcore`` package itself. Once ``dreamcore`` is imported, its submodules (training, jobs, convert)
load later through the package's own ``__path__``, which needs no sys.path entry. Nothing else is imported
here: the tab, the job runner, the dependency check and gradio load when a callback first needs them (a test
checks which modules the start imports).
"""

import importlib.util
import os
import sys

EXTENSION_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLUE_PACKAGE = "dreamcore_webui"


def _load_glue_package():
    package_dir = os.path.join(EXTENSION_ROOT, "extension")
    spec = importlib.util.spec_from_file_location(
        GLUE_PACKAGE, os.path.join(package_dir, "__init__.py"), submodule_search_locations=[package_dir])
    module = importlib.util.module_from_spec(spec)
    sys.modules[GLUE_PACKAGE] = module
    spec.loader.exec_module(module)
    return module


# "Reload UI" imports this file again: reuse the loaded package (its jobs keep running) and register again.
glue = sys.modules.get(GLUE_PACKAGE) or _load_glue_package()
EXTENSION = glue.register_with_webui(EXTENSION_ROOT)
