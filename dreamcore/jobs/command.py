"""``python -m dreamcore jobs ...``: the training queue from the command line.

    python -m dreamcore jobs submit anna --config anna.json     # queue a job (flags override the file)
    python -m dreamcore jobs run                                # run the queue here until it is empty
    python -m dreamcore jobs run --gpus 0,1                     # ... one job on each of these GPUs at once
    python -m dreamcore jobs list | show NAME | cancel NAME | resume NAME | rerun NAME | remove NAME
    python -m dreamcore jobs serve --port 7862                  # the REST API alone (no gradio)
    python -m dreamcore jobs serve --host 0.0.0.0 --allow-dir ~/photos   # on the network: a token is printed

The queue lives in folders (``--output``/jobs, the same place the app and the WebUI tab use), so these
commands see and change the jobs of a running app too; only one process runs the queue at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

HELP = "Queue training jobs that run in child processes; list, cancel, resume, re-run them; serve the REST API."
DEFAULT_OUTPUT = "dreamcore-output"
TOKEN_VARIABLE = "DREAMCORE_API_TOKEN"


def jobs_root(output: str | Path) -> Path:
    """Where the jobs of an output folder live (shared with ``python -m dreamcore ui --output``)."""
    return Path(output) / "jobs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dreamcore.config import add_config_arguments

    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help=f"Output folder; jobs live in its jobs/ folder (default: {DEFAULT_OUTPUT}).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="List the jobs: status, progress, queue position.")
    show = actions.add_parser("show", help="Show one job in full (--json for the REST API's JSON).")
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    submit = actions.add_parser("submit", help="Queue a job from a settings file and/or flags.")
    submit.add_argument("name", help="Job name: letters, digits, '.', '_', '-' (it names the job's folder).")
    submit.add_argument("--wait", action="store_true",
                        help="Also run the queue here until this job ends (unless another process runs it).")
    add_config_arguments(submit)
    for action, help_text in (("cancel", "Cancel a queued job, or stop a running one (it saves a resumable state)."),
                              ("resume", "Queue a cancelled or failed job again; it continues from its saved state."),
                              ("remove", "Delete a job that is not running, outputs included.")):
        actions.add_parser(action, help=help_text).add_argument("name")
    rerun = actions.add_parser("rerun", help="Queue a fresh run of a job's settings under a new name.")
    rerun.add_argument("name")
    rerun.add_argument("--as", dest="new_name", default=None, help="Name of the new job (default: NAME-2, ...).")
    run_queue = actions.add_parser("run", help="Run the queue in this process until it is empty; Ctrl+C stops "
                                               "the running job cleanly.")
    run_queue.add_argument("--forever", action="store_true", help="Keep waiting for new jobs.")
    serve = actions.add_parser("serve", help="Serve the REST API (/dreamcore/v1/) and run the queue, without a UI.")
    serve.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: this computer only).")
    serve.add_argument("--port", type=int, default=7862)
    add_server_arguments(serve)
    for parser_with_queue in (run_queue, serve):
        parser_with_queue.add_argument(
            "--gpus", default=None, metavar="IDS",
            help="Run one job on each of these CUDA devices at once, e.g. 0,1 (each job sees only its GPU). "
                 "Default: one job at a time on the GPUs this process sees.")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The REST API's login and folders (``jobs serve`` and ``ui``)."""
    parser.add_argument(
        "--token", default=os.environ.get(TOKEN_VARIABLE) or None,
        help="Token the REST API requires, sent as 'Authorization: Bearer TOKEN' (default: the "
             f"{TOKEN_VARIABLE} environment variable). Listening beyond this computer (--host) without one, "
             "a new token is made and printed at start.")
    parser.add_argument(
        "--allow-dir", action="append", default=[], metavar="FOLDER",
        help="A folder whose files jobs submitted through the REST API may use (photos, base models, class "
             "images); repeat for several. The output folder is always allowed; any other path is refused.")
    parser.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME",
        help="A further host name the REST API answers to (e.g. a reverse proxy's name); repeatable. "
             "localhost and the address it listens on always work.")


def api_security(args: argparse.Namespace, output: Path) -> tuple[Any, Any]:
    """The REST API's (ApiAccess, AllowedFolders) from the command line; prints the token it made, if any.
    Raises ValueError for a folder that is not one."""
    from dreamcore.jobs.access import ApiAccess, needs_token, new_token
    from dreamcore.jobs.allowed import AllowedFolders

    missing = [folder for folder in args.allow_dir if not Path(folder).expanduser().is_dir()]
    if missing:
        raise ValueError(f"--allow-dir: {', '.join(missing)} is not a folder; give existing folders.")
    token = args.token
    if token is None and needs_token(args.host):
        token = new_token()
        print(f"REST API token (send it as 'Authorization: Bearer <token>'): {token}", flush=True)
    access = ApiAccess.for_listener(args.host, token, tuple(args.allow_host))
    return access, AllowedFolders([output, *args.allow_dir], "start the server with --allow-dir FOLDER")


