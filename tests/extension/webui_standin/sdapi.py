"""The WebUI's ``/sdapi/v1`` routes that dev/webui_real_host.py uses, over the stand-in ``modules``: the
checkpoint list and its refresh, the ``sd_model_checkpoint`` option (setting it loads the model, and a failed
load keeps the old value), txt2img (a blank picture and an info naming the loaded model), server-stop. Like
the host with ``--api-auth``, every route asks for that login as HTTP Basic.
"""

# No "from __future__ import annotations": FastAPI reads the route functions' annotations at run time.

import base64
import io
import json
import os
import secrets
from typing import Any, Callable


def add_sdapi_routes(app: Any, login: "tuple[str, str] | None", on_stop: Callable[[], None] = lambda: None) -> None:
    from fastapi import Depends, HTTPException, Request
    from modules import sd_models, shared

    def check_login(request: Request) -> None:
        if login is None:
            return
        expected = "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        if not secrets.compare_digest(request.headers.get("authorization", ""), expected):
            raise HTTPException(401, "Incorrect username or password", {"WWW-Authenticate": "Basic"})

    guarded = [Depends(check_login)]

    @app.get("/sdapi/v1/sd-models", dependencies=guarded)
    def sd_models_list() -> list[dict]:
        return [{"title": info.title, "model_name": info.model_name, "hash": info.shorthash, "sha256": None,
                 "filename": info.filename, "config": None} for info in sd_models.checkpoints_list.values()]

    @app.post("/sdapi/v1/refresh-checkpoints", dependencies=guarded)
    def refresh() -> None:
        shared.refresh_checkpoints()

    @app.get("/sdapi/v1/options", dependencies=guarded)
    def options() -> dict:
        return {"sd_model_checkpoint": shared.opts.data.get("sd_model_checkpoint")}

    @app.post("/sdapi/v1/options", dependencies=guarded)
    def set_options(body: dict) -> None:
        name = body.get("sd_model_checkpoint")
        if name is not None and name not in sd_models.checkpoint_aliases:
            raise HTTPException(500, f"model {name!r} not found")
        for key, value in body.items():
            shared.opts.set(key, value)  # a failed load is shown and the old value stays, as in the host

    @app.post("/sdapi/v1/txt2img", dependencies=guarded)
    def txt2img(body: dict) -> dict:
        from PIL import Image

        wanted = (body.get("override_settings") or {}).get("sd_model_checkpoint")
        if wanted is not None and wanted != shared.opts.data.get("sd_model_checkpoint"):
            shared.opts.set("sd_model_checkpoint", wanted)
        loaded = sd_models.model_data.sd_model
        if loaded is None:
            raise HTTPException(500, "No model loaded")
        buffer = io.BytesIO()
        Image.new("RGB", (int(body.get("width", 512)), int(body.get("height", 512)))).save(buffer, format="PNG")
        name = os.path.splitext(os.path.basename(loaded.sd_checkpoint_info.filename))[0]
        return {"images": [base64.b64encode(buffer.getvalue()).decode()], "parameters": body,
                "info": json.dumps({"prompt": body.get("prompt", ""), "sd_model_name": name})}

    @app.post("/sdapi/v1/server-stop", dependencies=guarded)
    def server_stop() -> None:
        on_stop()
