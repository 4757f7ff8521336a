"""dreamcore's WebUI glue package (gradio and the WebUI's ``modules`` live here, never in ``dreamcore``).

``scripts/dreamcore_tab.py`` loads this folder under the unique module name ``dreamcore_webui`` and calls
``register_with_webui``. Importing it is cheap: the tab, the job runner and gradio load on first use.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

logger = logging.getLogger("dreamcore.webui")


def register_with_webui(extension_root: str | Path) -> Any:
    """Import dreamcore now (the extension root is on sys.path only during this import) and register the
    WebUI callbacks. Returns the WebUIExtension, or None when dreamcore itself cannot be imported (then
    the tab shows that error instead of vanishing)."""
    try:
        import dreamcore  # noqa: F401  later submodule imports go through dreamcore.__path__, not sys.path

        from .dreamcore_callbacks import WebUIExtension
    except ImportError as error:
        logger.exception("dreamcore: cannot import the dreamcore package")
        _register_problem_tab(
            f"**dreamcore cannot be imported:** `{error}`\n\nThe extension folder {extension_root} is incomplete "
            "or damaged: update or reinstall dreamcore from the Extensions tab.\n\n```\n"
            + "".join(traceback.format_exception(type(error), error, error.__traceback__))[-3000:] + "\n```")
        return None
    extension = WebUIExtension(Path(extension_root))
    extension.register()
    return extension


def _register_problem_tab(markdown: str) -> None:
    from modules import script_callbacks

    def problem_tab() -> list[tuple[Any, str, str]]:
        import gradio as gr

        with gr.Blocks(analytics_enabled=False) as blocks:
            gr.Markdown(markdown, elem_id="dreamcore_problem")
        return [(blocks, "DreamBooth", "dreamcore_tab")]

    script_callbacks.on_ui_tabs(problem_tab)
