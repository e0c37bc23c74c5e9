"""A tiny, fake insightface ``antelopev2`` pack that the real insightface code loads and runs.

The real pack is ~350 MB and may not be downloaded in tests, so we generate two small ONNX
graphs with the same signatures as the files insightface routes by shape:

``scrfd_10g_bnkps.onnx`` (detector)
    Input ``input.1`` ``[1, 3, height, width]`` (dynamic), nine rank-2 outputs: scores ``[n, 1]``,
    bbox distances ``[n, 4]`` and keypoint offsets ``[n, 10]`` for strides 8, 16, 32 with two
    anchors per location, in the order SCRFD's decoder reads them (scores ×3, bboxes ×3, kps ×3).

    A "face" is a bright axis-aligned square (every channel ≥ 200) on a darker background
    (channel mean ≤ 180), see :func:`draw_face`. The graph computes a soft face mask from the
    channel sum, then exact pixel moments of the mask with an 8×8/stride-8 convolution
    (count, Σx, Σy, Σx², Σy² per cell) and, per stride level, a box window of cells centred on
    each anchor (window 64 / 160 / 320 px for strides 8 / 16 / 32). From the window's moments:

    * area ``A`` → side ``a = √A``; centroid offset ``(ox, oy)`` from the anchor;
    * bbox distances ``a/2 ∓ ox``, ``a/2 ∓ oy``; keypoints ``(ox, oy) + a · KPS_REL``
      (insightface's ArcFace template, so the aligned 112×112 crop is exactly the square);
    * score = brightness term (0.6 … 0.95, brighter face → higher score)
      × containment (the window holds the whole blob: area equals that of a wider ring window)
      × squareness (x and y variances equal ``A/12``, which rejects windows holding two faces
      or a face cut by the window or the image border) × a minimum size (≥ 8 px).

    Every anchor whose window holds the whole face predicts the same box, so NMS keeps one
    detection per face. Faces larger than ~290 px at detector scale fit no window: they are
    missed at ``det_size`` 640 and found once the image is padded / the detector size lowered,
    which is what the pad-and-retry path is for.

``glintr100.onnx`` (recognizer)
    Input ``[N, 3, 112, 112]`` → 16×16 average pooling → flatten (147) → fixed-seed linear map →
    ``[N, 512]``. :func:`expected_embedding` recomputes it with numpy from an image and keypoints.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DETECTOR = "scrfd_10g_bnkps.onnx"
RECOGNIZER = "glintr100.onnx"
OPTIONAL = ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx")

#: insightface's ArcFace 112×112 landmark template (utils/face_align.py).
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
#: Keypoints relative to the face square's centre, in units of its side.
KPS_REL = (ARCFACE_DST - 56.0) / 112.0

#: (stride, half window in 8-px cells, extra ring in cells) per detector level.
LEVELS = ((8, 4, 2), (16, 10, 3), (32, 20, 4))
MASK_GAIN = 4.0
MASK_THRESHOLD = 1.3  # on the sum of the three normalised channels
EMBED_POOL = 16
EMBED_SEED = 20240117
OPSET = 13
IR_VERSION = 8

FACE_MIN_VALUE = 200  # a face pixel has every channel >= this
BACKGROUND_MAX_MEAN = 180  # a background pixel has a channel mean <= this


# --------------------------------------------------------------------------------------
# Drawing test faces and the expected model outputs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrawnFace:
    """Where :func:`draw_face` put a face, in the image's pixel coordinates."""

    bbox: np.ndarray  # (4,) x1, y1, x2, y2 (continuous: the square covers [x1, x2) × [y1, y2))
    kps: np.ndarray  # (5, 2) ArcFace order
    size: int
    ident: int

    @property
    def center_x(self) -> float:
        return float(self.bbox[0] + self.bbox[2]) / 2.0

    @property
    def area(self) -> float:
        return float(self.size * self.size)


def background(height: int, width: int, value: int = 110) -> np.ndarray:
    """An RGB ``uint8`` canvas with a mild gradient, dark enough never to look like a face."""
    ramp = np.linspace(-30, 30, width, dtype=np.float32)[None, :, None]
    rows = np.linspace(-20, 20, height, dtype=np.float32)[:, None, None]
    img = np.clip(value + ramp + rows + np.array([0, 8, -8], np.float32), 0, BACKGROUND_MAX_MEAN - 20)
    return np.ascontiguousarray(np.broadcast_to(img, (height, width, 3)).astype(np.uint8))


