"""Test-wide guards: no model hub, no network beyond this machine, opt-in GPU/slow tests."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run fastest on one thread; two OpenMP threads on a busy 2-core machine spin against each other
# (measured here: 0.15 s vs 0.5 s per tiny training step). Child processes inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Without a GPU, Triton kernels (the fused optimizer step) run in Triton's CPU interpreter. Triton reads this
# when it is first imported (diffusers and bitsandbytes import it), so it is set before anything else loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-gpu", action="store_true", help="run tests marked gpu (needs CUDA)")
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker, option in (("gpu", "--run-gpu"), ("slow", "--run-slow")):
        if config.getoption(option):
            continue
        skip = pytest.mark.skip(reason=f"opt-in: pass {option}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


def _is_local(address: object) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) else None
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that connects anywhere but this machine (a hub download would)."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guarded(method):
        def connect(self, address):
            if not _is_local(address):
                raise AssertionError(f"test tried to open a network connection to {address!r}")
            return method(self, address)

        return connect

    monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD1 model as a diffusers folder, built once per test run (tests read it, never write it)."""
    from dreamcore.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "sd1", family="sd1", fmt="diffusers")
