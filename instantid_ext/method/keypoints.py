"""The IdentityNet condition image and the geometry that keeps it on the face.

IdentityNet was trained on one exact drawing of the five facial keypoints, so
:func:`draw_kps` reproduces the official InstantID ``draw_kps`` bit for bit, float
quirks included. The reference draws that image at the size of the face (or pose)
image; in the WebUI the output usually has another size, so the keypoints are mapped
with the same transform the WebUI applies to images for its resize modes and drawn
again at the output size (:func:`kps_image_for_output`): the face is never stretched,
and circles and sticks keep their trained 10 px and 4 px.

Coordinates follow insightface: ``(x, y)`` in pixels, where ``(i, j)`` is the centre of
the pixel in column ``i``, row ``j``. Sizes are ``(width, height)``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from enum import Enum
from typing import Any, NamedTuple

import cv2
import numpy as np
from PIL import Image

from ..errors import InvalidInputError

Color = tuple[float, float, float]
Size = tuple[int, int]

#: Keypoint colours in kps order (eyes red/green, nose blue, mouth corners yellow/magenta), RGB.
DEFAULT_COLORS: tuple[Color, ...] = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
#: Each stick joins a point to the nose and takes the colour of the point.
LIMB_SEQ: tuple[tuple[int, int], ...] = ((0, 2), (1, 2), (3, 2), (4, 2))
STICK_WIDTH = 4
CIRCLE_RADIUS = 10
#: The stick layer is dimmed to 60 % before the circles go on.
LIMB_DIM = 0.6
NUM_KPS = 5
#: Largest side we draw: beyond it the float64 canvas alone needs gigabytes.
MAX_SIDE = 16384
#: A keypoint further than this from the origin is a bug upstream, and OpenCV wants int32.
MAX_COORD = 1_000_000.0


class ResizeMode(str, Enum):
    """How the WebUI fits an image of one size into another (A1111 and ControlNet alike).

    Besides the members, :meth:`parse` takes A1111's img2img ``resize_mode`` ints
    (0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale = just resize),
    the UI labels in any case, and ControlNet's ``ResizeMode`` enum or its names.
    """

    JUST_RESIZE = "Just Resize"
    CROP_AND_RESIZE = "Crop and Resize"
    RESIZE_AND_FILL = "Resize and Fill"

    @classmethod
    def parse(cls, value: ResizeModeLike) -> ResizeMode:
        """Return the mode ``value`` stands for, or raise :class:`InvalidInputError`."""
        mode = _parse_resize_mode(value)
        if mode is None:
            msg = (
                f"Unknown resize mode {value!r}: use 'Just Resize', 'Crop and Resize', 'Resize and Fill' "
                "or A1111's 0-3."
            )
            raise InvalidInputError(msg)
        return mode

    @classmethod
    def _missing_(cls, value: object) -> ResizeMode | None:
        """Let ``ResizeMode(1)`` and ``ResizeMode("crop and resize")`` work like :meth:`parse`."""
        return _parse_resize_mode(value)


ResizeModeLike = ResizeMode | int | str

_MODE_BY_INT = {
    0: ResizeMode.JUST_RESIZE,
    1: ResizeMode.CROP_AND_RESIZE,
    2: ResizeMode.RESIZE_AND_FILL,
    3: ResizeMode.JUST_RESIZE,  # "Just resize (latent upscale)": the same geometry, resized as latents
}
_MODE_BY_NAME = {
    "just resize": ResizeMode.JUST_RESIZE,
    "just resize (latent upscale)": ResizeMode.JUST_RESIZE,
    "resize": ResizeMode.JUST_RESIZE,  # ControlNet's ResizeMode.RESIZE
    "crop and resize": ResizeMode.CROP_AND_RESIZE,
    "inner fit": ResizeMode.CROP_AND_RESIZE,  # ControlNet's ResizeMode.INNER_FIT
    "resize and fill": ResizeMode.RESIZE_AND_FILL,
    "outer fit": ResizeMode.RESIZE_AND_FILL,  # ControlNet's ResizeMode.OUTER_FIT
}


def _parse_resize_mode(value: object) -> ResizeMode | None:
    if isinstance(value, ResizeMode):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, Enum):  # ControlNet's own ResizeMode: its value is the UI label
        value = value.value
    if isinstance(value, str):
        key = " ".join(value.replace("_", " ").lower().split()).removeprefix("resizemode.")
        return _MODE_BY_NAME.get(key)
    try:
        index = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None
    return _MODE_BY_INT.get(index)


class Placement(NamedTuple):
    """Where the resized source lands on the output canvas.

    The source is resized to ``scaled_size`` and pasted with its top-left corner at
    ``offset`` (negative when cropped).
    """

    scaled_size: Size
    offset: tuple[int, int]


def _positive_int(value: object) -> int | None:
    """``value`` as an int if it is a positive integer (numpy ints too, bools and floats not)."""
    if isinstance(value, bool):
        return None
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None
    return number if number >= 1 else None


def _check_size(size: object, what: str = "size") -> Size:
    """``(width, height)`` as two positive ints; floats are refused rather than rounded."""
    try:
        width, height = (_positive_int(v) for v in size)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        width = height = None
    if width is None or height is None:
        msg = f"The {what} must be a (width, height) pair of positive integers, got {size!r}."
        raise InvalidInputError(msg)
    if max(width, height) > MAX_SIDE:
        msg = f"The {what} {width}×{height} is too large: each side must be at most {MAX_SIDE} px."
        raise InvalidInputError(msg)
    return width, height


def _as_points(points: Any, what: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A real-valued array of the given shape (``(N, 2)`` when ``shape`` is None), finite and sane."""
    try:
        arr = np.array(points)
    except (TypeError, ValueError) as exc:
        msg = f"The {what} must be an array of numbers, got {type(points).__name__}."
        raise InvalidInputError(msg) from exc
    expected = "(5, 2)" if shape is not None else "(N, 2)"
    bad_shape = arr.shape != shape if shape is not None else (arr.ndim != 2 or arr.shape[1] != 2)
    if bad_shape:
        msg = f"The {what} must have shape {expected}, got {arr.shape}."
        raise InvalidInputError(msg)
    if arr.dtype.kind not in "iuf":
        msg = f"The {what} must be numbers, got an array of dtype {arr.dtype}."
        raise InvalidInputError(msg)
    as_float = arr.astype(np.float64)
    if not np.isfinite(as_float).all():
        msg = f"The {what} contain NaN or infinite coordinates: {arr.tolist()}."
        raise InvalidInputError(msg)
    if as_float.size and float(np.abs(as_float).max()) > MAX_COORD:
        msg = f"The {what} lie absurdly far outside the image (|coordinate| > {MAX_COORD:g} px)."
        raise InvalidInputError(msg)
    return arr


