"""Helpers of the job runner tests (a module of its own: test files import it by this unique name)."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from dreamcore.jobs import JobInfo, JobManager
from dreamcore.jobs.folder import JobFolder

FAKE_CHILD = Path(__file__).with_name("fake_child.py")
LOCAL = "http://127.0.0.1"  # TestClient's base URL: a Host the API answers to (its default, testserver, is not)


def api_app(manager: JobManager, *allowed: Path, **router_options):
    """A FastAPI app with the job routes over ``manager``; jobs may use files under ``allowed``."""
    from fastapi import FastAPI

    from dreamcore.jobs.allowed import AllowedFolders
    from dreamcore.jobs.api import create_router

    app = FastAPI()
    app.include_router(create_router(manager, allowed=AllowedFolders(allowed or [manager.root]), **router_options))
    return app


def make_photos(folder: Path, count: int = 3, size: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        colour = (40 * index % 256, 90, 200 - 30 * index)
        image = Image.new("RGB", (size, size), colour)
        for x in range(size // 4, size // 2):  # a square, so photos differ in more than colour
            for y in range(size // 4, size // 2 + index * 4):
                image.putpixel((x, y), (255, 255, 255))
        image.save(folder / f"photo-{index}.png")
    return folder


def fake_child_command(folder: JobFolder, attempt: int) -> list[str]:
    return [sys.executable, str(FAKE_CHILD), str(folder.path), str(attempt)]


def wait_for(manager: JobManager, name: str, condition: Callable[[JobInfo], bool], timeout: float = 60.0,
             what: str = "") -> JobInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = manager.get(name)
        if condition(info):
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"job {name!r} never reached {what or 'the condition'}: status {info.status}, "
                                 f"step {info.step}, error {info.error!r}\nlog:\n" + "\n".join(info.log_tail))
        time.sleep(0.05)


def wait_until_final(manager: JobManager, name: str, timeout: float = 60.0) -> JobInfo:
    return wait_for(manager, name, lambda i: i.status in ("completed", "failed", "cancelled"), timeout, "an end")


@contextlib.contextmanager
def live_server(app) -> Iterator[tuple[str, int]]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields (host, port)."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=30)
