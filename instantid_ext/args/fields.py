"""Field types and value readers shared by :class:`Person` and :class:`InstantIDArgs`.

The WebUI sends lists as text ("1, 0.5") and single images where a list is expected; the
readers here turn those into the forms the fields declare, before pydantic checks the types.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..errors import InvalidInputError
from ..images import MAX_REFERENCE_IMAGES, decode_image
from .pydantic_v1 import Field

#: Digits kept in infotext and logs: gradio sliders deliver 0.35000000000000003 for 0.35.
DIGITS = 6

if TYPE_CHECKING:
    ReferenceImage = Image.Image
else:

    class ReferenceImage:
        """Pydantic type for an image argument: any form :func:`decode_image` reads, stored as PIL RGB.

        The JSON schema calls it a base64 string, the form API callers should use.
        """

        @classmethod
        def __get_validators__(cls) -> Iterable[Any]:
            yield cls.validate

        @classmethod
        def validate(cls, value: object) -> Image.Image:
            try:
                return decode_image(value)
            except InvalidInputError as err:  # pydantic only collects ValueError/TypeError
                raise ValueError(str(err)) from err

        @classmethod
        def __modify_schema__(cls, field_schema: dict[str, Any]) -> None:
            field_schema.update(type="string", format="base64")


def arg(default: Any, description: str, infotext: str | None = None, **bounds: Any) -> Any:
    """A model field: its default, its API description and, if it is written, its PNG-info label."""
    labels = {} if infotext is None else {"infotext": infotext}
    return Field(default, description=description, **bounds, **labels)


def image_list(value: object) -> object:
    """A single image is a one-image list; a gallery value is already a list."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        if len(value) > MAX_REFERENCE_IMAGES:
            msg = (
                f"takes at most {MAX_REFERENCE_IMAGES} photos, got {len(value)}: a few clear photos of "
                "the face give the identity; more add nothing"
            )
            raise ValueError(msg)
        return list(value)
    return [value]


def number_list(value: object) -> object:
    """The UI sends numbers as text ("1, 0.5"); one number is a one-item list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part for part in re.split(r"[\s,;]+", value.strip()) if part]
    if isinstance(value, int | float):
        return [value]
    return value


def usable_weights(value: list[float]) -> list[float]:
    """Weights of an average: each finite and ≥ 0, not all 0."""
    for i, weight in enumerate(value):
        if not math.isfinite(weight) or weight < 0:
            msg = f"weight #{i} must be a number of 0 or more (got {weight!r})"
            raise ValueError(msg)
    if value and not any(value):
        msg = f"the weights must not all be 0 (got {format_floats(value)})"
        raise ValueError(msg)
    return value


def whole_number(value: object) -> object:
    """Gradio sliders send 2.0 for 2; 2.5 is an error, not a silent 2."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return value
    if isinstance(value, float):
        if not value.is_integer():
            msg = f"must be a whole number (got {value!r})"
            raise ValueError(msg)
        return int(value)
    return value


def to_text(value: object) -> str:
    """Infotext and log form of a value; floats rounded so slider noise does not show."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(round(value, DIGITS) + 0.0)
    if isinstance(value, list):
        return format_floats(value)
    return str(value)


def format_floats(values: Iterable[float]) -> str:
    return ", ".join(to_text(float(v)) for v in values)


def image_size(image: Image.Image) -> str:
    return f"{image.width}×{image.height}"


class ImageRepr:
    """Stands for an image in a repr: ``<image 512×512>``, never pixel data."""

    def __init__(self, image: Image.Image) -> None:
        self.text = f"<image {image_size(image)}>"

    def __repr__(self) -> str:
        return self.text
