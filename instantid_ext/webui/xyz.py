"""InstantID axes for the WebUI's built-in "X/Y/Z plot" script, and what they do to a job.

The X/Y/Z plot copies ``p`` for every grid cell (a shallow ``copy(p)``) and calls each axis'
``apply(pc, value, values)`` on the copy before ``process_images(pc)``. Our axes do not touch
the panel's arguments (``pc.script_args`` is shared by all cells): they record the value in
``pc.instantid_overrides`` (field name → value), which :func:`job_args` merges into the panel
arguments, with the usual validation, when the script's ``before_process`` runs for that cell.

With the panel switched off, the "Saved identity" axis switches InstantID on (a saved
identity is a complete face source); the other axes only change an enabled panel, so with
the panel off they log a warning and change nothing.

The plot's module is the one the WebUI loaded under the bare name ``xyz_grid.py``; it is found
through ``modules.scripts.scripts_data``, never imported by path (that would be a second copy
whose option list the UI never reads).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from ..args import InstantIDArgs, is_enabled
from ..args.choices import is_no_identity
from ..args.ranges import field_range
from ..errors import InvalidInputError
from ..method.pose_presets import PRESETS, get_preset
from . import host, services

logger = logging.getLogger(__name__)

#: The attribute of a processing object that holds one grid cell's overrides.
OVERRIDES_ATTR = "instantid_overrides"
#: Names the WebUI gives the X/Y/Z plot's module (script file loader; 1.6–1.10 and a package import).
XYZ_MODULE_NAMES = frozenset({"xyz_grid.py", "scripts.xyz_grid"})
#: How "no saved identity" is written on the identity axis (as A1111's own "None" choices).
NO_IDENTITY = "None"

_LABEL_PREFIX = "[InstantID] "
#: Number axes: label → argument field (the range comes from the field).
_NUMBER_AXES: dict[str, str] = {
    "ID weight": "id_weight",
    "IdentityNet strength": "control_weight",
    "ID start": "id_start",
    "ID end": "id_end",
}
IDENTITY_LABEL = _LABEL_PREFIX + "Saved identity"
PRESET_LABEL = _LABEL_PREFIX + "Pose preset"
#: Every label we add, in the order they appear in the plot's list.
AXIS_LABELS: tuple[str, ...] = (
    *(_LABEL_PREFIX + name for name in _NUMBER_AXES),
    IDENTITY_LABEL,
    PRESET_LABEL,
)


# -- registration ---------------------------------------------------------------------------------
def find_xyz_module() -> ModuleType | None:
    """The X/Y/Z plot's loaded module, or None (a WebUI without it, or not loaded yet)."""
    from modules import scripts

    for data in getattr(scripts, "scripts_data", ()):
        module = getattr(data, "module", None)
        if getattr(data.script_class, "__module__", None) in XYZ_MODULE_NAMES and module is not None:
            return module
    return None


def register_axes() -> int:
    """Add our axes to the plot's option list, each only if its label is not there yet.

    Called before every UI build: the WebUI may or may not have reloaded the plot's module
    (a reload starts a fresh list), so the labels already present decide. Returns how many
    axes were added.
    """
    xyz = find_xyz_module()
    if xyz is None or not hasattr(xyz, "axis_options") or not hasattr(xyz, "AxisOption"):
        logger.debug("No X/Y/Z plot script found; its InstantID axes are not added")
        return 0
    present = {getattr(option, "label", None) for option in xyz.axis_options}
    added = [axis for axis in build_axes(xyz.AxisOption) if axis.label not in present]
    xyz.axis_options.extend(added)
    return len(added)


def build_axes(axis_option: Callable[..., Any]) -> list[Any]:
    """Our axes as ``AxisOption(label, type, apply, confirm=..., choices=...)`` (1.6–1.10 signature).

    Number axes keep the type ``float`` so the plot expands ranges ("0.2-1.0 [5]") for them.
    """
    axes = [
        axis_option(_LABEL_PREFIX + name, float, apply_override(field), confirm=confirm_range(name, field))
        for name, field in _NUMBER_AXES.items()
    ]
    axes.append(
        axis_option(
            IDENTITY_LABEL,
            _text,
            apply_override("identity"),
            confirm=confirm_identities,
            choices=identity_choices,
        )
    )
    axes.append(
        axis_option(
            PRESET_LABEL,
            _text,
            apply_override("pose_preset", pose_source="preset"),
            confirm=confirm_presets,
            choices=preset_choices,
        )
    )
    return axes


