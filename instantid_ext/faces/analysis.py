"""Face detection and identity embeddings with insightface's ``antelopev2`` pack (or another).

InstantID conditions on two things from a face photo: the raw 512-d ArcFace embedding (fed to
the Resampler) and the 5 keypoints (drawn for IdentityNet). Both come from insightface, which
this module wraps so that the rest of the extension sees plain frozen :class:`Face` records:

* insightface is imported only when a model is first needed, so ``import instantid_ext`` stays
  fast and works without it; a missing package becomes a :class:`DependencyError`.
* The pack layout is checked first (:mod:`.antelopev2`), so insightface never tries to download.
* Loaded models are cached per (pack folder, providers); results per image, so re-running a
  generation with the same reference photo does not run ONNX again.
* antelopev2 is the default pack; the same machinery loads the other packs of
  :mod:`.packs` (``buffalo_l``, which the likeness score uses as a second recognizer).
* A face the detector misses at 640 (typically a tight crop) is searched again on a padded
  copy at detector sizes 640 → 192, as the ComfyUI and Forge ports do.

Works with insightface 0.7.3 and 2.x (different signatures and detector classes).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import DependencyError, InvalidInputError, ModelFileError, NoFaceError
from ..images import MAX_IMAGE_PIXELS, ChannelOrder, ImageLike, image_size, to_bgr_array
from .packs import ANTELOPEV2, FacePack, validate_pack

logger = logging.getLogger(__name__)

DET_SIZE = 640
DET_THRESH = 0.5
#: Detector sizes tried on the padded image when the first pass finds nothing.
RETRY_SIZES: tuple[int, ...] = tuple(range(640, 191, -64))
#: Border added on each side for the retry, as a fraction of the image's longer side.
PAD_FRACTION = 0.25
EMBEDDING_DIM = 512
RESULT_CACHE_SIZE = 16
#: Shorter side below which no usable face can be in an image.
MIN_IMAGE_SIDE = 32

ChoiceMode = Literal["largest", "index", "highest_score"]
ProvidersLike = str | Sequence[str] | None

CPU_PROVIDER = "CPUExecutionProvider"
PROVIDER_ALIASES = {
    "cpu": CPU_PROVIDER,
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}

_INSTALL_HINT = (
    "Restart the WebUI so that the extension's install step (install.py) installs it, "
    "or run `pip install insightface onnxruntime` in the WebUI's Python environment."
)


# --------------------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face, in the pixel coordinates of the analysed image.

    ``embedding`` is insightface's raw ``embedding`` (not ``normed_embedding``): that is what
    InstantID's Resampler was trained on. Arrays are read-only so cached results can be shared.
    """

    bbox: np.ndarray  # float32 (4,): x1, y1, x2, y2
    kps: np.ndarray  # float32 (5, 2): image-left eye, image-right eye, nose, left/right mouth corner
    score: float
    embedding: np.ndarray  # float32 (512,)

    @property
    def area(self) -> float:
        """Bounding-box area in pixels (what "largest face" compares)."""
        x1, y1, x2, y2 = (float(v) for v in self.bbox)
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    @property
    def center_x(self) -> float:
        return float(self.bbox[0] + self.bbox[2]) / 2.0

    @property
    def center_y(self) -> float:
        return float(self.bbox[1] + self.bbox[3]) / 2.0


