"""A tiny, fake insightface ``buffalo_l`` pack that the real insightface code loads and runs.

``det_10g.onnx`` is the fake SCRFD detector of :mod:`tests.fakes.antelopev2_pack` (the real
buffalo_l and antelopev2 ship the same SCRFD-10G architecture). ``w600k_r50.onnx`` is another
recognizer than the fake ``glintr100.onnx``: other weights, and it removes the crop's mean
before the linear map, so different faces land much further apart than with the antelopev2
fake. A test can therefore tell which recognizer produced a score: :func:`expected_embedding`
recomputes this one's embedding, ``antelopev2_pack.expected_embedding`` the other's.
insightface routes the files by their ONNX shapes (nine rank-2 outputs → detector; a square
112×112 input → ArcFace).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx

from tests.fakes import antelopev2_pack as fp

PACK = "buffalo_l"
DETECTOR = "det_10g.onnx"
RECOGNIZER = "w600k_r50.onnx"
EMBED_SEED = 600_050  # not antelopev2_pack.EMBED_SEED: a different recognizer


def build_recognizer() -> onnx.ModelProto:
    """The fake ``w600k_r50.onnx``: pool the aligned crop, centre it, then a fixed linear map."""
    return fp.linear_recognizer("fake_w600k_r50", EMBED_SEED, centre=True)


@lru_cache(maxsize=1)
def recognizer_bytes() -> bytes:
    return build_recognizer().SerializeToString()


def expected_embedding(image_rgb: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """This fake recognizer's raw embedding for the face at ``kps`` in ``image_rgb``."""
    pooled = fp.pooled_crop(image_rgb, kps).astype(np.float64)
    weight, bias = fp.recognizer_weights(EMBED_SEED)
    return ((pooled - pooled.mean()) @ weight.astype(np.float64) + bias).astype(np.float32)


def pack_dir(root: Path) -> Path:
    """Where ``FaceAnalysis(name="buffalo_l", root=root)`` looks."""
    return Path(root) / "models" / PACK


def write_pack(root: Path, files: Iterable[str] = (DETECTOR, RECOGNIZER)) -> Path:
    """A working buffalo_l pack under ``root`` (next to an antelopev2 one, if any); returns ``root``."""
    fp.write_files(pack_dir(root), files, {DETECTOR: fp.detector_bytes, RECOGNIZER: recognizer_bytes})
    return Path(root)
