"""Reaching sd-webui-controlnet: its version, its modules (only through ``sys.modules``), and
one readable error for a surprise inside it."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, Protocol

from ...errors import DependencyError, InstantIDError

logger = logging.getLogger(__name__)


Version = tuple[int, int, int]


MIN_CONTROLNET: Version = (1, 1, 444)


#: Newest release checked against; newer ones are used with a warning.
TESTED_CONTROLNET: Version = (1, 1, 455)


_INSTALL = (
    "Install sd-webui-controlnet {min} or newer from the Extensions tab (Available → ControlNet, "
    "or 'Install from URL' https://github.com/Mikubill/sd-webui-controlnet) and restart the WebUI"
)


MODULE_NAMES = {
    "version": "scripts.controlnet_version",
    "external_code": "scripts.external_code",
    "global_state": "scripts.global_state",
    "hook": "scripts.hook",
    "preprocessors": "scripts.supported_preprocessor",
}


#: What a mismatch with ControlNet's internals looks like; turned into one DependencyError.
INTERNAL_ERRORS = (AttributeError, KeyError, IndexError, TypeError, ValueError, AssertionError)


class Owner(Protocol):
    """Who answers for a change (a job): ``own`` records how to undo it."""

    def own(self, what: str, undo: Callable[[], None]) -> None: ...


def dotted(version: Version | None) -> str:
    return "of unknown version" if version is None else ".".join(map(str, version))


def install_hint() -> str:
    return _INSTALL.format(min=dotted(MIN_CONTROLNET))


def parse_version(flag: object) -> Version | None:
    """``(1, 1, 455)`` from ControlNet's ``version_flag`` ("v1.1.455"), or None."""
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", str(flag or ""))
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]))


class ControlNetAccess:
    """ControlNet's modules as one job sees them, and the checks every concern shares."""

    def __init__(self, version: Version | None, modules: dict[str, ModuleType]) -> None:
        self.version = version
        self._ec = modules["external_code"]
        self._gs = modules["global_state"]
        self._hook = modules["hook"]

    @property
    def version_text(self) -> str:
        return dotted(self.version)

    @contextlib.contextmanager
    def _internals(self, action: str) -> Iterator[None]:
        """Turn a surprise inside ControlNet into one readable :class:`DependencyError`."""
        try:
            yield
        except InstantIDError:
            raise
        except INTERNAL_ERRORS as err:
            msg = (
                f"Could not {action} in ControlNet {self.version_text} ({type(err).__name__}: {err}). "
                f"InstantID works with sd-webui-controlnet {dotted(MIN_CONTROLNET)} to "
                f"{dotted(TESTED_CONTROLNET)}; update both extensions, and report this if it persists."
            )
            raise DependencyError(msg) from err

    def _cn_script(self, p: Any) -> Any:
        script = self._ec.find_cn_script(getattr(p, "scripts", None))
        if script is None:
            msg = (
                f"ControlNet {self.version_text} is installed but not active for this generation "
                "(was it disabled in the Extensions tab?), so IdentityNet cannot run; enable it and restart."
            )
            raise DependencyError(msg)
        return script

    def has_script(self, p: Any) -> bool:
        """Whether ControlNet runs in this generation (a nested one may leave it out)."""
        return self._ec.find_cn_script(getattr(p, "scripts", None)) is not None

    def script_of(self, p: Any) -> Any:
        """ControlNet's script object in ``p``'s runner, or None."""
        return self._ec.find_cn_script(getattr(p, "scripts", None))
