"""The shapes the WebUI hands a script its arguments in, reduced to one dict of field values.

UI controls arrive positionally, the API as ``{"args": [{...}]}`` (padded by A1111 with the UI
defaults), a textbox as JSON. Aliases are renamed here and ``None`` means "the default".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidInputError
from .choices import ALIASES
from .messages import unknown_argument
from .pydantic_v1 import BaseModel


def has_default(model: type[BaseModel], name: str) -> bool:
    """Whether ``None`` for this field means "use the default" (all but ``pose_image``)."""
    field = model.__fields__[name]
    return field.default is not None or field.default_factory is not None


def canonical(data: Mapping[Any, Any], model: type[BaseModel]) -> dict[str, Any]:
    """Rename aliases and drop ``None`` where the field has a non-None default."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = ALIASES.get(key, key) if isinstance(key, str) else key
        if name in out:
            given = [k for k in data if k == name or ALIASES.get(k) == name]
            msg = (
                f"InstantID argument '{name}' is given twice (as {' and '.join(map(repr, given))}): keep one"
            )
            raise InvalidInputError(msg)
        if not isinstance(name, str):
            raise InvalidInputError(unknown_argument(name, model))
        if value is None and name in model.__fields__ and has_default(model, name):
            continue
        out[name] = value
    return out


def unwrap(value: object, model: type[BaseModel]) -> BaseModel | dict[str, Any]:
    """Reduce every accepted form to a dict of field values (or an already-built ``model``)."""
    if value is None:
        return {}
    if isinstance(value, model):
        return value
    if isinstance(value, str | bytes | bytearray):
        return unwrap(_json(value), model)
    if isinstance(value, Mapping):
        if set(value) == {"args"}:
            return unwrap(value["args"], model)
        return dict(value)
    if isinstance(value, list | tuple):
        return _positional(value, model)
    msg = (
        "InstantID arguments must be a dict, a JSON object or a list of values in the order "
        f"{', '.join(model.__fields__)} (got a {type(value).__name__})"
    )
    raise InvalidInputError(msg)


def _json(value: str | bytes | bytearray) -> object:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else value
    if not text.strip():
        return None
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as err:
        msg = f"InstantID arguments are not valid JSON: {err.msg} at character {err.pos}"
        raise InvalidInputError(msg) from err
    if not isinstance(loaded, dict | list):
        msg = f"InstantID arguments must be a JSON object (got a JSON {type(loaded).__name__})"
        raise InvalidInputError(msg)
    return loaded


def _positional(value: list[Any] | tuple[Any, ...], model: type[BaseModel]) -> BaseModel | dict[str, Any]:
    """UI values in field order; or the API's list whose first item is the dict (or its JSON)."""
    if not value:
        return {}
    head = value[0]
    if isinstance(head, Mapping | model):
        return unwrap(head, model)
    if isinstance(head, str) and head.lstrip().startswith("{"):
        return unwrap(head, model)
    names = tuple(model.__fields__)
    if len(value) > len(names):
        msg = (
            f"InstantID takes at most {len(names)} positional arguments "
            f"({', '.join(names)}), got {len(value)}"
        )
        raise InvalidInputError(msg)
    return dict(zip(names, value, strict=False))
