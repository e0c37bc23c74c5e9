"""The range of every number argument, as the model declares it (``ge``/``le``).

The UI's sliders and number boxes, the error sentences and the X/Y/Z plot's axis check all
read a field's range from here, so that no number is written twice and the panel never offers
a value the API would refuse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .fields import arg
from .pydantic_v1 import BaseModel

#: Highest face index anywhere (faces counted left to right from 0).
MAX_FACE_INDEX = 31


@dataclass(frozen=True)
class Range:
    """Inclusive bounds of a number; None where the field has none."""

    low: float | None
    high: float | None

    def contains(self, value: float) -> bool:
        """Whether ``value`` is inside (NaN never is)."""
        if math.isnan(value):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def field(self, default: Any, description: str, infotext: str | None = None) -> Any:
        """A model field that accepts exactly these bounds (``infotext``: its PNG-info label)."""
        return arg(default, description, infotext, ge=self.low, le=self.high)

    def text(self) -> str:
        """The rule as the end of a sentence: "must be between 0 and 2"."""
        if self.low is not None and self.high is not None:
            return f"must be between {self.low:g} and {self.high:g}"
        if self.low is not None:
            return f"must be at least {self.low:g}"
        return f"must be at most {self.high:g}"


#: A fraction: of the sampling steps, of a denoise, of an effect's strength.
FRACTION = Range(0, 1)
#: A strength that may go past 1 (the reference's scales).
STRENGTH = Range(0, 2)
#: A move by a fraction of the image's width or height.
SHIFT = Range(-1, 1)
#: Faces counted left to right from 0.
FACE_INDEX = Range(0, MAX_FACE_INDEX)


def field_range(model: type[BaseModel], name: str) -> Range:
    """The bounds of ``model``'s number field ``name``."""
    info = model.__fields__[name].field_info
    return Range(info.ge, info.le)


def has_range(model: type[BaseModel], name: str) -> bool:
    """Whether field ``name`` declares any bound."""
    info = model.__fields__[name].field_info
    return info.ge is not None or info.le is not None