def run(args: argparse.Namespace) -> int:
    from dreamcore.config import ConfigError, config_from_arguments
    from dreamcore.jobs import JobError, JobManager, JobNameError

    root = jobs_root(args.output)
    try:
        if args.action in ("run", "serve"):
            return _run_queue(root, args)
        manager = JobManager(root, run_queue=args.action == "submit" and args.wait)
        if args.action == "list":
            _print_table(manager.list())
        elif args.action == "show":
            info = manager.get(args.name)
            print(json.dumps(info.to_dict(), indent=2) if args.json else _describe(info))
        elif args.action == "submit":
            info = manager.submit(config_from_arguments(args), args.name)
            print(f"queued {info.name} (folder {info.folder})")
            if args.wait:
                return _follow(manager, info.name)
        elif args.action == "cancel":
            info = manager.cancel(args.name)
            print(f"{info.name}: {'stop requested' if info.status == 'running' else info.status}")
        elif args.action == "resume":
            print(f"{manager.resume(args.name).name}: queued again")
        elif args.action == "rerun":
            print(f"queued {manager.rerun(args.name, args.new_name).name}")
        elif args.action == "remove":
            manager.remove(args.name)
            print(f"removed {args.name}")
    except (ConfigError, JobError, JobNameError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _run_queue(root: Path, args: argparse.Namespace) -> int:
    from dreamcore.jobs import JobManager

    security = None
    if args.action == "serve":
        try:
            security = api_security(args, Path(args.output))
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    try:
        manager = JobManager(root, gpus=args.gpus.split(",") if args.gpus else None)
    except ValueError as error:
        print(f"error: --{error}", file=sys.stderr)
        return 2
    if not manager.runs_queue:
        print(f"error: another process already runs the queue in {root}; use 'jobs list' to watch it.",
              file=sys.stderr)
        manager.shutdown()
        return 1
    if security is not None:
        return _serve(manager, args.host, args.port, *security)
    try:
        print(f"running the queue in {root} (Ctrl+C stops the running job and saves its state)")
        seen: dict[str, tuple] = {}
        while True:
            infos = manager.list()
            for info in infos:
                state = (info.status, info.step)
                if seen.get(info.name) != state:
                    seen[info.name] = state
                    print(_one_line(info), flush=True)
            if not args.forever and not any(i.status in ("queued", "running") for i in infos):
                return 0 if all(i.status == "completed" for i in infos if i.name in seen) else 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping the running job (it saves a resumable state) ...", flush=True)
        return 130
    finally:
        manager.shutdown(stop_running=True, timeout=600)


def _serve(manager, host: str, port: int, access, allowed) -> int:
    import uvicorn
    from fastapi import FastAPI

    from dreamcore.jobs.api import create_router

    print(f"jobs may use files in: {', '.join(str(folder) for folder in allowed.folders)}", flush=True)
    app = FastAPI(title="dreamcore jobs")
    app.include_router(create_router(manager, access=access, allowed=allowed))
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        manager.shutdown(stop_running=True, timeout=600)
    return 0


def _follow(manager, name: str) -> int:
    last = None
    try:
        while True:
            info = manager.get(name)
            if (info.status, info.step) != last:
                last = (info.status, info.step)
                print(_one_line(info), flush=True)
            if info.status in ("completed", "failed", "cancelled"):
                if info.status != "completed":
                    print(_describe(info), file=sys.stderr)
                return 0 if info.status == "completed" else 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        print("stopping the job (it saves a resumable state) ...", flush=True)
        return 130
    finally:
        manager.shutdown(stop_running=True, timeout=600)


def _one_line(info) -> str:
    text = f"{info.name:<24} {info.status:<10}"
    if info.total_steps:
        text += f" step {info.step}/{info.total_steps}"
    if info.loss is not None:
        text += f" loss {info.loss:.4f}"
    if info.status == "running" and info.eta_seconds:
        text += f" eta {info.eta_seconds:.0f}s"
    if info.queue_position:
        text += f" (#{info.queue_position} in queue)"
    if info.error:
        text += f"  {info.error}"
    return text


def _print_table(infos) -> None:
    if not infos:
        print("no jobs")
    for info in infos:
        print(_one_line(info))


def _describe(info) -> str:
    lines = [_one_line(info), f"folder: {info.folder}"]
    if info.family:
        from dreamcore.families import FAMILIES

        # a family this version does not know (a job of a newer one) is shown by its name
        lines.append(f"model family: {FAMILIES[info.family].label if info.family in FAMILIES else info.family}")
    if info.advice:
        lines.append(f"advice: {info.advice}")
    for key, path in info.outputs.items():
        lines.append(f"{key}: {path}")
    if info.samples:
        step, paths = info.samples[-1]
        lines.append(f"latest samples (step {step}): {', '.join(paths)}")
    if info.log_tail:
        lines += ["log:", *("  " + line for line in info.log_tail[-15:])]
    return "\n".join(lines)
