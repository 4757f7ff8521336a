"""``python -m dreamcore ui``: the WebUI tab and the REST API as a standalone gradio app.

For people without a WebUI. The tab is the extension's (``extension/``, beside the ``dreamcore`` package
in a repository checkout and in an extension install); it is loaded by path under the module name
``dreamcore_webui``, as the WebUI loads it, because ``dreamcore`` never imports gradio or the extension.
The app listens on 127.0.0.1 unless ``--host`` says otherwise; its REST API checks every request as
``jobs serve`` does (``--token``, ``--allow-dir``, ``--allow-host``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from dreamcore.jobs.command import DEFAULT_OUTPUT, add_server_arguments, api_security

HELP = "Open the DreamBooth tab and the REST API as a local web app (gradio), without a WebUI."
GLUE_PACKAGE = "dreamcore_webui"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class StandaloneAppError(RuntimeError):
    """The app cannot start; the message says what is missing and how to get it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to listen on. The default serves this computer only; 0.0.0.0 opens the app "
                             "to your network: the tab and the REST API then ask for a token (see --token).")
    parser.add_argument("--port", type=int, default=7861, help="Port (default: 7861).")
    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help=f"Folder for jobs, uploads and models (default: {DEFAULT_OUTPUT}).")
    add_server_arguments(parser)


def find_extension_folder() -> Path:
    """The ``extension/`` folder that sits beside the ``dreamcore`` package."""
    import dreamcore

    folder = Path(dreamcore.__file__).resolve().parent.parent / "extension"
    if not (folder / "__init__.py").is_file():
        raise StandaloneAppError(
            f"the dreamcore tab (the folder {folder}) is missing: the app needs a repository checkout or a WebUI "
            "extension install of dreamcore, not only the Python package. Clone the repository and run "
            "'python -m dreamcore ui' from it, or use the CLI ('python -m dreamcore jobs ...').")
    return folder


def load_glue_package(folder: Path) -> ModuleType:
    """Import ``extension/`` as ``dreamcore_webui`` (reusing it when the WebUI already loaded it)."""
    loaded = sys.modules.get(GLUE_PACKAGE)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(GLUE_PACKAGE, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None:
        raise StandaloneAppError(f"cannot load the dreamcore tab from {folder}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[GLUE_PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[GLUE_PACKAGE]
        raise
    return module


def launch(output: Path, host: str, port: int, security: tuple[Any, Any]) -> None:
    """Start the app; ``security``: the REST API's (ApiAccess, AllowedFolders), from ``api_security``."""
    if importlib.util.find_spec("gradio") is None:
        raise StandaloneAppError("the app needs gradio, which is not installed: pip install 'gradio>=4.40' "
                                 "(or pip install 'dreamcore[ui]'). The CLI works without it: "
                                 "python -m dreamcore jobs --help.")
    folder = find_extension_folder()
    load_glue_package(folder)
    try:
        app = importlib.import_module(f"{GLUE_PACKAGE}.app")
    except ModuleNotFoundError as error:
        if error.name == f"{GLUE_PACKAGE}.app":
            raise StandaloneAppError(f"{folder} has no app.py: this dreamcore tab is too old or incomplete for "
                                     "the standalone app; update the repository.") from error
        raise
    access, allowed = security
    app.launch_standalone(output, host, port, access=access, allowed=allowed)


def run(args: argparse.Namespace) -> int:
    if args.host not in LOCAL_HOSTS:
        print(f"warning: listening on {args.host}: other computers can reach port {args.port}; the tab (user "
              "'dreamcore') and the REST API ask for the token, and the connection is not encrypted.",
              file=sys.stderr)
    output = Path(args.output).resolve()
    try:
        security = api_security(args, output)
    except ValueError as error:  # a bad --allow-dir
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        launch(output, args.host, args.port, security)
    except StandaloneAppError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