# -- the axes' functions -----------------------------------------------------------------------------
def _text(value: object) -> str:
    return str(value).strip()


def apply_override(field: str, **also: object) -> Callable[[Any, Any, Any], None]:
    """An axis ``apply``: set ``field`` (and ``also``) in this cell's overrides.

    A new dict each time, as the cell's ``p`` is a shallow copy that would otherwise share the
    dict with the other cells; ``extra_generation_params`` is unshared for the same reason, so
    one cell's InstantID infotext never shows in the next.
    """

    def apply(p: Any, value: Any, values: Any) -> None:
        p.instantid_overrides = {**overrides_of(p), field: value, **also}
        params = getattr(p, "extra_generation_params", None)
        p.extra_generation_params = dict(params or {})

    return apply


def confirm_range(name: str, field: str) -> Callable[[Any, Sequence[float]], None]:
    """An axis ``confirm``: every value inside the field's range, checked before the first cell."""
    bounds = field_range(InstantIDArgs, field)

    def confirm(p: Any, values: Sequence[float]) -> None:
        bad = [v for v in values if not bounds.contains(v)]  # NaN fails too
        if bad:
            shown = ", ".join(f"{v:g}" for v in bad)
            msg = (
                f"X/Y/Z plot: {_LABEL_PREFIX}{name} takes values from {bounds.low:g} to {bounds.high:g}, "
                f"not {shown}; change the axis values."
            )
            raise host.as_http_error(InvalidInputError(msg))

    return confirm


def identity_choices() -> list[str]:
    return [NO_IDENTITY, *services.resources().identities().names()]


def confirm_identities(p: Any, values: Sequence[str]) -> None:
    names = services.resources().identities().names()
    for value in values:
        if is_no_identity(value) or value in names:
            continue
        saved = ", ".join(names) if names else "none saved yet"
        msg = (
            f"X/Y/Z plot: there is no saved identity {value!r} for {IDENTITY_LABEL} ({saved}); "
            "save it in the InstantID panel first or pick a listed one."
        )
        raise host.as_http_error(InvalidInputError(msg))


def preset_choices() -> list[str]:
    return [preset.label for preset in PRESETS.values()]


def confirm_presets(p: Any, values: Sequence[str]) -> None:
    for value in values:
        try:
            get_preset(value)
        except InvalidInputError as err:
            raise host.as_http_error(InvalidInputError(f"X/Y/Z plot, {PRESET_LABEL}: {err}")) from err


# -- the job's side ----------------------------------------------------------------------------------
def overrides_of(p: Any) -> dict[str, Any]:
    """This cell's axis values by argument field ({} outside an X/Y/Z plot)."""
    found = getattr(p, OVERRIDES_ATTR, None)
    return dict(found) if isinstance(found, Mapping) else {}


def job_args(args: Sequence[Any], overrides: Mapping[str, Any]) -> InstantIDArgs | None:
    """The panel's arguments with the cell's overrides applied, or None when InstantID stays off.

    A saved identity from the axis switches InstantID on; the other overrides need the panel
    on, else they are reported once for the cell and ignored. Raises
    :class:`InvalidInputError` for values that do not fit together (e.g. ID start > ID end).
    """
    panel_on = is_enabled(args)
    switches_on = not is_no_identity(overrides.get("identity", ""))
    if not panel_on and not switches_on:
        if any(field != "identity" for field in overrides):
            shown = ", ".join(f"{field}={value!r}" for field, value in overrides.items())
            logger.warning(
                "The X/Y/Z plot's InstantID values (%s) are ignored: the InstantID panel is off; "
                "switch it on, or plot saved identities, which switch it on by themselves.",
                shown,
            )
        return None
    parsed = InstantIDArgs.parse(args)
    if not overrides:
        return parsed
    merged = {**parsed.dict(), **overrides}
    if switches_on:
        merged["enabled"] = True
    return InstantIDArgs.parse(merged)
