"""The InstantID arguments the one-server sequences send, in process and over HTTP alike.

Only the photo differs: a PIL image for the stand-in server, a base64 PNG for a live one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RequestArgs:
    #: The reference photo of one identity, by its number.
    photo: Callable[[int], Any]

    def one_person(self, **fields: Any) -> dict:
        return {"enabled": True, "images": [self.photo(3)], "likeness": False, **fields}

    def people(self, n: int, region: str = "auto", **fields: Any) -> dict:
        rows = [{"images": [self.photo(31 + i)], "region": region, "control_weight": 0.6} for i in range(n)]
        return {"enabled": True, "likeness": False, "people": rows, **fields}

    def overlapping(self) -> dict:
        """Two people whose boxes overlap."""
        args = self.people(2, region="box")
        args["people"][0]["box"] = [0.0, 0.0, 0.6, 1.0]
        args["people"][1]["box"] = [0.4, 0.0, 1.0, 1.0]
        return args
