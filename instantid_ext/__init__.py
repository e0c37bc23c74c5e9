"""InstantID for the AUTOMATIC1111 WebUI: the core, importable without the WebUI.

The host glue (A1111 and ControlNet) lives in :mod:`instantid_ext.webui`; everything
exported here works in any Python process with torch installed. ``python -m instantid_ext``
checks an install and analyses faces (:mod:`.cli`); it starts even when torch, numpy or
OpenCV is missing, so that it can say so.
"""

from __future__ import annotations

from .errors import (
    DependencyError,
    IncompatibleModelError,
    InstantIDError,
    InvalidInputError,
    ModelFileError,
    NoFaceError,
)

try:
    from .faces.analysis import Face, FaceAnalyzer, choose_face, mean_embedding
    from .faces.identity import Identity, IdentityStore, load_identity, save_identity
    from .method.attention import IPAttentionPatch
    from .method.ip_adapter import IPAdapter, load_ip_adapter
    from .method.keypoints import draw_kps, kps_image_for_output, map_points
    from .method.resampler import Resampler
    from .method.rows import RowRouter
except ImportError as _missing:  # torch, numpy or OpenCV is missing: `python -m instantid_ext doctor` says so
    _IMPORT_ERROR: ImportError | None = _missing
else:
    _IMPORT_ERROR = None


def __getattr__(name: str) -> object:
    """Only reached for a public name that could not be imported: raise the original error."""
    if _IMPORT_ERROR is not None and name in __all__:
        raise _IMPORT_ERROR
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


__version__ = "0.1.0"

__all__ = [
    "DependencyError",
    "Face",
    "FaceAnalyzer",
    "IPAdapter",
    "IPAttentionPatch",
    "Identity",
    "IdentityStore",
    "IncompatibleModelError",
    "InstantIDError",
    "InvalidInputError",
    "ModelFileError",
    "NoFaceError",
    "Resampler",
    "RowRouter",
    "__version__",
    "choose_face",
    "draw_kps",
    "kps_image_for_output",
    "load_identity",
    "load_ip_adapter",
    "map_points",
    "mean_embedding",
    "save_identity",
]
