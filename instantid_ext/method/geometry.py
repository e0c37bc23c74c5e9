"""Where a point of some image lands on the canvas the WebUI actually samples.

A keypoint found in a photo must be drawn where that photo's pixels end up in the latent the
sampler works on, or IdentityNet pulls the face somewhere else. The WebUI moves pixels with
a few axis-aligned operations — the img2img resize modes, the "Only masked" crop around the
inpaint mask, the hires-fix upscale and its centred crop — so every such mapping is an
:class:`Frame`: ``x' = sx·x + bx``, ``y' = sy·y + by`` onto a canvas of a known size.
Frames compose (:meth:`Frame.then`), which lets the host glue describe "init image → crop →
sampled canvas → hires canvas" as one object and the core draw the hint from it.

Coordinates follow :mod:`.keypoints`: pixel centres, ``(x, y)``, sizes ``(width, height)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .keypoints import ResizeModeLike, _as_points, _check_size, resize_placement

Size = tuple[int, int]


@dataclass(frozen=True)
class Frame:
    """An axis-aligned affine map from an image's pixel coordinates onto a canvas of ``size``."""

    scale: tuple[float, float]
    offset: tuple[float, float]
    size: Size
    """``(width, height)`` of the canvas the points land on."""

    @classmethod
    def identity(cls, size: Size) -> Frame:
        """The canvas itself (txt2img: the reference photo is laid out by its own frame)."""
        return cls((1.0, 1.0), (0.0, 0.0), _check_size(size, "canvas size"))

    @classmethod
    def resize(cls, src_size: Size, dst_size: Size, mode: ResizeModeLike) -> Frame:
        """What the WebUI's ``images.resize_image(mode, …)`` does to ``src_size`` pixels."""
        src_w, src_h = _check_size(src_size, "source size")
        (scaled_w, scaled_h), (off_x, off_y) = resize_placement(src_size, dst_size, mode)
        sx, sy = scaled_w / src_w, scaled_h / src_h
        # Pixel centres map to pixel centres: x' = (x + 0.5)·s − 0.5 + offset.
        return cls((sx, sy), (0.5 * sx - 0.5 + off_x, 0.5 * sy - 0.5 + off_y), _check_size(dst_size))

    @classmethod
    def crop(cls, box: tuple[int, int, int, int]) -> Frame:
        """Cutting the pixel box ``(x1, y1, x2, y2)`` out of an image (``PIL.Image.crop``)."""
        x1, y1, x2, y2 = (int(v) for v in box)
        return cls((1.0, 1.0), (float(-x1), float(-y1)), _check_size((x2 - x1, y2 - y1), "crop size"))

    def then(self, other: Frame) -> Frame:
        """This frame followed by ``other`` (whose source is this frame's canvas)."""
        (sx, sy), (bx, by) = self.scale, self.offset
        (tx, ty), (cx, cy) = other.scale, other.offset
        return Frame((sx * tx, sy * ty), (bx * tx + cx, by * ty + cy), other.size)

    def map_points(self, points: object) -> np.ndarray:
        """``(N, 2)`` points mapped onto the canvas (float64; may lie outside it)."""
        pts = _as_points(points, "points").astype(np.float64)
        return pts * np.array(self.scale) + np.array(self.offset)

    def map_box(self, box: object) -> np.ndarray:
        """An ``(x1, y1, x2, y2)`` box mapped onto the canvas, unclipped."""
        corners = _as_points(box, "bounding box", (4,)).astype(np.float64).reshape(2, 2)
        (x1, y1), (x2, y2) = self.map_points(corners)
        return np.array([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)])


def points_inside(points: object, size: Size) -> np.ndarray:
    """Per point: does it lie on a canvas of ``size``?"""
    pts = _as_points(points, "points").astype(np.float64)
    width, height = _check_size(size)
    return (pts[:, 0] >= 0) & (pts[:, 0] <= width - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= height - 1)


def visible_fraction(box: object, size: Size) -> float:
    """How much of a box's area lies on a canvas of ``size`` (0 when the box is empty)."""
    x1, y1, x2, y2 = (float(v) for v in _as_points(box, "bounding box", (4,)))
    width, height = _check_size(size)
    area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
    if area <= 0:
        return 0.0
    inside_w = max(min(x2, width) - max(x1, 0.0), 0.0)
    inside_h = max(min(y2, height) - max(y1, 0.0), 0.0)
    return inside_w * inside_h / area
