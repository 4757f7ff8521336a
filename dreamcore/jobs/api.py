"""REST API of the job queue, under ``/dreamcore/v1/``; the extension adds it to the host's FastAPI app.

    app.include_router(create_router(manager, access=ApiAccess.for_listener("127.0.0.1"),
                                     allowed=AllowedFolders([output_folder])))

Every request is checked first (``dreamcore.jobs.access``): Host, Origin, the login when the server has one,
a JSON content type, the body size. Paths in a job's settings must lie in the allowed folders
(``dreamcore.jobs.allowed``).

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

Errors: 400 bad JSON or job name, 401 no or wrong login, 403 a cross-site page, 404 unknown job, 409 conflict
with the job's state (name taken, already running), 413 body too large, 415 not JSON, 421 foreign Host, 422
settings with problems; the body is ``{"detail": {"message": ..., "problems": [...]}}``.
AUTOMATIC1111 and Forge with ``--api`` or ``--nowebui`` rewrite it as
``{"error": "HTTPException", "detail": {...}, "body": "", "errors": "..."}``: ``detail`` is the same in both.
"""

# No "from __future__ import annotations": FastAPI reads the route annotations (Request) at run time.

import json
import math
import re
from typing import Any, Callable

from dreamcore.config import ConfigError, TrainConfig, parse_settings
from dreamcore.jobs.access import ApiAccess, body_too_large
from dreamcore.jobs.allowed import AllowedFolders
from dreamcore.jobs.folder import JobRecordError
from dreamcore.jobs.manager import JobConflictError, JobManager, JobNotFoundError
from dreamcore.jobs.names import JobNameError, check_job_name

API_PREFIX = "/dreamcore/v1"
_SUBMIT_KEYS = {"name", "config"}
SETTINGS_PROBLEMS_MESSAGE = "the training settings have problems; fix them and submit again"
MAX_JSON_DEPTH = 32  # settings nest two or three levels; deeper is not a job


class BadBody(ValueError):
    """A request body that is not the JSON a route takes; the message says what is wrong."""


def create_router(manager: JobManager, dependencies: list[Any] | None = None, *, access: ApiAccess | None = None,
                  allowed: AllowedFolders | None = None) -> Any:
    """A fastapi.APIRouter with the job routes under /dreamcore/v1/.

    ``access``: the checks run on every request before anything else; default: a server on this computer
    only, without a login. ``allowed``: the folders a submitted job's paths must lie in; default: the jobs
    folder alone. ``dependencies``: further FastAPI dependencies run before every route (after ``access``)."""
    from fastapi import APIRouter, Depends, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    access = access or ApiAccess()
    allowed = allowed or AllowedFolders([manager.root])

    def refuse(status: int, message: str, problems: list[str] | None = None,
               headers: dict[str, str] | None = None) -> HTTPException:
        return HTTPException(status_code=status, detail={"message": message, "problems": problems or []},
                             headers=headers or None)

    async def check_access(request: Request) -> None:
        refusal = access.refusal(request.method, request.headers, request.url.scheme)
        if refusal is not None:
            raise refuse(refusal.status, refusal.message, headers=refusal.headers)

    router = APIRouter(prefix=API_PREFIX, tags=["dreamcore"],
                       dependencies=[Depends(check_access), *(dependencies or [])])

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
        except JobRecordError as error:  # a damaged record found outside a request's own checks
            raise refuse(409, str(error)) from error

    async def json_body(request: Request, required: bool) -> dict[str, Any]:
        raw = bytearray()
        async for chunk in request.stream():  # read no further than the limit, whatever the body's length
            raw += chunk
            if len(raw) > access.max_body_bytes:
                refusal = body_too_large(access.max_body_bytes)
                raise refuse(refusal.status, refusal.message)
        if not raw.strip():
            if required:
                raise refuse(400, 'the request needs a JSON body: {"name": "...", "config": {...}}')
            return {}
        try:
            return parse_json_object(bytes(raw))
        except BadBody as error:
            raise refuse(400, str(error)) from error

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
                problems += await run_in_threadpool(_submission_problems, manager, body["name"], body["config"],
                                                    allowed)
            raise refuse(422, 'the body must be {"name": "...", "config": {...}}', problems)
        name = body["name"]

        def submit() -> Any:  # reads folders and takes the jobs lock: off the event loop
            check_job_name(name)
            return manager.submit(checked_settings(manager, body["config"], name, allowed), name, allowed)

        info = await run_in_threadpool(call, submit)
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
        info = await run_in_threadpool(call, lambda: manager.rerun(name, new_name))
        return JSONResponse(info.to_dict(), status_code=201)

    @router.delete("/jobs/{name}")
    def remove_job(name: str) -> dict[str, Any]:
        call(lambda: manager.remove(name))
        return {"removed": name}

    from dreamcore.jobs.generate_api import GenerateService

    generation = GenerateService(manager, allowed=allowed)  # loads a model at its first request, not here

    @router.post("/generate")
    async def generate(request: Request) -> Any:
        body = await json_body(request, required=True)
        status, answer = await run_in_threadpool(generation.handle, body)
        if status != 200:
            raise refuse(status, answer["detail"]["message"], answer["detail"]["problems"])
        return answer

    return router


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object. Raises BadBody for anything else: invalid JSON, NaN or infinite
    numbers (not JSON), nesting deeper than MAX_JSON_DEPTH, or a value that is not an object."""

    def refuse_constant(name: str) -> Any:
        raise BadBody(f"the request body is not valid JSON: {name} is not a JSON number")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise BadBody(f"the request body is not valid JSON: {text} is too large a number")
        return value

    try:
        body = json.loads(raw, parse_constant=refuse_constant, parse_float=finite)
    except RecursionError as error:
        raise BadBody(f"the request body nests deeper than {MAX_JSON_DEPTH} levels; job settings are flat") from error
    except BadBody:
        raise
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError, or an integer too long to read
        raise BadBody(f"the request body is not valid JSON: {error}") from error
    if _depth(body) > MAX_JSON_DEPTH:
        raise BadBody(f"the request body nests deeper than {MAX_JSON_DEPTH} levels; job settings are flat")
    if not isinstance(body, dict):
        raise BadBody(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (counted without recursion)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def checked_settings(manager: JobManager, values: Any, name: str, allowed: AllowedFolders | None = None
                     ) -> TrainConfig:
    """The submitted ``config`` as a TrainConfig. Raises ConfigError listing every problem at once: unknown
    keys and wrong types, and what the valid keys cannot train with (a missing photo folder, a resolution
    that is not a multiple of 8, ...), checked as the job would run them; with ``allowed``, paths outside
    those folders first (and nothing about them beyond that). A problem that names a refused key is left out:
    it would judge a default, not what was sent, and the refusal already names that key."""
    parsed = parse_settings(values, source="config")
    if not parsed.problems:
        return parsed.config  # submit() checks the rest, as it does for every caller
    also = [problem for problem in manager.problems(parsed.config, name, allowed)
            if not any(re.search(rf"\b{re.escape(key)}\b", problem) for key in parsed.refused)]
    raise ConfigError(parsed.problems + also)


def _submission_problems(manager: JobManager, name: Any, values: Any, allowed: AllowedFolders | None = None
                         ) -> list[str]:
    """Every problem of a job name and its settings, as a list (for an answer that refuses the body anyway)."""
    try:
        check_job_name(name)
    except JobNameError as error:
        return [str(error)]
    try:
        config = checked_settings(manager, values, name, allowed)
    except ConfigError as error:
        return error.problems
    return manager.problems(config, name, allowed)
