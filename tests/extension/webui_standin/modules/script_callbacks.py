"""Callback registries: extensions register with ``on_*``; the host calls the ``*_callback`` runners."""

from __future__ import annotations

import sys
from typing import Any, Callable

_ui_tabs: list[Callable[[], Any]] = []
_ui_settings: list[Callable[[], None]] = []
_app_started: list[Callable[[Any, Any], None]] = []
# Stand-in only: (kind, file that registered it). The host names each callback after that file in its
# start-up profile, so tests can check what the profile shows.
registered_from: list[tuple[str, str]] = []


def _register(kind: str, registry: list, callback: Callable[..., Any]) -> None:
    registry.append(callback)
    registered_from.append((kind, sys._getframe(2).f_code.co_filename))  # the caller of on_<kind>


def on_ui_tabs(callback: Callable[[], Any]) -> None:
    _register("ui_tabs", _ui_tabs, callback)


def on_ui_settings(callback: Callable[[], None]) -> None:
    _register("ui_settings", _ui_settings, callback)


def on_app_started(callback: Callable[[Any, Any], None]) -> None:
    _register("app_started", _app_started, callback)


def clear_callbacks() -> None:
    """What "Reload UI" does before it imports the scripts again."""
    _ui_tabs.clear()
    _ui_settings.clear()
    _app_started.clear()
    registered_from.clear()


def ui_tabs_callback() -> list[tuple[Any, str, str]]:
    tabs: list[tuple[Any, str, str]] = []
    for callback in _ui_tabs:
        tabs.extend(callback() or [])
    return tabs


def ui_settings_callback() -> None:
    for callback in _ui_settings:
        callback()


def app_started_callback(demo: Any, app: Any) -> None:
    for callback in _app_started:
        callback(demo, app)