def _check_colors(color_list: Sequence[Sequence[float]]) -> list[Color]:
    try:
        colors = [tuple(float(c) for c in color) for color in color_list]
    except (TypeError, ValueError):
        msg = "color_list must be a list of (r, g, b) colours."
        raise InvalidInputError(msg) from None
    if len(colors) < NUM_KPS or any(len(c) != 3 or not all(map(math.isfinite, c)) for c in colors):
        msg = f"color_list must hold {NUM_KPS} finite (r, g, b) colours, one per keypoint."
        raise InvalidInputError(msg)
    return colors  # type: ignore[return-value]


def draw_kps(
    size: tuple[int, int], kps: Any, color_list: Sequence[Sequence[float]] = DEFAULT_COLORS
) -> Image.Image:
    """Draw the five keypoints the way IdentityNet saw them in training; an RGB PIL image.

    ``size`` is ``(width, height)``; ``kps`` is a 5×2 array-like of pixel coordinates in
    insightface order (eyes, nose, mouth corners). The result is bit-identical to the
    official ``draw_kps`` on an image of that size: the stick geometry is computed in
    the dtype of ``kps`` (insightface gives float32) and coordinates are truncated
    toward zero with ``int()``, both as the reference does. The one exception is
    float16, which is drawn as float32 because the reference overflows on it.
    """
    width, height = _check_size(size)
    points = _as_points(kps, "keypoints", (NUM_KPS, 2))
    if points.dtype == np.float16:
        points = points.astype(np.float32)
    colors = _check_colors(color_list)

    # The reference draws the sticks on a float64 canvas; keeping it float64 matters for
    # colours that are not 0/255 integers, which are rounded only once, after the dimming.
    canvas = np.zeros((height, width, 3), dtype=np.float64)
    with np.errstate(over="ignore"):  # unsigned kps wrap around in the reference too
        for limb in LIMB_SEQ:
            x = points[list(limb), 0]
            y = points[list(limb), 1]
            # Same operations as the reference, in the same dtype: `** 2` and `** 0.5` on
            # float32 scalars are not always `x * x` and `sqrt`, and int() truncates.
            length = ((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
            polygon = cv2.ellipse2Poly(
                (int(np.mean(x)), int(np.mean(y))), (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1
            )
            cv2.fillConvexPoly(canvas, polygon, colors[limb[0]])
    image = (canvas * LIMB_DIM).astype(np.uint8)
    for index, (x, y) in enumerate(points):
        cv2.circle(image, (int(x), int(y)), CIRCLE_RADIUS, colors[index], -1)
    return Image.fromarray(image)


def resize_placement(src_size: Size, dst_size: Size, mode: ResizeModeLike) -> Placement:
    """Where A1111's ``images.resize_image`` puts a ``src_size`` image on a ``dst_size`` canvas.

    Integer arithmetic and float ratio comparisons are A1111's, so the mapping agrees with
    the pixels the WebUI produces. (ControlNet's own hint resize rounds the scaled size
    instead of flooring it, which can move things by at most one pixel.)
    """
    src_w, src_h = _check_size(src_size, "source size")
    width, height = _check_size(dst_size, "output size")
    resize_mode = ResizeMode.parse(mode)
    if resize_mode is ResizeMode.JUST_RESIZE:
        return Placement((width, height), (0, 0))
    ratio = width / height
    src_ratio = src_w / src_h
    if resize_mode is ResizeMode.CROP_AND_RESIZE:  # cover the canvas, crop the overflow
        scaled_w = width if ratio > src_ratio else src_w * height // src_h
        scaled_h = height if ratio <= src_ratio else src_h * width // src_w
    else:  # fit inside the canvas; A1111 fills the bands with stretched edges
        scaled_w = width if ratio < src_ratio else src_w * height // src_h
        scaled_h = height if ratio >= src_ratio else src_h * width // src_w
    # A1111 would fail on a 0-px side (extreme aspect ratios); one pixel keeps the maths defined.
    scaled_w, scaled_h = max(scaled_w, 1), max(scaled_h, 1)
    return Placement((scaled_w, scaled_h), (width // 2 - scaled_w // 2, height // 2 - scaled_h // 2))


def map_points(points: Any, src_size: Size, dst_size: Size, mode: ResizeModeLike) -> np.ndarray:
    """Map ``(N, 2)`` pixel coordinates on a ``src_size`` image onto the ``dst_size`` output.

    This is the geometric transform of the image resize (:func:`resize_placement`):
    pixel centres map to pixel centres, as in PIL and OpenCV resizing. Returns float64.
    """
    pts = _as_points(points, "points").astype(np.float64)
    src_w, src_h = _check_size(src_size, "source size")
    (scaled_w, scaled_h), (off_x, off_y) = resize_placement(src_size, dst_size, mode)
    scale = np.array([scaled_w / src_w, scaled_h / src_h])
    # x' = (x + 0.5) * s - 0.5 + offset, written so that an identity maps exactly.
    shift = 0.5 * scale - 0.5 + np.array([off_x, off_y], dtype=np.float64)
    return pts * scale + shift


def map_bbox(bbox: Any, src_size: Size, dst_size: Size, mode: ResizeModeLike) -> np.ndarray:
    """Map an ``(x1, y1, x2, y2)`` box like :func:`map_points`, clipped to the output."""
    box = _as_points(bbox, "bounding box", (4,)).astype(np.float64)
    width, height = _check_size(dst_size, "output size")
    (x1, y1), (x2, y2) = map_points(box.reshape(2, 2), src_size, dst_size, mode)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    return np.clip(np.array([x1, y1, x2, y2]), 0.0, [width, height, width, height])


def kps_image_for_output(
    kps: Any,
    src_size: Size,
    dst_size: Size,
    mode: ResizeModeLike,
    color_list: Sequence[Sequence[float]] = DEFAULT_COLORS,
) -> Image.Image:
    """The keypoint image drawn directly at the output size, keypoints mapped by ``mode``.

    Drawing after mapping (rather than resizing a drawing) keeps the trained 10 px circles
    and 4 px sticks sharp. Float keypoints keep their dtype, so with ``src_size ==
    dst_size`` this is exactly :func:`draw_kps` on the original keypoints.
    """
    points = _as_points(kps, "keypoints", (NUM_KPS, 2))
    mapped = map_points(points, src_size, dst_size, mode)
    if points.dtype.kind == "f":
        mapped = mapped.astype(points.dtype)
    return draw_kps(dst_size, mapped, color_list)


def face_mask(bbox: Any, size: Size) -> np.ndarray:
    """The reference's "enhance non-face region" mask: ``uint8`` H×W, 255 inside the face box.

    Coordinates are truncated with ``int()`` like the reference. Unlike it, negative
    coordinates (a face cut by the top or left edge) are clamped to 0, where the
    reference's slicing would wrap around and usually leave the mask empty.
    """
    box = _as_points(bbox, "bounding box", (4,))
    width, height = _check_size(size)
    x1, y1, x2, y2 = (max(int(v), 0) for v in box)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y1:y2, x1:x2] = 255
    return mask


def reference_resize(
    size: Size, max_side: int = 1280, min_side: int = 1024, base_pixel_number: int = 64
) -> Size:
    """The ``(width, height)`` the official ``resize_img`` gives an image of ``size``.

    The long side becomes ``max_side`` and both sides are floored to a multiple of
    ``base_pixel_number`` (``min_side`` only affects rounding): 800×600 → 1280×960,
    720×1280 → 704×1280, 3000×2000 → 1280×832. A side the reference would floor to 0
    is kept at ``base_pixel_number``, so the result is always a usable size.
    """
    w, h = _check_size(size)
    for name, value in (
        ("max_side", max_side),
        ("min_side", min_side),
        ("base_pixel_number", base_pixel_number),
    ):
        if _positive_int(value) is None:
            msg = f"{name} must be a positive integer, got {value!r}."
            raise InvalidInputError(msg)
    ratio = min_side / min(h, w)
    w, h = round(ratio * w), round(ratio * h)
    ratio = max_side / max(h, w)
    new_w = round(ratio * w) // base_pixel_number * base_pixel_number
    new_h = round(ratio * h) // base_pixel_number * base_pixel_number
    return max(new_w, base_pixel_number), max(new_h, base_pixel_number)
