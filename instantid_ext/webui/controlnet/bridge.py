"""The one door to sd-webui-controlnet: each concern is a class of its own module, and the
bridge is all of them for the ControlNet this WebUI runs."""

from __future__ import annotations

import logging
import sys
from types import ModuleType

from ...errors import DependencyError
from .access import (
    MIN_CONTROLNET,
    MODULE_NAMES,
    TESTED_CONTROLNET,
    dotted,
    install_hint,
    parse_version,
)
from .face_context import FaceContext
from .model_sharing import ModelSharing
from .nesting import NestedGenerations
from .preprocessor import KeypointPreprocessor
from .unit import UnitSlots

logger = logging.getLogger(__name__)


class ControlNetBridge(KeypointPreprocessor, ModelSharing, UnitSlots, FaceContext, NestedGenerations):
    """The one door to sd-webui-controlnet; get it with :meth:`detect`."""

    @classmethod
    def detect(cls) -> ControlNetBridge:
        """The bridge to the ControlNet this WebUI runs; :class:`DependencyError` if unusable."""
        ec = sys.modules.get(MODULE_NAMES["external_code"])
        if ec is None or not hasattr(ec, "ControlNetUnit"):
            msg = (
                "IdentityNet needs the ControlNet extension, which is not installed or not enabled. "
                f"{install_hint()}."
            )
            raise DependencyError(msg)
        version_module = sys.modules.get(MODULE_NAMES["version"])
        version = parse_version(getattr(version_module, "version_flag", None))
        has_registry = MODULE_NAMES["preprocessors"] in sys.modules
        if (version is not None and version < MIN_CONTROLNET) or (version is None and not has_registry):
            msg = f"ControlNet {dotted(version)} is too old for InstantID's IdentityNet. {install_hint()}."
            raise DependencyError(msg)
        modules: dict[str, ModuleType] = {"external_code": ec}
        for role in ("global_state", "hook"):
            module = sys.modules.get(MODULE_NAMES[role])
            if module is None:
                msg = (
                    f"ControlNet {dotted(version)} is loaded without its '{MODULE_NAMES[role]}' module, "
                    f"so IdentityNet cannot run through it. Reinstall it: {install_hint()}."
                )
                raise DependencyError(msg)
            modules[role] = module
        if version is not None and version > TESTED_CONTROLNET:
            logger.warning(
                "ControlNet %s is newer than the %s InstantID was checked with; report problems with it.",
                dotted(version),
                dotted(TESTED_CONTROLNET),
            )
        return cls(version, modules)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Whether IdentityNet can run through ControlNet, and a sentence for the UI/API."""
        try:
            bridge = cls.detect()
        except DependencyError as err:
            return False, str(err)
        return True, f"ControlNet {bridge.version_text} found: IdentityNet runs through it."
