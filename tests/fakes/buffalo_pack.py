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
from onnx import TensorProto, helper, numpy_helper

from tests.fakes import antelopev2_pack as fp

PACK = "buffalo_l"
DETECTOR = "det_10g.onnx"
RECOGNIZER = "w600k_r50.onnx"
EMBED_SEED = 600_050  # not antelopev2_pack.EMBED_SEED: a different recognizer


def build_recognizer() -> onnx.ModelProto:
    """The fake ``w600k_r50.onnx``: pool the aligned crop, centre it, then a fixed linear map."""
    weight, bias = fp.recognizer_weights(EMBED_SEED)
    # Node names must not start with "Sub"/"Mul" (insightface would take it for an MXNet model).
    nodes = [
        helper.make_node(
            "AveragePool",
            ["input.1"],
            ["pooled"],
            name="pool",
            kernel_shape=[fp.EMBED_POOL] * 2,
            strides=[fp.EMBED_POOL] * 2,
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        helper.make_node("ReduceMean", ["flat"], ["mean"], name="average", axes=[1], keepdims=1),
        helper.make_node("Sub", ["flat", "mean"], ["centred"], name="centre"),
        helper.make_node("MatMul", ["centred", "weight"], ["projected"], name="project"),
        helper.make_node("Add", ["projected", "bias"], ["embedding"], name="shift"),
    ]
    graph = helper.make_graph(
        nodes,
        "fake_w600k_r50",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 512])],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", fp.OPSET)], producer_name="tests")
    model.ir_version = fp.IR_VERSION
    onnx.checker.check_model(model)
    return model


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
    folder = pack_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        if name == DETECTOR:
            data = fp.detector_bytes()
        elif name == RECOGNIZER:
            data = recognizer_bytes()
        else:
            data = b"not a real model: never loaded by the extension's tests"
        (folder / name).write_bytes(data)
    return Path(root)
