"""Per-person likeness: each person is scored on the faces inside their region of the final image."""

from __future__ import annotations

import types

import numpy as np
from PIL import Image

from instantid_ext.webui import scoring
from instantid_ext.webui.people import Pass


def half(side: str, size: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), np.float32)
    if side == "left":
        mask[:, : size[0] // 2] = 1
    else:
        mask[:, size[0] // 2 :] = 1
    return mask


def test_after_hires_fix_the_people_are_scored_in_the_hires_regions() -> None:
    """Hires fix to another aspect ratio crops the first pass: its regions no longer line up with
    the output, the hires pass's do. Here the hires regions are swapped left/right against the
    first pass's, so only the right choice finds each person's own face."""
    first = Pass((64, 64), np.zeros((64, 64, 3), np.uint8), [half("left", (64, 64)), half("right", (64, 64))])
    hires = Pass(
        (128, 64), np.zeros((64, 128, 3), np.uint8), [half("right", (128, 64)), half("left", (128, 64))]
    )
    faces = [  # person 1's face on the right of the output, person 2's on the left
        types.SimpleNamespace(bbox=(90.0, 20.0, 110.0, 40.0), similarity=0.71),
        types.SimpleNamespace(bbox=(10.0, 20.0, 30.0, 40.0), similarity=0.42),
    ]

    class Scorer:
        independent = None

        def score(self, image, reference, label=""):
            return types.SimpleNamespace(faces=[f for f in faces if f.similarity == reference])

    run = types.SimpleNamespace(
        people=types.SimpleNamespace(passes={"first": first, "hires": hires}),
        resources=types.SimpleNamespace(likeness_scorer=Scorer),
        likeness_reference=[0.71, 0.42],
    )
    p = types.SimpleNamespace(extra_generation_params={})
    scoring._score_people(run, p, Image.new("RGB", (128, 64)), 0)
    assert p.extra_generation_params[scoring.LIKENESS_KEY] == "1: 0.71; 2: 0.42 (antelopev2)"
