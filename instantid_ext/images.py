"""Turn whatever image a caller has into the one layout the core works on.

The WebUI hands us PIL images, gradio numpy arrays, RGBA uploads and grayscale scans;
insightface wants BGR uint8. Everything goes through :func:`to_rgb_array` first so each
consumer sees an ``H×W×3`` RGB ``uint8`` array.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

from .errors import InvalidInputError

ImageLike = Image.Image | np.ndarray
ChannelOrder = Literal["rgb", "bgr"]


def _float_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (the usual tensor convention) or [0, 255] become uint8."""
    finite = arr[np.isfinite(arr)]
    scale = 255.0 if finite.size and float(finite.max()) <= 1.0 else 1.0
    return np.clip(np.nan_to_num(arr) * scale + 0.5, 0, 255).astype(np.uint8)


def to_rgb_array(image: ImageLike, channel_order: ChannelOrder = "rgb") -> np.ndarray:
    """Return ``image`` as a C-contiguous ``H×W×3`` RGB ``uint8`` array.

    ``channel_order`` says how a numpy input is laid out ("bgr" for OpenCV images);
    PIL images carry their own mode. Alpha is composited over black, as the
    keypoint hint and the face detector would see a transparent background.
    """
    if isinstance(image, Image.Image):
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            arr = np.asarray(image)
            rgb = arr[..., :3].astype(np.float32) * (arr[..., 3:4].astype(np.float32) / 255.0)
            return np.ascontiguousarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    if not isinstance(image, np.ndarray):
        msg = f"Expected a PIL image or a numpy array, got {type(image).__name__}."
        raise InvalidInputError(msg)
    arr = image
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "f":
        arr = _float_to_uint8(arr)
    elif arr.dtype != np.uint8:
        if arr.dtype.kind in "iu" and arr.size and int(arr.max()) > 255:
            arr = (arr.astype(np.float64) / float(np.iinfo(arr.dtype).max) * 255.0 + 0.5).astype(np.uint8)
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
        msg = f"Expected an image array of shape H×W, H×W×3 or H×W×4, got {tuple(image.shape)}."
        raise InvalidInputError(msg)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = np.clip(arr[..., :3].astype(np.float32) * alpha + 0.5, 0, 255).astype(np.uint8)
    if channel_order == "bgr":
        arr = arr[..., ::-1]
    return np.ascontiguousarray(arr)


def to_bgr_array(image: ImageLike, channel_order: ChannelOrder = "rgb") -> np.ndarray:
    """Like :func:`to_rgb_array`, in the BGR order OpenCV and insightface use."""
    return np.ascontiguousarray(to_rgb_array(image, channel_order)[..., ::-1])
