"""The PNG-info ("infotext") form of the arguments: written after a run, read back on paste.

Only non-default values are written, each under its field's ``infotext`` label; a pasted
infotext gives back the field updates it holds, skipping any value that would not validate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .choices import read_bool
from .fields import to_text
from .pydantic_v1 import BaseModel

INFOTEXT_PREFIX = "InstantID"

#: Infotext keys that hold a start-end pair of two fields.
GROUPS: dict[str, tuple[str, str]] = {
    f"{INFOTEXT_PREFIX} ID range": ("id_start", "id_end"),
    f"{INFOTEXT_PREFIX} IdentityNet range": ("control_start", "control_end"),
    f"{INFOTEXT_PREFIX} pose offset": ("pose_offset_x", "pose_offset_y"),
}
#: The several-people line, as :func:`instantid_ext.job.people.describe` writes it:
#: "1: identity:Alice left 0.8/0.8; 2: images:1a2b box(0.5 0 1 1) 0.6/0.5".
PEOPLE_KEY = f"{INFOTEXT_PREFIX} people"
_PERSON = re.compile(
    r"^\s*\d+: (?:identity:(?P<identity>.+?)|\S+?:\S*) "
    r"(?P<region>auto|left|right|top|bottom|mask|box\((?P<box>[^)]*)\)) "
    r"(?P<id_weight>\S+)/(?P<control_weight>\S+)$"
)
#: Written on every run: "Auto" resolves to a different file on each install.
_ALWAYS_WRITTEN = ("ip_adapter_model", "identitynet_model")


def labels(model: type[BaseModel]) -> dict[str, str]:
    """Field name → infotext key: "enabled" is the bare prefix, the others carry their label."""
    found = {"enabled": INFOTEXT_PREFIX}
    for name, field in model.__fields__.items():
        label = field.field_info.extra.get("infotext")
        if label:
            found[name] = f"{INFOTEXT_PREFIX} {label}"
    return found


def write(args: BaseModel, extra: Mapping[str, object] | None = None) -> dict[str, str]:
    """ "InstantID: on" plus the non-default values of ``args`` and ``extra`` (prefixed if needed)."""
    out = {INFOTEXT_PREFIX: "on"}
    fields = type(args).__fields__
    for key, names in _keys(type(args)).items():
        values = [getattr(args, name) for name in names]
        defaults = [fields[name].get_default() for name in names]
        changed = [to_text(v) != to_text(d) for v, d in zip(values, defaults, strict=True)]
        if names[0] in _ALWAYS_WRITTEN or any(changed):
            out[key] = "-".join(to_text(v) for v in values)
    for key, value in (extra or {}).items():
        label = key if key.startswith(INFOTEXT_PREFIX) else f"{INFOTEXT_PREFIX} {key}"
        out[label] = str(value)
    return out


def read(model: type[BaseModel], params: Mapping[str, object]) -> dict[str, object]:
    """The field updates ``params`` asks for: only keys present, unreadable ones skipped."""
    updates: dict[str, object] = {}
    if INFOTEXT_PREFIX in params:
        enabled = read_bool(params[INFOTEXT_PREFIX])
        if enabled is not None:
            updates["enabled"] = enabled
    for key, names in _keys(model).items():
        if key not in params:
            continue
        text = str(params[key]).strip()
        parts = _split_range(text) if len(names) == 2 else (text,)
        if parts is None:
            continue
        checked = [_check_field(model, name, part) for name, part in zip(names, parts, strict=True)]
        if not all(ok for ok, _ in checked):
            continue
        if key.endswith(" range") and checked[0][1] > checked[-1][1]:
            continue  # a start after its end
        updates.update({name: value for name, (_, value) in zip(names, checked, strict=True)})
    return updates


def _keys(model: type[BaseModel]) -> dict[str, tuple[str, ...]]:
    """Infotext key → the fields it holds (two for a pair), "enabled" left out."""
    keys: dict[str, tuple[str, ...]] = {}
    for name, key in labels(model).items():
        if name != "enabled" and key not in keys:
            keys[key] = GROUPS.get(key, (name,))
    return keys


def _split_range(text: str) -> tuple[str, str] | None:
    """``"0.0-1.0"`` → ``("0.0", "1.0")``; copes with exponents such as ``1e-05-0.5``."""
    for match in re.finditer("-", text):
        left, right = text[: match.start()].strip(), text[match.end() :].strip()
        try:
            float(left), float(right)
        except ValueError:
            continue
        return left, right
    return None


def _check_field(model: type[BaseModel], name: str, raw: object) -> tuple[bool, Any]:
    """Validate one field on its own (types, ranges, spelling); ``(False, None)`` if unusable."""
    field = model.__fields__[name]
    if name in ("image_weights", "box") and isinstance(raw, str) and not raw.strip():
        return False, None
    value, errors = field.validate(raw, {}, loc=name, cls=model)  # type: ignore[arg-type]
    if errors:
        return False, None
    return True, value


def read_people(person_model: type[BaseModel], text: str) -> list[dict[str, Any]]:
    """Each person of a :data:`PEOPLE_KEY` line: identity, region, box and weights, where readable.

    Photos are never in infotext, so a person given by photos comes back without a face source.
    """
    people = []
    for part in text.split(";") if text.strip() else []:
        match = _PERSON.match(part.strip())
        if match is None:
            people.append({})
            continue
        found = match.groupdict()
        region = found["region"].split("(")[0]
        raw = {**found, "region": region, "identity": found["identity"] or "", "box": found["box"] or ""}
        checked = {name: _check_field(person_model, name, value) for name, value in raw.items()}
        people.append({name: value for name, (ok, value) in checked.items() if ok})
    return people
