"""dreamcore inside a WebUI: the callbacks it registers (tab, settings, REST routes).

The WebUI imports this module at start (through ``scripts/dreamcore_tab.py``) and names the callbacks after
this file in its start-up profile, hence a name no host file has. Everything a callback needs is imported
when the callback first runs, so the start itself only pays for registering.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .deps import DependencyReport

logger = logging.getLogger("dreamcore.webui")

SETTINGS_SECTION = ("dreamcore", "DreamBooth (dreamcore)")
OPTION_OUTPUT_DIR = "dreamcore_output_dir"
OPTION_DEFAULT_PRESET = "dreamcore_default_preset"
OPTION_API_FOLDERS = "dreamcore_api_allowed_dirs"
API_FOLDERS_HINT = ("add it under Settings > DreamBooth (dreamcore) > 'Further folders jobs of the REST API may "
                    "use', then restart the WebUI")


class WebUIExtension:
    def __init__(self, extension_root: Path):
        self.extension_root = Path(extension_root)
        self._host: Any = None
        self._controller: Any = None
        self.handlers: Any = None  # the last built tab's handlers (tests drive the tab through them)
        self.dependencies: DependencyReport | None = None

    def register(self) -> None:
        from dreamcore.console import quiet_console
        from modules import script_callbacks

        quiet_console(own_process=False)  # the WebUI's console is its own: only notices dreamcore's work provokes
        script_callbacks.on_ui_settings(self.on_ui_settings)
        script_callbacks.on_ui_tabs(self.on_ui_tabs)
        script_callbacks.on_app_started(self.on_app_started)

    # --- host objects, made on first use (the WebUI's modules are complete only after start-up) -------
    @property
    def host(self) -> Any:
        if self._host is None:
            from .host import WebUIHost

            self._host = WebUIHost()
        return self._host

    def output_root(self) -> Path:
        return Path(self.host.option(OPTION_OUTPUT_DIR, str(self.host.default_output_dir())))

    @property
    def controller(self) -> Any:
        if self._controller is None:
            from .controller import TrainingController

            self._controller = TrainingController(self.host, self.output_root)
        return self._controller

    # --- callbacks -------------------------------------------------------------------------------
    def on_ui_settings(self) -> None:
        from dreamcore.presets import PORTRAIT_PRESET, preset_names
        from modules import shared

        def option(default: Any, label: str, **extra: Any) -> Any:
            return shared.OptionInfo(default, label, section=SETTINGS_SECTION, category_id="training", **extra)

        import gradio as gr

        shared.opts.add_option(OPTION_OUTPUT_DIR, option(
            str(self.host.default_output_dir()), "Folder for dreamcore's training jobs (photos, samples, models)"))
        shared.opts.add_option(OPTION_DEFAULT_PRESET, option(
            PORTRAIT_PRESET, "Preset the DreamBooth tab starts with", component=gr.Dropdown,
            component_args={"choices": preset_names()}))
        shared.opts.add_option(OPTION_API_FOLDERS, option(
            "", "Further folders jobs of the REST API may use (photos, base models), separated by ';'; the output "
                "folder and the WebUI's model folders always are (applies after a restart)"))

    def on_ui_tabs(self) -> list[tuple[Any, str, str]]:
        """The tab is always returned: if dreamcore cannot run, it says why and what to do."""
        from dreamcore.presets import PORTRAIT_PRESET, preset_names

        from .deps import check_dependencies
        from .tab import TAB_ELEM_ID, TAB_TITLE, build_error_tab, build_tab, error_markdown

        try:
            self.dependencies = check_dependencies(self.extension_root)
        except (OSError, ValueError) as error:  # pyproject.toml missing or damaged: the folder is incomplete
            logger.error("dreamcore: %s", error)
            return [(build_error_tab(f"**dreamcore's extension folder is incomplete:** {error}\n\nUpdate or "
                                     "reinstall dreamcore from the Extensions tab."), TAB_TITLE, TAB_ELEM_ID)]
        if not self.dependencies.ok:
            logger.warning("dreamcore: %s", self.dependencies.markdown())
            return [(build_error_tab(self.dependencies.markdown()), TAB_TITLE, TAB_ELEM_ID)]
        try:
            preset = self.host.option(OPTION_DEFAULT_PRESET, PORTRAIT_PRESET)
            if preset not in preset_names():
                preset = PORTRAIT_PRESET
            blocks, self.handlers = build_tab(self.controller, preset, notice=self.dependencies.markdown())
        except Exception as error:  # a bug or a gradio difference must not remove the tab: show it instead
            logger.exception("dreamcore: the DreamBooth tab could not be built")
            return [(build_error_tab(error_markdown(error)), TAB_TITLE, TAB_ELEM_ID)]
        return [(blocks, TAB_TITLE, TAB_ELEM_ID)]

    def on_app_started(self, demo: Any, app: Any) -> None:
        """Mount the jobs REST API (``/dreamcore/v1/...``) on the WebUI's FastAPI app, behind the WebUI's own
        API login and address, with the output and model folders allowed."""
        if self.dependencies is not None and not self.dependencies.ok:
            return
        from modules import shared

        mount_job_routes(app, self.controller.manager(), access=webui_api_access(shared.cmd_opts),
                         allowed=self.api_folders())

    def api_folders(self) -> Any:
        """The folders jobs of the REST API may use: dreamcore's output folder (photos uploaded in the tab
        live there), the WebUI's model folders, and those listed in our settings."""
        from dreamcore.jobs.allowed import AllowedFolders
        from modules import paths, shared

        listed = str(self.host.option(OPTION_API_FOLDERS, "")).replace("\n", ";").split(";")
        folders = [self.output_root(), Path(paths.models_path), self.host.checkpoint_dir(), self.host.lora_dir(),
                   *(Path(folder.strip()) for folder in listed if folder.strip())]
        vae_dir = getattr(shared.cmd_opts, "vae_dir", None)
        if vae_dir:
            folders.append(Path(vae_dir))
        return AllowedFolders(folders, API_FOLDERS_HINT)


