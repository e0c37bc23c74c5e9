"""Argument values ↔ what each component shows, and the infotext readers built on that.

The model speaks in field values ("index", ``[1.0, 0.5]``, "front"); components show labels
and text ("1, 0.5", "Front", "None"). :func:`ui_value` is the one translation, so defaults,
pasted infotext and refreshed lists all agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...args import INFOTEXT_PREFIX, InstantIDArgs, infotext_labels
from ...method.pose_presets import PRESETS, get_preset
from ...models.discovery import AUTO
from .env import UiEnv

#: The identity dropdown's "use the photos" entry (A1111 dropdowns spell "nothing" this way).
NO_IDENTITY = "None"


def known_name(name: str, available: Sequence[str]) -> str | None:
    """``name`` as spelled in ``available`` (case-insensitive), or None."""
    if name in available:
        return name
    lowered = name.lower()
    return next((item for item in available if item.lower() == lowered), None)


def with_auto(names: Sequence[str]) -> list[str]:
    """A model list as the dropdowns show it: "Auto" first, once."""
    return [AUTO, *(name for name in names if name != AUTO)]


def ui_value(name: str, value: Any, env: UiEnv | None = None) -> Any:
    """The component value that stands for ``value`` of field ``name``.

    With ``env``, a saved identity or model file that is not available here becomes the
    default ("None" / "Auto"), so a pasted infotext from another install still runs.
    """
    if name == "image_weights":
        return ", ".join(f"{w:g}" for w in value or [])
    if name == "identity":
        if not value:
            return NO_IDENTITY
        if env is not None:
            return known_name(value, env.identity_names()) or NO_IDENTITY
        return value
    if name == "pose_preset":
        return PRESETS[get_preset(value).name].label if value else value
    if name in ("ip_adapter_model", "identitynet_model"):
        if env is not None and value != AUTO:
            names = env.adapter_names() if name == "ip_adapter_model" else env.identitynet_names()
            return known_name(value, names) or AUTO
        return value
    return value


def default_value(name: str) -> Any:
    """The component default for a field: the model's default in UI form."""
    return ui_value(name, InstantIDArgs.__fields__[name].get_default())


@dataclass(frozen=True)
class InfotextReader:
    """An ``infotext_fields`` entry for one field: called with the pasted parameters.

    InstantID writes only non-default values, so when "InstantID" is in the parameters a
    missing key means the default; without it the panel is switched off and nothing else is
    touched (``None`` = leave as is). Values are read with :meth:`InstantIDArgs.from_infotext`
    (ranges such as "ID range: 0.2-0.8" included) and returned as the component shows them.

    Readers compare equal by field, so the txt2img and img2img panels' readers match in the
    WebUI's "Send to img2img", which copies the components whose reader is listed in
    ``paste_field_names``.
    """

    name: str
    env: UiEnv | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str | None:
        """The infotext key, if the field has one (``images`` and ``pose_image`` do not)."""
        return infotext_labels().get(self.name)

    def __call__(self, params: Mapping[str, Any]) -> Any:
        if INFOTEXT_PREFIX not in params:
            return False if self.name == "enabled" else None
        if self.key is None:
            return None
        updates = InstantIDArgs.from_infotext(params)
        if self.name == "enabled":
            return bool(updates.get("enabled", True))
        if self.name in updates:
            return ui_value(self.name, updates[self.name], self.env)
        return default_value(self.name)
