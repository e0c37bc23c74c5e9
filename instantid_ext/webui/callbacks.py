"""Registration of the extension's WebUI callbacks, run each time the script file loads.

The WebUI clears callbacks and re-executes ``scripts/*.py`` on reload while this package
stays imported, so registration is a plain function called from the script file, never a
side effect of importing this package.
"""

from __future__ import annotations

import logging
from typing import Any

from modules import script_callbacks

from .. import __version__
from ..job import lifecycle as job
from . import host, settings, xyz
from .services import controlnet_status, face_keypoints_for_controlnet, remove_legacy_links, resources

logger = logging.getLogger("instantid_ext")


def configure_logging() -> None:
    """One ``[InstantID]`` console handler (the WebUI configures logging only on request)."""
    if any(getattr(h, "_instantid", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[InstantID] %(levelname)s: %(message)s"))
    handler._instantid = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False
    level = str(host.cmd_opt("instantid_loglevel", "INFO")).upper()
    logger.setLevel(getattr(logging, level, logging.INFO))


def on_script_unloaded() -> None:
    """The WebUI reloads its scripts: undo whatever generation is still open."""
    closed = job.close_all()
    if closed:
        logger.warning("Closed %d InstantID generation(s) still open when the scripts were reloaded", closed)


def api_info() -> dict[str, Any]:
    unsupported = host.forge_message()
    ok, message = (False, unsupported) if unsupported else controlnet_status()
    return {
        "version": __version__,
        "webui_version": host.webui_version(),
        "controlnet": {"available": ok, "message": message},
    }


def on_app_started(demo: Any, app: Any) -> None:
    from .api import register_routes

    register_routes(
        app, resources, api_info, dependencies=host.api_dependencies(), host_problem=host.forge_message
    )
    remove_legacy_links()


def register_controlnet_preprocessor() -> None:
    """Add "InstantID keypoints" to ControlNet's preprocessor list when ControlNet is there."""
    from ..errors import DependencyError
    from .controlnet import ControlNetBridge

    try:
        bridge = ControlNetBridge.detect()
    except DependencyError:
        return
    bridge.register_preprocessor(face_keypoints_for_controlnet)


_REPORTED_HOST: list[str] = []


def report_unsupported_host() -> None:
    """Say once per process, at load, that Forge and its forks are not supported (yet)."""
    message = host.forge_message()
    if message and message not in _REPORTED_HOST:
        _REPORTED_HOST.append(message)
        logger.error("%s", message)


def register_callbacks() -> None:
    configure_logging()
    report_unsupported_host()
    host.use_webui_hash_cache()
    script_callbacks.on_script_unloaded(on_script_unloaded)
    script_callbacks.on_app_started(on_app_started)
    script_callbacks.on_ui_settings(settings.add_settings)
    script_callbacks.on_before_ui(register_controlnet_preprocessor)
    script_callbacks.on_before_ui(xyz.register_axes)  # the X/Y/Z plot is loaded by then
    register_controlnet_preprocessor()
