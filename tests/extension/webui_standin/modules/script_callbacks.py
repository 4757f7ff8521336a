"""Callback registries: extensions register with ``on_*``; the host calls the ``*_callback`` runners."""

from __future__ import annotations

from typing import Any, Callable

_ui_tabs: list[Callable[[], Any]] = []
_ui_settings: list[Callable[[], None]] = []
_app_started: list[Callable[[Any, Any], None]] = []


def on_ui_tabs(callback: Callable[[], Any]) -> None:
    _ui_tabs.append(callback)


def on_ui_settings(callback: Callable[[], None]) -> None:
    _ui_settings.append(callback)


def on_app_started(callback: Callable[[Any, Any], None]) -> None:
    _app_started.append(callback)


def clear_callbacks() -> None:
    """What "Reload UI" does before it imports the scripts again."""
    _ui_tabs.clear()
    _ui_settings.clear()
    _app_started.clear()


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
