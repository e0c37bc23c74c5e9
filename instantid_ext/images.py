"""Turn whatever image a caller has into the one layout the core works on.

The WebUI hands us PIL images, gradio numpy arrays, RGBA uploads and grayscale scans;
insightface wants BGR uint8. Everything goes through :func:`to_rgb_array` first so each
consumer sees an ``H×W×3`` RGB ``uint8`` array.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import warnings
from pathlib import Path, PurePath
from typing import Literal, NoReturn

import numpy as np
from PIL import Image, ImageOps

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


def image_size(image: ImageLike) -> tuple[int, int]:
    """``(width, height)`` of an image without converting it (no pixel copy)."""
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, np.ndarray) and image.ndim >= 2:
        return int(image.shape[1]), int(image.shape[0])
    rgb = to_rgb_array(image)  # raises the usual message for anything else
    return int(rgb.shape[1]), int(rgb.shape[0])


def to_bgr_array(image: ImageLike, channel_order: ChannelOrder = "rgb") -> np.ndarray:
    """Like :func:`to_rgb_array`, in the BGR order OpenCV and insightface use."""
    return np.ascontiguousarray(to_rgb_array(image, channel_order)[..., ::-1])


# --- Decoding whatever a UI control or an API caller sends ----------------------------------

_DATA_URL = re.compile(r"^data:image/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".heic")
_EXIF_ORIENTATION = 0x0112
#: Largest image analysed, in pixels: far above any photo (a 50-MP image is ~150 MB as RGB).
MAX_IMAGE_PIXELS = 50_000_000
#: Most reference photos one argument takes (their embeddings are averaged; a few suffice).
MAX_REFERENCE_IMAGES = 32
#: Longest string taken for a file path (and refused); anything longer is base64.
_MAX_PATH_CHARS = 4096
#: Gallery pairs, gradio dicts and file objects nest; real values never go deeper than this.
_MAX_NESTING = 4
#: Pillow's decode errors; a corrupt or truncated upload raises one of these.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _describe_value(value: object) -> str:
    """Name a bad value without echoing it: base64 payloads are megabytes."""
    if isinstance(value, str):
        return f"a {len(value)}-character string" if len(value) > 40 else repr(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"{len(value)} bytes"
    if isinstance(value, np.ndarray):
        return f"an array of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        keys = ", ".join(repr(k) for k in list(value)[:6])
        return f"a dict with keys {keys}" if keys else "an empty dict"
    return f"a value of type {type(value).__name__}"


def _upright_rgb(image: Image.Image) -> Image.Image:
    """Apply the EXIF rotation (phone photos) and flatten to RGB as :func:`to_rgb_array` does."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except _DECODE_ERRORS:  # a broken EXIF block must not make a usable photo unreadable
        orientation = 1
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    return Image.fromarray(to_rgb_array(image))