def _frozen(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.array(arr, dtype=np.float32).reshape(shape)
    out.flags.writeable = False
    return out


# --------------------------------------------------------------------------------------
# Dependencies and providers
# --------------------------------------------------------------------------------------


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        msg = (
            "InstantID needs the Python package 'onnxruntime' to run the face models, but it cannot be "
            f"imported ({exc}). {_INSTALL_HINT}"
        )
        raise DependencyError(msg) from exc
    return onnxruntime


def _import_insightface() -> tuple[Any, Any]:
    """Return insightface's ``FaceAnalysis`` and ``Face`` classes, or explain what is missing."""
    _import_onnxruntime()
    # insightface 0.7.x imports albumentations, which otherwise asks pypi.org for a newer
    # version at import time; the face analyzer must stay offline.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        from insightface.app import FaceAnalysis
        from insightface.app.common import Face as InsightFace
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if missing and missing.split(".")[0] != "insightface":
            msg = (
                f"The Python package 'insightface' is installed but cannot be imported because its "
                f"dependency '{missing}' is missing. {_INSTALL_HINT}"
            )
        else:
            msg = (
                f"InstantID needs the Python package 'insightface' for face analysis, but it cannot be "
                f"imported ({exc}). {_INSTALL_HINT}"
            )
        raise DependencyError(msg) from exc
    return FaceAnalysis, InsightFace


def _normalize_providers(requested: ProvidersLike) -> tuple[str, ...]:
    """Map "cpu"/"cuda"/"rocm"/"coreml" (or full ONNX Runtime names, or a comma-separated
    list of them as the ``--instantid-providers`` flag gives) to provider names."""
    if requested is None:
        requested = "cpu"
    items = [p for p in requested.split(",") if p.strip()] if isinstance(requested, str) else list(requested)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            msg = f"Face analyzer providers must be names such as 'cpu' or 'cuda', got {item!r}."
            raise InvalidInputError(msg)
        key = item.strip()
        name = PROVIDER_ALIASES.get(key.lower())
        if name is None and key.endswith("ExecutionProvider"):
            name = key
        if name is None:
            msg = (
                f"Unknown face analyzer provider '{item}'. Use one of "
                f"{', '.join(repr(a) for a in PROVIDER_ALIASES)} or an ONNX Runtime provider name."
            )
            raise InvalidInputError(msg)
        if name not in names:
            names.append(name)
    return tuple(names) or (CPU_PROVIDER,)


_WARNED: set[tuple[str, ...]] = set()
_WARNED_LOCK = threading.Lock()


def resolve_providers(requested: ProvidersLike = "cpu") -> tuple[str, ...]:
    """The providers to hand insightface: the requested ones that this ONNX Runtime has, then CPU.

    Asking for a GPU provider that is not available falls back to the CPU with one WARNING
    (once per process and request), since the face models run fine on the CPU.
    """
    names = _normalize_providers(requested)
    available = set(_import_onnxruntime().get_available_providers())
    chosen = [n for n in names if n != CPU_PROVIDER and n in available]
    unavailable = [n for n in names if n != CPU_PROVIDER and n not in available]
    if unavailable:
        with _WARNED_LOCK:
            first = names not in _WARNED
            _WARNED.add(names)
        if first:
            logger.warning(
                "ONNX Runtime here has no %s (available: %s); the face analyzer runs on %s instead. "
                "Install onnxruntime-gpu (NVIDIA) or the matching onnxruntime build to use the GPU.",
                " or ".join(unavailable),
                ", ".join(sorted(available)) or "none",
                " + ".join([*chosen, "the CPU"]),
            )
    return (*chosen, CPU_PROVIDER)


# --------------------------------------------------------------------------------------
# Model and result caches
# --------------------------------------------------------------------------------------


@dataclass
class _Loaded:
    """One loaded insightface app and the two models we call directly."""

    key: tuple[str, tuple[str, ...]]
    app: Any
    detector: Any
    recognizer: Any
    face_cls: Any
    lock: threading.Lock
    pack: FacePack = ANTELOPEV2


_APPS: dict[tuple[str, tuple[str, ...]], _Loaded] = {}
_APPS_LOCK = threading.Lock()
_RESULTS: OrderedDict[tuple[Any, ...], tuple[Face, ...]] = OrderedDict()
_RESULTS_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget loaded models and cached results (after replacing model files, or in tests)."""
    with _APPS_LOCK:
        _APPS.clear()
    with _RESULTS_LOCK:
        _RESULTS.clear()
    with _WARNED_LOCK:
        _WARNED.clear()


def _load(pack: Path, providers: tuple[str, ...], spec: FacePack = ANTELOPEV2) -> _Loaded:
    """Build insightface's ``FaceAnalysis`` for the ``spec`` pack in folder ``pack`` (detector +
    recognizer only)."""
    face_analysis_cls, face_cls = _import_insightface()
    # The pack folder is passed as an absolute ``name``: insightface 2.x would otherwise first
    # try a folder called "antelopev2" in the current directory, and 0.7.3 joins an absolute
    # name to root/models unchanged. ``det_size`` is explicit because 2.x defaults to
    # multi-scale detection.
    captured = io.StringIO()
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(captured):  # 0.7.3 prints "find model: ..." lines
            app = face_analysis_cls(
                name=str(pack),
                root=str(pack.parent.parent),
                providers=list(providers),
                allowed_modules=["detection", "recognition"],
            )
            app.prepare(ctx_id=0, det_thresh=DET_THRESH, det_size=(DET_SIZE, DET_SIZE))
    except Exception as exc:
        msg = (
            f"insightface could not load the {spec.name} face models in '{pack}' "
            f"({type(exc).__name__}: {exc}). A file is probably damaged or incomplete: "
            "download the pack again and replace the files."
        )
        raise ModelFileError(msg) from exc
    finally:
        for line in captured.getvalue().splitlines():
            if line.strip():
                logger.debug("insightface: %s", line.strip())
    models = getattr(app, "models", {})
    for task, filename in (("detection", spec.detector), ("recognition", spec.recognizer)):
        if task not in models:
            msg = (
                f"insightface found no {task} model among the files in '{pack}'. "
                f"Replace {filename} with the file from the {spec.name} pack."
            )
            raise ModelFileError(msg)
    # insightface's face_align calls a scikit-image method deprecated in 0.26; the warning is
    # noise for users.
    warnings.filterwarnings(
        "ignore", message=".*`estimate` is deprecated", category=FutureWarning, module=r"insightface\."
    )
    logger.info(
        "Loaded the %s face models from %s on %s in %.1f s",
        spec.name,
        pack,
        ", ".join(providers),
        time.perf_counter() - started,
    )
    return _Loaded(
        key=(str(pack), providers),
        app=app,
        detector=models["detection"],
        recognizer=models["recognition"],
        face_cls=face_cls,
        lock=threading.Lock(),
        pack=spec,
    )


def _get_loaded(pack: Path, providers: tuple[str, ...], spec: FacePack = ANTELOPEV2) -> _Loaded:
    key = (str(pack), providers)  # each pack has its own folder, <root>/models/<pack name>
    with _APPS_LOCK:
        loaded = _APPS.get(key)
        if loaded is None:
            loaded = _load(pack, providers, spec)
            _APPS[key] = loaded
        return loaded


def _cache_get(key: tuple[Any, ...]) -> tuple[Face, ...] | None:
    with _RESULTS_LOCK:
        faces = _RESULTS.get(key)
        if faces is not None:
            _RESULTS.move_to_end(key)
        return faces


def _cache_put(key: tuple[Any, ...], faces: tuple[Face, ...]) -> None:
    with _RESULTS_LOCK:
        _RESULTS[key] = faces
        _RESULTS.move_to_end(key)
        while len(_RESULTS) > RESULT_CACHE_SIZE:
            _RESULTS.popitem(last=False)


# --------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------


def _run(loaded: _Loaded, bgr: np.ndarray, size: int, offset: int = 0) -> list[Face]:
    """Detect at ``size``×``size`` and embed every face, like ``FaceAnalysis.get``.

    The detector size is passed per call instead of re-``prepare``-ing the shared app, so a
    retry never changes (or has to restore) the cached analyzer's state.
    """
    with loaded.lock:
        bboxes, kpss = loaded.detector.detect(bgr, input_size=(size, size), max_num=0, metric="default")
        if bboxes.shape[0] and kpss is None:
            spec = loaded.pack
            msg = (
                f"The {spec.name} face detector returned no keypoints: the detector file is not "
                f"{spec.detector}. Replace it with the file from the {spec.name} pack."
            )
            raise ModelFileError(msg)
        faces: list[Face] = []
        for i in range(bboxes.shape[0]):
            record = loaded.face_cls(bbox=bboxes[i, 0:4], kps=kpss[i], det_score=bboxes[i, 4])
            loaded.recognizer.get(bgr, record)
            embedding = np.asarray(record.embedding, dtype=np.float32).reshape(-1)
            if embedding.shape != (EMBEDDING_DIM,):
                spec = loaded.pack
                msg = (
                    f"The {spec.name} face recognizer returned a {embedding.shape[0]}-d embedding "
                    f"instead of {EMBEDDING_DIM}-d: replace {spec.recognizer} with the file from the pack."
                )
                raise ModelFileError(msg)
            shift = np.float32(offset)
            faces.append(
                Face(
                    bbox=_frozen(np.asarray(record.bbox, np.float32) - shift, (4,)),
                    kps=_frozen(np.asarray(record.kps, np.float32) - shift, (5, 2)),
                    score=float(record.det_score),
                    embedding=_frozen(embedding, (EMBEDDING_DIM,)),
                )
            )
    faces.sort(key=lambda f: (f.center_x, f.center_y))
    return faces


class FaceAnalyzer:
    """Detects faces and computes identity embeddings with the antelopev2 pack under ``root``.

    ``root`` is the folder holding ``models/antelopev2/`` (insightface's convention).
    Construction is cheap: files are checked and models loaded on the first :meth:`analyze`.
    ``providers``: "cpu" (default), "cuda", "rocm", "coreml", ONNX Runtime provider names, or a
    list of them; unavailable ones fall back to the CPU with one warning. ``pack`` selects
    another insightface pack of :mod:`.packs` (``models/<pack name>/`` under ``root``).
    """

    def __init__(
        self, root: str | Path, providers: ProvidersLike = "cpu", pack: FacePack = ANTELOPEV2
    ) -> None:
        self.root = Path(root).expanduser()
        self._requested = _normalize_providers(providers)
        self.pack = pack

    def __repr__(self) -> str:
        extra = "" if self.pack == ANTELOPEV2 else f", pack={self.pack.name!r}"
        return f"FaceAnalyzer(root={str(self.root)!r}, providers={list(self._requested)!r}{extra})"

    @property
    def providers(self) -> tuple[str, ...]:
        """The ONNX Runtime providers actually used (requested and available, then CPU)."""
        return resolve_providers(self._requested)

    def load(self) -> None:
        """Check the files and load the models now (e.g. for a "check models" button)."""
        self._loaded()

    def _loaded(self) -> _Loaded:
        folder = validate_pack(self.root, self.pack)
        return _get_loaded(folder, self.providers, self.pack)

    def analyze(
        self, image: ImageLike, channel_order: ChannelOrder = "rgb", *, label: str = "the image"
    ) -> list[Face]:
        """All faces in ``image``, ordered left to right (by bbox centre x).

        ``channel_order`` says how a numpy image is laid out ("bgr" for OpenCV arrays); PIL
        images, RGBA and grayscale are converted. ``label`` names the image in log lines.
        """
        check_analysable(image, label)
        bgr = to_bgr_array(image, channel_order)
        loaded = self._loaded()
        digest = hashlib.blake2b(bgr.tobytes(), digest_size=16).hexdigest()
        key = (loaded.key, digest, bgr.shape, DET_SIZE, DET_THRESH, RETRY_SIZES, PAD_FRACTION)
        cached = _cache_get(key)
        if cached is not None:
            logger.debug("Face analysis of %s: cached result (%d faces)", label, len(cached))
            return list(cached)
        faces = _run(loaded, bgr, DET_SIZE)
        if not faces:
            faces = self._retry_padded(loaded, bgr, label)
        _cache_put(key, tuple(faces))
        return faces

    @staticmethod
    def _retry_padded(loaded: _Loaded, bgr: np.ndarray, label: str) -> list[Face]:
        """SCRFD misses faces that fill the frame: add a black border and try smaller sizes.

        Black matches the zero border insightface uses when aligning, so the embedding of a
        face found this way equals the one from the unpadded image.
        """
        pad = max(1, round(PAD_FRACTION * max(bgr.shape[:2])))
        padded = np.pad(bgr, ((pad, pad), (pad, pad), (0, 0)))
        for size in RETRY_SIZES:
            faces = _run(loaded, padded, size, offset=pad)
            if faces:
                logger.info(
                    "No face found in %s at detector size %d; found %d after padding the image by %d px, "
                    "at detector size %dx%d",
                    label,
                    DET_SIZE,
                    len(faces),
                    pad,
                    size,
                    size,
                )
                return faces
        logger.info("No face found in %s, even after padding it and trying detector sizes 640 to 192", label)
        return []

    def analyze_one(
        self,
        image: ImageLike,
        mode: ChoiceMode = "largest",
        index: int = 0,
        *,
        label: str = "reference image 1",
        channel_order: ChannelOrder = "rgb",
    ) -> Face:
        """The one face InstantID should use from ``image`` (see :func:`choose_face`)."""
        faces = self.analyze(image, channel_order, label=label)
        if not faces:
            msg = (
                f"No face was found in {label}. Use a photo in which the face is clearly visible, "
                "reasonably large, roughly facing the camera and not cut off by the edges. If the "
                "face fills the whole photo, add a plain border around it (pad the photo) and try again."
            )
            raise NoFaceError(msg)
        return choose_face(faces, mode, index, label=label)


def check_analysable(image: ImageLike, label: str) -> None:
    """Refuse images too small to hold a face the detector can use, or too large to analyse."""
    width, height = image_size(image)
    if min(width, height) < MIN_IMAGE_SIDE:
        msg = (
            f"{label[0].upper()}{label[1:]} is only {width}×{height} pixels: use a photo in which the face "
            "itself is at least about 64 pixels wide."
        )
        raise InvalidInputError(msg)
    if width * height > MAX_IMAGE_PIXELS:
        msg = (
            f"{label[0].upper()}{label[1:]} has {width * height / 1e6:.1f} megapixels; InstantID analyses "
            f"images of up to {MAX_IMAGE_PIXELS / 1e6:g} megapixels: scale it down first."
        )
        raise InvalidInputError(msg)


def choose_face(
    faces: Sequence[Face], mode: ChoiceMode = "largest", index: int = 0, *, label: str = "the image"
) -> Face:
    """Pick one face: ``"largest"`` bbox (the reference's ``sorted(key=area)[-1]``), the
    ``index``-th from the left (0 = leftmost), or the ``"highest_score"`` detection."""
    if not faces:
        msg = f"No face was found in {label}; use a photo with a clearly visible face."
        raise NoFaceError(msg)
    if mode == "largest":
        return sorted(faces, key=lambda f: f.area)[-1]
    if mode == "highest_score":
        return max(faces, key=lambda f: f.score)
    if mode == "index":
        if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
            msg = f"Face index must be a whole number ≥ 0 (0 = leftmost face), got {index!r} for {label}."
            raise InvalidInputError(msg)
        if index >= len(faces):
            found = f"{len(faces)} face{'s' if len(faces) != 1 else ''}"
            msg = (
                f"Face index {index} requested but only {found} found in {label} (faces are counted "
                f"from 0, left to right). Use an index from 0 to {len(faces) - 1}, "
                "or choose the largest face."
            )
            raise InvalidInputError(msg)
        return faces[int(index)]
    msg = f"Unknown face choice {mode!r}; use 'largest', 'index' or 'highest_score'."
    raise InvalidInputError(msg)


def mean_embedding(
    embeddings: Sequence[np.ndarray | Face], weights: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """Weighted mean of raw 512-d face embeddings, for several reference photos of one person.

    Averaging happens before the Resampler, on the raw (not L2-normalised) vectors, as the
    InstantID authors advise.
    """
    if len(embeddings) == 0:
        msg = "No face embeddings to average: give at least one reference image with a face."
        raise InvalidInputError(msg)
    rows = []
    for i, item in enumerate(embeddings):
        vec = np.asarray(item.embedding if isinstance(item, Face) else item, dtype=np.float64)
        if vec.size != EMBEDDING_DIM or vec.ndim > 2 or (vec.ndim == 2 and 1 not in vec.shape):
            msg = (
                f"Face embedding {i + 1} has shape {tuple(vec.shape)}; expected ({EMBEDDING_DIM},) "
                "from insightface's antelopev2 recognizer."
            )
            raise InvalidInputError(msg)
        if not np.all(np.isfinite(vec)):
            msg = f"Face embedding {i + 1} contains NaN or infinite values."
            raise InvalidInputError(msg)
        rows.append(vec.reshape(EMBEDDING_DIM))
    stacked = np.stack(rows)
    if weights is None:
        return stacked.mean(axis=0).astype(np.float32)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != stacked.shape[0]:
        msg = f"Got {w.shape[0]} weights for {stacked.shape[0]} face embeddings; give one weight per image."
        raise InvalidInputError(msg)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or float(w.sum()) <= 0.0:
        msg = f"Face embedding weights must be ≥ 0 and not all 0, got {w.tolist()}."
        raise InvalidInputError(msg)
    return (w @ stacked / w.sum()).astype(np.float32)
