"""``python -m dreamcore ui``: the DreamBooth tab and the jobs REST API as a gradio app, without a WebUI.

The same tab as in the WebUI, over a ``StandaloneHost``: base models and finished models live in
``<output root>/models`` (a path may also be typed in), jobs in ``<output root>/jobs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreamcore.jobs.generate_api import GenerateService
from dreamcore.presets import PORTRAIT_PRESET

from .controller import TrainingController
from .generate_panel import with_generate_panel
from .host import StandaloneHost
from .tab import TAB_TITLE, build_tab

TAB_USER = "dreamcore"  # the tab's login when the app has a token (listening beyond this computer)


def build_app(output_root: str | Path, share_api: bool = True, access: Any = None,
              allowed: Any = None) -> tuple[Any, Any, Any]:
    """A FastAPI app with the REST API under /dreamcore/v1/ and the tab at /; returns (app, blocks, handlers).
    ``access`` and ``allowed``: the REST API's request checks and allowed folders (dreamcore.jobs.access,
    dreamcore.jobs.allowed); default: this computer only, no login, the output folder. With a token in
    ``access`` the tab asks for a login too: user TAB_USER, the token as password."""
    import gradio as gr
    from fastapi import FastAPI

    from .dreamcore_callbacks import mount_job_routes

    output_root = Path(output_root)
    host = StandaloneHost(output_root)
    host.checkpoint_dir().mkdir(parents=True, exist_ok=True)
    controller = TrainingController(host, lambda: output_root)
    notice = (f"**dreamcore (standalone)**: base models are read from `{host.checkpoint_dir()}` (or type a path); "
              "finished models are written there too.")
    blocks, handlers = build_tab(controller, PORTRAIT_PRESET, notice=notice)
    blocks.title = TAB_TITLE
    generation = GenerateService(controller.manager(), output_root / "generated")
    blocks, handlers.generate_panel = with_generate_panel(blocks, generation, host.checkpoint_dir(),
                                                          lora_folder=host.lora_dir())
    app = FastAPI(title="dreamcore")
    if share_api:
        from dreamcore.jobs.allowed import AllowedFolders

        allowed = allowed or AllowedFolders([output_root], "start the app with --allow-dir FOLDER")
        mount_job_routes(app, controller.manager(), access=access, allowed=allowed)
    token = getattr(access, "token", None)
    login = {"auth": (TAB_USER, token)} if token else {}  # the tab starts jobs too: the same secret guards it
    app = gr.mount_gradio_app(app, blocks.queue(), path="/", **login)
    return app, blocks, handlers


def launch_standalone(output_root: str | Path, host: str = "127.0.0.1", port: int = 7861,
                      share_api: bool = True, access: Any = None, allowed: Any = None) -> None:
    """Serve the app until interrupted (binds ``host``: 127.0.0.1 unless told otherwise)."""
    import uvicorn

    app, _blocks, _handlers = build_app(output_root, share_api, access, allowed)
    print(f"dreamcore: open http://{host}:{port}/ (REST API under /dreamcore/v1/)", flush=True)
    if getattr(access, "token", None):
        print(f"dreamcore: the tab asks for a login: user '{TAB_USER}', the REST API token as password", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