def _is_file(path: Path) -> bool:
    """``Path.is_file`` that answers False for names the OS rejects (too long, NUL bytes)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _too_large(what: str, size: tuple[int, int] | None) -> InvalidInputError:
    shown = "" if size is None else f" ({size[0]}×{size[1]})"
    msg = (
        f"{what} is too large{shown}: the limit is {MAX_IMAGE_PIXELS // 1_000_000} megapixels. "
        "Scale it down; face analysis does not need more."
    )
    return InvalidInputError(msg)


def _open_bytes(data: bytes, what: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise _too_large(what, None) from err
    except _DECODE_ERRORS as err:
        msg = (
            f"{what} is not an image Pillow can read ({len(data)} bytes; {type(err).__name__}): "
            "send a PNG, JPEG or WebP."
        )
        raise InvalidInputError(msg) from err
    width, height = opened.size  # read from the header: nothing is decoded yet
    if width * height > MAX_IMAGE_PIXELS:
        raise _too_large(what, (width, height))
    try:
        opened.load()
        upright = _upright_rgb(opened)
        # A plain copy drops the decoder and its buffer, and compares equal to other images.
        return upright.copy() if upright is opened else upright
    except _DECODE_ERRORS as err:
        msg = (
            f"{what} is not an image Pillow can read ({len(data)} bytes; {type(err).__name__}): "
            "send a PNG, JPEG or WebP."
        )
        raise InvalidInputError(msg) from err


def _refuse_path(path: object) -> NoReturn:
    """Image files on the server are never read: an API caller could name any file, also one in
    the upload folder that another user's upload left there. The panel hands uploads over as
    bytes, so only a caller naming a file gets here."""
    msg = (
        f"Image files on the server are not read ('{path}'): send the image itself, as base64 or a "
        "data:image/...;base64, URL."
    )
    raise InvalidInputError(msg)


def b64decode_lenient(text: str) -> bytes:
    """Standard or URL-safe base64, tolerating whitespace and missing padding.

    Raises ``ValueError`` (``binascii.Error``) on anything else; callers word the message.
    """
    payload = re.sub(r"\s+", "", text)
    payload += "=" * (-len(payload) % 4)
    if "-" in payload or "_" in payload:
        return base64.urlsafe_b64decode(payload)
    return base64.b64decode(payload, validate=True)


def _decode_base64(text: str) -> bytes:
    try:
        return b64decode_lenient(text)
    except (binascii.Error, ValueError) as err:
        msg = f"{_describe_value(text)} is neither base64 image data nor a data:image/...;base64, URL."
        raise InvalidInputError(msg) from err


def _decode_string(text: str) -> Image.Image:
    text = text.strip()
    if not text:
        msg = "The image is an empty string: send base64 image data or a data:image/...;base64, URL."
        raise InvalidInputError(msg)
    lowered = text[:16].lower()
    if lowered.startswith(("http://", "https://")):
        msg = (
            "Image URLs are not downloaded: send the image itself as base64 "
            "(plain or as a data:image/png;base64, URL)."
        )
        raise InvalidInputError(msg)
    if lowered.startswith("data:"):
        match = _DATA_URL.match(text)
        if match is None:
            msg = f"{_describe_value(text)} is a data URL but not a base64 image (data:image/...;base64,)."
            raise InvalidInputError(msg)
        return _open_bytes(_decode_base64(text[match.end() :]), "The data URL")
    if len(text) <= _MAX_PATH_CHARS and "\n" not in text:
        path = Path(text).expanduser()
        if text.lower().endswith(_IMAGE_SUFFIXES) or _is_file(path):
            _refuse_path(text)
    return _open_bytes(_decode_base64(text), "The base64 data")


def _decode_mapping(value: dict, depth: int) -> Image.Image:
    """gradio's image dicts: ``{"image", "mask"}``, gallery items and file data (3.x and 4.x)."""
    if value.get("image") is not None:
        return _decode(value["image"], depth + 1)
    for key in ("path", "name"):
        candidate = value.get(key)
        if isinstance(candidate, str) and candidate and (value.get("is_file") or _is_file(Path(candidate))):
            _refuse_path(candidate)
    for key in ("data", "path", "name", "url"):
        candidate = value.get(key)
        if candidate is not None and candidate != "":
            return _decode(candidate, depth + 1)
    msg = f"Got {_describe_value(value)} but no image in it (expected 'image', 'path', 'name' or 'data')."
    raise InvalidInputError(msg)


def _decode(value: object, depth: int) -> Image.Image:
    if depth > _MAX_NESTING:
        msg = f"The image is nested too deeply ({_describe_value(value)})."
        raise InvalidInputError(msg)
    if isinstance(value, Image.Image):
        return _upright_rgb(value)
    if isinstance(value, np.ndarray):
        return Image.fromarray(to_rgb_array(value))
    if isinstance(value, str):
        return _decode_string(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return _open_bytes(bytes(value), "The image data")
    if isinstance(value, PurePath | os.PathLike):
        _refuse_path(os.fspath(value))
    if isinstance(value, dict):
        return _decode_mapping(value, depth)
    if isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[1], str | None):
        return _decode(value[0], depth + 1)  # a gallery entry: (image or path, caption)
    for attr in ("path", "name"):  # gr.File's temp-file wrapper, gradio 4 FileData
        candidate = getattr(value, attr, None)
        if isinstance(candidate, str) and candidate:
            _refuse_path(candidate)
    if value is None:
        msg = "No image was given."
        raise InvalidInputError(msg)
    msg = (
        f"Cannot read an image from {_describe_value(value)}: send a base64 string, a data:image/...;base64, "
        "URL, a PIL image or an H×W(×3/×4) array."
    )
    raise InvalidInputError(msg)


def decode_image(value: object) -> Image.Image:
    """Return any image a UI control or an API caller can send as a PIL RGB image.

    Takes PIL images, numpy arrays (H×W, H×W×3, H×W×4), base64 strings, ``data:image/…;base64,``
    URLs, raw bytes, gradio's ``{"image", "mask"}`` dicts, its inline file dicts (``data``) and
    gallery entries ``(image, caption)``. EXIF rotation is applied and alpha is composited over
    black. http(s) URLs and files on the server (paths, gradio's file dicts and objects that name
    one) are refused: the extension never goes to the network, and an API caller cannot make it
    read a file. Raises
    :class:`InvalidInputError` with a message that never echoes the image data.
    """
    return _decode(value, 0)


def encode_image_png_base64(img: ImageLike) -> str:
    """PNG, base64-encoded without a ``data:`` prefix: what the WebUI API sends and expects."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(to_rgb_array(img))
    elif not isinstance(img, Image.Image):
        msg = f"Expected a PIL image or a numpy array, got {type(img).__name__}."
        raise InvalidInputError(msg)
    if img.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
