"""REST API of the job queue, under ``/dreamcore/v1/``; the extension adds it to the host's FastAPI app.

    app.include_router(create_router(manager))

Request bodies are read as plain JSON and checked by ``TrainConfig.from_dict`` (unknown fields and wrong
types) and ``TrainConfig.problems()`` (settings that cannot train), both on every request, so every problem
comes back at once, in the same words the CLI and the tab use, on every FastAPI version the hosts ship (0.94
with pydantic 1 in AUTOMATIC1111 up to the newest). A refused request changes nothing.

    GET    /dreamcore/v1/jobs                 {"jobs": [job, ...]}
    POST   /dreamcore/v1/jobs                 {"name": "anna", "config": {TrainConfig fields}} -> 201 job
    GET    /dreamcore/v1/jobs/{name}          job (status, step, total_steps, loss, losses, samples, outputs, ...)
    POST   /dreamcore/v1/jobs/{name}/cancel   job
    POST   /dreamcore/v1/jobs/{name}/resume   job
    POST   /dreamcore/v1/jobs/{name}/rerun    {"name": optional new name} -> 201 job
    DELETE /dreamcore/v1/jobs/{name}          {"removed": name}

Errors: 400 bad JSON or job name, 404 unknown job, 409 conflict with the job's state (name taken, already
running), 422 settings with problems; the body is ``{"detail": {"message": ..., "problems": [...]}}``.
AUTOMATIC1111 and Forge with ``--api`` or ``--nowebui`` rewrite it as
``{"error": "HTTPException", "detail": {...}, "body": "", "errors": "..."}``: ``detail`` is the same in both.
"""

# No "from __future__ import annotations": FastAPI reads the route annotations (Request) at run time.

import json
import re
from typing import Any, Callable

from dreamcore.config import ConfigError, TrainConfig, parse_settings
from dreamcore.jobs.manager import JobConflictError, JobManager, JobNotFoundError
from dreamcore.jobs.names import JobNameError, check_job_name

API_PREFIX = "/dreamcore/v1"
_SUBMIT_KEYS = {"name", "config"}
SETTINGS_PROBLEMS_MESSAGE = "the training settings have problems; fix them and submit again"


def create_router(manager: JobManager, dependencies: list[Any] | None = None) -> Any:
    """A fastapi.APIRouter with the job routes under /dreamcore/v1/.

    ``dependencies``: FastAPI dependencies run before every route, e.g. ``[Depends(host_auth)]`` so the
    host's API login (AUTOMATIC1111's ``--api-auth``) guards these routes too; none by default."""
    from fastapi import APIRouter, HTTPException, Request
    from fastapi.responses import JSONResponse

    router = APIRouter(prefix=API_PREFIX, tags=["dreamcore"], dependencies=list(dependencies or []))

    def refuse(status: int, message: str, problems: list[str] | None = None) -> HTTPException:
        return HTTPException(status_code=status, detail={"message": message, "problems": problems or []})

    def call(action: Callable[[], Any]) -> Any:
        """Run a manager request, turning its refusals into 4xx responses."""
        try:
            return action()
        except JobNameError as error:
            raise refuse(400, str(error)) from error
        except JobNotFoundError as error:
            raise refuse(404, str(error)) from error
        except JobConflictError as error:
            raise refuse(409, str(error)) from error
        except ConfigError as error:
            raise refuse(422, SETTINGS_PROBLEMS_MESSAGE, error.problems) from error

    async def json_body(request: Request, required: bool) -> dict[str, Any]:
        raw = await request.body()
        if not raw.strip():
            if required:
                raise refuse(400, 'the request needs a JSON body: {"name": "...", "config": {...}}')
            return {}
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise refuse(400, f"the request body is not valid JSON: {error}") from error
        if not isinstance(body, dict):
            raise refuse(400, f"the request body must be a JSON object, got {type(body).__name__}")
        return body

    @router.get("/jobs")
    def list_jobs() -> dict[str, Any]:
        return {"jobs": [info.to_dict() for info in manager.list()]}

    @router.post("/jobs", status_code=201)
    async def submit_job(request: Request) -> Any:
        body = await json_body(request, required=True)
        unknown = sorted(set(body) - _SUBMIT_KEYS)
        missing = sorted(_SUBMIT_KEYS - set(body))
        if unknown or missing:
            problems = [f"unknown key {key!r}" for key in unknown] + [f"missing key {key!r}" for key in missing]
            if not missing:  # the settings are there too: their problems belong in the same answer
                problems += _submission_problems(manager, body["name"], body["config"])
            raise refuse(422, 'the body must be {"name": "...", "config": {...}}', problems)
        name = body["name"]
        call(lambda: check_job_name(name))
        config = call(lambda: checked_settings(manager, body["config"], name))
        info = call(lambda: manager.submit(config, name))
        return JSONResponse(info.to_dict(), status_code=201)

    @router.get("/jobs/{name}")
    def get_job(name: str) -> dict[str, Any]:
        return call(lambda: manager.get(name)).to_dict()

    @router.post("/jobs/{name}/cancel")
    def cancel_job(name: str) -> dict[str, Any]:
        return call(lambda: manager.cancel(name)).to_dict()

    @router.post("/jobs/{name}/resume")
    def resume_job(name: str) -> dict[str, Any]:
        return call(lambda: manager.resume(name)).to_dict()

    @router.post("/jobs/{name}/rerun", status_code=201)
    async def rerun_job(name: str, request: Request) -> Any:
        body = await json_body(request, required=False)
        unknown = sorted(set(body) - {"name"})
        if unknown:
            raise refuse(422, 'the body may only hold {"name": "new job name"}',
                         [f"unknown key {key!r}" for key in unknown])
        new_name = body.get("name")
        if new_name is not None:
            call(lambda: check_job_name(new_name))
        info = call(lambda: manager.rerun(name, new_name))
        return JSONResponse(info.to_dict(), status_code=201)

    @router.delete("/jobs/{name}")
    def remove_job(name: str) -> dict[str, Any]:
        call(lambda: manager.remove(name))
        return {"removed": name}

    return router


def checked_settings(manager: JobManager, values: Any, name: str) -> TrainConfig:
    """The submitted ``config`` as a TrainConfig. Raises ConfigError listing every problem at once: unknown
    keys and wrong types, and what the valid keys cannot train with (a missing photo folder, a resolution
    that is not a multiple of 8, ...), checked as the job would run them. A problem that names a refused key
    is left out: it would judge a default, not what was sent, and the refusal already names that key."""
    parsed = parse_settings(values, source="config")
    if not parsed.problems:
        return parsed.config
    also = [problem for problem in manager.problems(parsed.config, name)
            if not any(re.search(rf"\b{re.escape(key)}\b", problem) for key in parsed.refused)]
    raise ConfigError(parsed.problems + also)


def _submission_problems(manager: JobManager, name: Any, values: Any) -> list[str]:
    """Every problem of a job name and its settings, as a list (for an answer that refuses the body anyway)."""
    try:
        check_job_name(name)
    except JobNameError as error:
        return [str(error)]
    try:
        config = checked_settings(manager, values, name)
    except ConfigError as error:
        return error.problems
    return manager.problems(config, name)
