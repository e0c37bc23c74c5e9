"""One sentence per problem: what pydantic reports about the arguments, as a user reads it.

Each sentence names the argument (``images[2]``, ``people[1].box``), the rule and the value
given, shortened so that a message never carries a long string or pixel data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image

from .fields import image_size
from .pydantic_v1 import BaseModel, ValidationError
from .ranges import field_range

_TYPE_TEXT = {
    "type_error.float": "must be a number",
    "type_error.integer": "must be a whole number",
    "type_error.bool": "must be true or false",
    "type_error.list": "must be a list",
    "type_error.str": "must be text",
    "type_error.none.not_allowed": "must not be empty",
}
_MISSING = object()


def describe(err: ValidationError, data: Mapping[str, Any], model: type[BaseModel]) -> str:
    """One sentence per pydantic error of ``model``, each naming its field and the bad value."""
    sentences = [_sentence(e, data, model).rstrip(". ") for e in err.errors()]
    return ". ".join(sentences) + "."


def unknown_argument(name: object, model: type[BaseModel]) -> str:
    return f"Unknown InstantID argument {str(name)!r}. Valid arguments: {', '.join(model.__fields__)}"


def _sentence(error: Mapping[str, Any], data: Mapping[str, Any], model: type[BaseModel]) -> str:
    loc, kind, ctx = tuple(error["loc"]), error["type"], error.get("ctx") or {}
    if loc == ("__root__",):
        return str(error["msg"])
    if kind == "value_error.extra":
        if len(loc) > 1:
            fields = ", ".join(model.__fields__[loc[0]].type_.__fields__)
            return f"Unknown InstantID argument '{_loc_name(loc)}'. A person takes: {fields}"
        return unknown_argument(loc[0], model)
    if kind.startswith("value_error.number.") and loc[0] in model.__fields__ and len(loc) == 1:
        text = field_range(model, str(loc[0])).text()
    elif kind in ("value_error.number.not_le", "value_error.number.not_ge"):
        bound = "at most" if kind.endswith("le") else "at least"
        text = f"must be {bound} {ctx.get('limit_value')}"
    elif kind == "value_error.const":
        text = "must be one of " + ", ".join(repr(p) for p in ctx.get("permitted", ()))
    elif kind in _TYPE_TEXT:
        text = _TYPE_TEXT[kind]
    else:  # our own validators: the message is already complete
        return f"InstantID argument '{_loc_name(loc)}': {error['msg']}"
    got = _lookup(data, loc)
    if got is not _MISSING:
        text += f" (got {_show(got)})"
    return f"InstantID argument '{_loc_name(loc)}': {text}"


def _loc_name(loc: tuple[Any, ...]) -> str:
    """``("images", 2)`` → ``images[2]``; a model-wide check (``__root__``) names the model."""
    head, *rest = (part for part in loc if part != "__root__")
    return str(head) + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in rest)


def _lookup(data: Mapping[str, Any], loc: tuple[Any, ...]) -> object:
    value: Any = data
    for part in loc:
        if isinstance(part, int) and not isinstance(value, list | tuple):
            return _MISSING  # e.g. weights still as the text "1, x"
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return value


def _show(value: object) -> str:
    """A short, safe rendering of a bad input: never more than a few dozen characters."""
    if isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"a {len(value)}-character string"
    if isinstance(value, Image.Image):
        return f"an image {image_size(value)}"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, Mapping):
        return "a dict"
    if value is None:
        return "None"
    return f"a {type(value).__name__}"