def draw_face(
    img: np.ndarray,
    center: tuple[float, float],
    size: int,
    ident: int = 0,
    bright: tuple[int, int] = (205, 255),
) -> DrawnFace:
    """Draw a fake face (an RGB image, in place): a square of 4×4 bright blocks plus five dots.

    ``ident`` seeds the block colours, so faces with different ``ident`` get different
    embeddings; ``bright`` bounds the channel values, which sets the detector score.
    """
    lo, hi = bright
    if lo < FACE_MIN_VALUE or hi > 255 or lo > hi:
        msg = f"bright must lie within [{FACE_MIN_VALUE}, 255], got {bright}"
        raise ValueError(msg)
    x0 = round(center[0] - size / 2.0)
    y0 = round(center[1] - size / 2.0)
    rng = np.random.default_rng(ident)
    colours = rng.integers(lo, hi + 1, size=(4, 4, 3), dtype=np.int64)
    xs = np.round(np.linspace(x0, x0 + size, 5)).astype(int)
    ys = np.round(np.linspace(y0, y0 + size, 5)).astype(int)
    h, w = img.shape[:2]
    for by in range(4):
        for bx in range(4):
            ya, yb = np.clip([ys[by], ys[by + 1]], 0, h)
            xa, xb = np.clip([xs[bx], xs[bx + 1]], 0, w)
            if ya < yb and xa < xb:
                img[ya:yb, xa:xb] = colours[by, bx]
    centre = np.array([x0 + size / 2.0, y0 + size / 2.0], dtype=np.float32)
    kps = (centre + KPS_REL * float(size)).astype(np.float32)
    radius = max(1, size // 28)
    mask = np.zeros((h, w), np.uint8)
    for x, y in kps:
        cv2.circle(mask, (round(float(x)), round(float(y))), radius, 255, -1)
    square = np.zeros((h, w), bool)
    square[max(y0, 0) : max(min(y0 + size, h), 0), max(x0, 0) : max(min(x0 + size, w), 0)] = True
    img[(mask > 0) & square] = (lo, lo, hi)
    bbox = np.array([x0, y0, x0 + size, y0 + size], dtype=np.float32)
    return DrawnFace(bbox=bbox, kps=kps, size=size, ident=ident)


def three_faces() -> tuple[np.ndarray, list[DrawnFace]]:
    """Left: medium and dim; middle: largest; right: small and brightest (highest score)."""
    img = background(480, 640)
    drawn = [
        draw_face(img, (90, 240), 110, ident=11, bright=(200, 225)),
        draw_face(img, (330, 200), 140, ident=12, bright=(205, 240)),
        draw_face(img, (560, 320), 70, ident=13, bright=(245, 255)),
    ]
    return img, drawn


@lru_cache(maxsize=4)
def recognizer_weights(seed: int = EMBED_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The fixed linear map of the fake recognizer: ``W`` (147, 512) and ``b`` (512,).

    Another ``seed`` gives another recognizer's weights (see ``buffalo_pack``).
    """
    rng = np.random.default_rng(seed)
    n_in = 3 * (112 // EMBED_POOL) ** 2
    weight = (rng.standard_normal((n_in, 512)) * 0.5).astype(np.float32)
    bias = (rng.standard_normal(512) * 0.1).astype(np.float32)
    return weight, bias


def pooled_crop(image_rgb: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """What the fake recognizers see: insightface's aligned 112×112 crop at ``kps``, normalised
    as ArcFace input and average-pooled 16×16 → flat (147,)."""
    from insightface.utils import face_align

    bgr = np.ascontiguousarray(image_rgb[..., ::-1])
    aligned = face_align.norm_crop(bgr, landmark=np.asarray(kps, np.float32), image_size=112)
    rgb = aligned[..., ::-1].astype(np.float32)
    x = ((rgb - 127.5) / 127.5).transpose(2, 0, 1)  # (3, 112, 112)
    n = 112 // EMBED_POOL
    return x.reshape(3, n, EMBED_POOL, n, EMBED_POOL).mean(axis=(2, 4)).reshape(-1)


def expected_embedding(image_rgb: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """Recompute the fake recognizer's raw embedding for the face at ``kps`` in ``image_rgb``."""
    pooled = pooled_crop(image_rgb, kps)
    weight, bias = recognizer_weights()
    return (pooled.astype(np.float64) @ weight.astype(np.float64) + bias).astype(np.float32)


def expected_score(image_rgb: np.ndarray, face: DrawnFace) -> float:
    """The detector score of a face fully inside the image (brightness term only)."""
    x0, y0, x1, y1 = (int(v) for v in face.bbox)
    brightness = float(image_rgb[y0:y1, x0:x1].astype(np.float64).mean() / 255.0)
    return 0.6 + 0.35 * float(np.clip((brightness - 0.8) / 0.2, 0.0, 1.0))


# --------------------------------------------------------------------------------------
# ONNX graphs
# --------------------------------------------------------------------------------------


class _Graph:
    """Just enough of a graph builder to keep the detector readable."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{self.prefix}{self._count}_{kind}"

    def const(self, value: object, dtype: type = np.float32) -> str:
        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: object) -> str | list[str]:
        names = [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self._name("node"), **attrs))
        return names[0] if outputs == 1 else names

    def clip01(self, x: str) -> str:
        return self.op("Clip", x, self.const(0.0), self.const(1.0))

    def to_rows(self, x: str, channels: int, zero_second_anchor: bool = False) -> str:
        """``[1, C, h, w]`` → ``[h·w·2, C]``: row ``(i·w + j)·2 + anchor``, as SCRFD decodes."""
        rows = self.op(
            "Reshape", self.op("Transpose", x, perm=[0, 2, 3, 1]), self.const([-1, channels], np.int64)
        )
        first = self.op("Unsqueeze", rows, self.const([1], np.int64))
        second = self.op("Mul", first, self.const(0.0)) if zero_second_anchor else first
        both = self.op("Concat", first, second, axis=1)
        return self.op("Reshape", both, self.const([-1, channels], np.int64))


def _cell_weights() -> np.ndarray:
    """8×8 stride-8 conv: per cell Σm, Σm·x, Σm·y, Σm·x², Σm·y² (pixel centres) and Σ(m·L)."""
    local = np.arange(8, dtype=np.float64) + 0.5
    lx = np.broadcast_to(local[None, :], (8, 8))
    ly = np.broadcast_to(local[:, None], (8, 8))
    w = np.zeros((6, 2, 8, 8), np.float64)
    w[0, 0] = 1.0
    w[1, 0] = lx
    w[2, 0] = ly
    w[3, 0] = lx**2
    w[4, 0] = ly**2
    w[5, 1] = 1.0
    return w.astype(np.float32)


def _window_weights(half: int) -> np.ndarray:
    """Moments of a 2·half-cell window about the anchor point, from the per-cell moments."""
    taps = (np.arange(2 * half, dtype=np.float64) - half) * 8.0  # cell left edge - anchor
    ex = np.broadcast_to(taps[None, :], (2 * half, 2 * half))
    ey = np.broadcast_to(taps[:, None], (2 * half, 2 * half))
    w = np.zeros((6, 6, 2 * half, 2 * half), np.float64)
    w[0, 0] = 1.0
    w[1, 0], w[1, 1] = ex, 1.0
    w[2, 0], w[2, 2] = ey, 1.0
    w[3, 0], w[3, 1], w[3, 3] = ex**2, 2.0 * ex, 1.0
    w[4, 0], w[4, 2], w[4, 4] = ey**2, 2.0 * ey, 1.0
    w[5, 5] = 1.0
    return w.astype(np.float32)


def _ring_weights(half: int) -> np.ndarray:
    w = np.zeros((1, 6, 2 * half, 2 * half), np.float32)
    w[0, 0] = 1.0
    return w


def _detector_level(g: _Graph, cells: str, stride: int, half: int, margin: int) -> tuple[str, str, str]:
    r = stride // 8
    win = g.op(
        "Conv", cells, g.const(_window_weights(half)), strides=[r, r], pads=[half, half, half - r, half - r]
    )
    outer = half + margin
    ring = g.op(
        "Conv",
        cells,
        g.const(_ring_weights(outer)),
        strides=[r, r],
        pads=[outer, outer, outer - r, outer - r],
    )
    area, mx, my, mxx, myy, lum = g.op("Split", win, g.const([1] * 6, np.int64), outputs=6, axis=1)
    safe = g.op("Max", area, g.const(1.0))
    ox = g.op("Div", mx, safe)
    oy = g.op("Div", my, safe)
    side = g.op("Sqrt", safe)

    def deviation(m2: str, mean: str) -> str:
        var = g.op("Sub", g.op("Div", m2, safe), g.op("Mul", mean, mean))
        return g.op("Abs", g.op("Sub", g.op("Div", g.op("Mul", var, g.const(12.0)), safe), g.const(1.0)))

    dev = g.op("Add", deviation(mxx, ox), deviation(myy, oy))
    square = g.clip01(g.op("Sub", g.const(1.5), g.op("Mul", dev, g.const(5.0))))
    ratio = g.op("Div", area, g.op("Add", ring, g.const(1e-6)))
    contained = g.clip01(g.op("Sub", g.op("Mul", ratio, g.const(100.0)), g.const(99.0)))
    big_enough = g.clip01(g.op("Div", g.op("Sub", area, g.const(48.0)), g.const(16.0)))
    brightness = g.op("Div", lum, safe)
    bright01 = g.clip01(g.op("Div", g.op("Sub", brightness, g.const(0.8)), g.const(0.2)))
    base = g.op("Add", g.const(0.6), g.op("Mul", bright01, g.const(0.35)))
    score = g.op("Mul", g.op("Mul", base, contained), g.op("Mul", square, big_enough))

    inv = g.const(1.0 / stride)
    half_side = g.op("Mul", side, g.const(0.5))
    bbox = g.op(
        "Concat",
        g.op("Sub", half_side, ox),
        g.op("Sub", half_side, oy),
        g.op("Add", half_side, ox),
        g.op("Add", half_side, oy),
        axis=1,
    )
    bbox = g.op("Mul", bbox, inv)
    rel_x = g.const(KPS_REL[:, 0].reshape(1, 5, 1, 1))
    rel_y = g.const(KPS_REL[:, 1].reshape(1, 5, 1, 1))
    kx = g.op("Add", ox, g.op("Mul", side, rel_x))  # [1, 5, h, w]
    ky = g.op("Add", oy, g.op("Mul", side, rel_y))
    to_last = g.const([4], np.int64)
    kx = g.op("Unsqueeze", g.op("Transpose", kx, perm=[0, 2, 3, 1]), to_last)  # [1, h, w, 5, 1]
    ky = g.op("Unsqueeze", g.op("Transpose", ky, perm=[0, 2, 3, 1]), to_last)
    kps = g.op("Mul", g.op("Reshape", g.op("Concat", kx, ky, axis=4), g.const([-1, 10], np.int64)), inv)
    kps_first = g.op("Unsqueeze", kps, g.const([1], np.int64))
    kps = g.op("Reshape", g.op("Concat", kps_first, kps_first, axis=1), g.const([-1, 10], np.int64))
    return g.to_rows(score, 1, zero_second_anchor=True), g.to_rows(bbox, 4), kps


def build_detector() -> onnx.ModelProto:
    """The fake ``scrfd_10g_bnkps.onnx`` (see the module docstring)."""
    g = _Graph("det")
    x = "input.1"
    gain = np.full((1, 3, 1, 1), MASK_GAIN, np.float32)
    mask = g.clip01(g.op("Conv", x, g.const(gain), g.const([-MASK_GAIN * MASK_THRESHOLD])))
    # Mean channel value in [0, 1]: x is (v - 127.5) / 128 per channel.
    lum_w = np.full((1, 3, 1, 1), 128.0 / 3.0 / 255.0, np.float32)
    lum = g.op("Conv", x, g.const(lum_w), g.const([127.5 / 255.0]))
    stacked = g.op("Concat", mask, g.op("Mul", mask, lum), axis=1)
    cells = g.op("Conv", stacked, g.const(_cell_weights()), strides=[8, 8])
    per_level = [_detector_level(g, cells, s, k, m) for s, k, m in LEVELS]
    outputs, graph_outputs = [], []
    for kind, width in ((0, 1), (1, 4), (2, 10)):
        for (stride, _, _), level in zip(LEVELS, per_level, strict=True):
            name = f"{('score', 'bbox', 'kps')[kind]}_{stride}"
            g.nodes.append(helper.make_node("Identity", [level[kind]], [name], name=f"out_{name}"))
            outputs.append(name)
            graph_outputs.append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{stride}", width])
            )
    graph = helper.make_graph(
        g.nodes,
        "fake_scrfd",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, "height", "width"])],
        graph_outputs,
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def linear_recognizer(name: str, seed: int = EMBED_SEED, centre: bool = False) -> onnx.ModelProto:
    """A fake ArcFace model ``name``: pool the aligned crop, with ``centre`` remove its mean, then
    the fixed linear map of :func:`recognizer_weights` (``seed``) to 512-d."""
    weight, bias = recognizer_weights(seed)
    n_in = weight.shape[0]
    # Node names must not start with "Sub"/"Mul": insightface would then assume an MXNet
    # model with mean 0 / std 1 instead of (x - 127.5) / 127.5.
    nodes = [
        helper.make_node(
            "AveragePool",
            ["input.1"],
            ["pooled"],
            name="pool",
            kernel_shape=[EMBED_POOL] * 2,
            strides=[EMBED_POOL] * 2,
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
    ]
    features = "flat"
    if centre:
        nodes.append(helper.make_node("ReduceMean", ["flat"], ["mean"], name="average", axes=[1], keepdims=1))
        nodes.append(helper.make_node("Sub", ["flat", "mean"], ["centred"], name="centre"))
        features = "centred"
    nodes.append(helper.make_node("MatMul", [features, "weight"], ["projected"], name="project"))
    nodes.append(helper.make_node("Add", ["projected", "bias"], ["embedding"], name="shift"))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 512])],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    assert weight.shape == (n_in, 512)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def build_recognizer() -> onnx.ModelProto:
    """The fake ``glintr100.onnx``: pool the aligned crop, then a fixed linear map to 512-d."""
    return linear_recognizer("fake_glintr100")


@lru_cache(maxsize=1)
def detector_bytes() -> bytes:
    return build_detector().SerializeToString()


@lru_cache(maxsize=1)
def recognizer_bytes() -> bytes:
    return build_recognizer().SerializeToString()


# --------------------------------------------------------------------------------------
# Pack layouts, good and broken
# --------------------------------------------------------------------------------------


def pack_dir(root: Path) -> Path:
    """Where ``FaceAnalysis(name="antelopev2", root=root)`` looks."""
    return Path(root) / "models" / "antelopev2"


def write_files(
    folder: Path, files: Iterable[str], models: Mapping[str, Callable[[], bytes]] | None = None
) -> None:
    """Writes ``files`` into ``folder``: each named in ``models`` (by default this pack's detector and
    recognizer) from its bytes, any other as a placeholder the tests never load."""
    models = {DETECTOR: detector_bytes, RECOGNIZER: recognizer_bytes} if models is None else models
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        model = models.get(name)
        data = model() if model else b"not a real model: never loaded by the extension's tests"
        (folder / name).write_bytes(data)


def write_pack(root: Path, files: Iterable[str] = (DETECTOR, RECOGNIZER)) -> Path:
    """A working pack under ``root``; returns ``root``."""
    write_files(pack_dir(root), files)
    return Path(root)


def make_nested(root: Path) -> Path:
    """The classic unzip mistake: ``models/antelopev2/antelopev2/*.onnx``."""
    write_files(pack_dir(root) / "antelopev2", (DETECTOR, RECOGNIZER))
    return Path(root)


def make_zip_only(root: Path) -> Path:
    """``models/antelopev2.zip`` downloaded but never unpacked."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"antelopev2/{DETECTOR}", detector_bytes())
        zf.writestr(f"antelopev2/{RECOGNIZER}", recognizer_bytes())
    target = Path(root) / "models" / "antelopev2.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buf.getvalue())
    return Path(root)


def make_missing(root: Path, missing: Iterable[str]) -> Path:
    """A pack folder lacking the named files (the optional ones are present)."""
    skip = set(missing)
    write_files(pack_dir(root), [n for n in (DETECTOR, RECOGNIZER, *OPTIONAL) if n not in skip])
    return Path(root)


def make_empty(root: Path) -> Path:
    """An empty ``models/antelopev2`` folder."""
    pack_dir(root).mkdir(parents=True, exist_ok=True)
    return Path(root)