def webui_api_access(cmd_opts: Any) -> Any:
    """The REST API's request checks inside a WebUI, from its command line: the addresses it listens on
    (--listen, --server-name), the origins its CORS settings allow, and its own API login: AUTOMATIC1111 and
    Forge ``--api-auth user:password``, SD.Next ``--auth`` / ``--auth-file``, asked for as HTTP Basic, as the
    WebUI asks for it on its /sdapi routes. Without such a login the routes have none either."""
    from dreamcore.jobs.access import WILDCARD_ADDRESSES, ApiAccess, machine_names, parse_basic_credentials

    server_name = (getattr(cmd_opts, "server_name", None) or "").strip().lower()
    any_address = bool(getattr(cmd_opts, "listen", False)) or server_name in WILDCARD_ADDRESSES - {""}
    names = set(machine_names()) if any_address else set()
    if server_name and server_name not in WILDCARD_ADDRESSES:
        names.add(server_name.strip("[]"))
    origins = getattr(cmd_opts, "cors_allow_origins", None) or getattr(cmd_opts, "cors_origins", None) or ""
    origin_pattern = getattr(cmd_opts, "cors_allow_origins_regex", None) or getattr(cmd_opts, "cors_regex", None)
    credentials, hint = None, ""
    api_auth = getattr(cmd_opts, "api_auth", None)
    if api_auth:
        credentials, hint = parse_basic_credentials(api_auth), "log in with the WebUI's --api-auth user and password"
    elif getattr(cmd_opts, "auth", None) or getattr(cmd_opts, "auth_file", None):
        credentials, hint = parse_basic_credentials(getattr(cmd_opts, "auth", None) or ""), \
            "log in with the WebUI's --auth user and password"
        auth_file = getattr(cmd_opts, "auth_file", None)
        if auth_file:
            try:
                credentials.update(parse_basic_credentials(Path(auth_file).read_text(encoding="utf-8")))
            except OSError as error:  # the WebUI itself fails on it too; our routes then let no one in
                logger.error("dreamcore: cannot read the WebUI's --auth-file %s (%s); the REST API refuses every "
                             "request until it can", auth_file, error)
    return ApiAccess(host_names=frozenset(names), any_address=any_address,
                     extra_origins=frozenset(o.strip().lower().rstrip("/") for o in origins.split(",") if o.strip()),
                     extra_origin_pattern=origin_pattern or None, basic_credentials=credentials,
                     login_hint=f"{hint}, as HTTP Basic authentication" if hint else "")


def mount_job_routes(app: Any, manager: Any, access: Any = None, allowed: Any = None) -> bool:
    """Include dreamcore.jobs' REST router in a FastAPI app, with its request checks (``access``) and the
    folders jobs may use (``allowed``); False (logged) when that module is absent."""
    try:
        from dreamcore.jobs import api
    except ImportError as error:
        logger.warning("dreamcore: REST API not mounted (%s)", error)
        return False
    app.include_router(api.create_router(manager, access=access, allowed=allowed))
    return True

