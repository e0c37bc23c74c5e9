"""Where each person goes when one image holds several identities.

A *region spec* says where an identity belongs; :func:`build_regions` turns the specs of all
identities into binary float masks (H×W, 1 inside) at the output size and checks them.
Kinds:

- ``left`` / ``right`` (vertical bands) and ``top`` / ``bottom`` (horizontal bands). The
  canvas is cut into as many equal bands along the axis as there are identities using that
  axis, and at least two; in the order the identities are listed, ``left`` (``top``) takes
  the leftmost (topmost) band not yet taken and ``right`` (``bottom``) the rightmost
  (bottom-most). Two identities, or one split next to a box: halves. Three, ``left, left,
  right``: thirds 1, 2, 3; ``left, right, left``: thirds 1, 3, 2. Vertical and horizontal
  splits cross, so mixing them is reported as an overlap.
- ``box``: ``(x1, y1, x2, y2)`` as fractions of the output's width and height (0…1).
- ``mask``: an image whose bright pixels (any channel ≥ 128) are the region, mapped onto
  the output like every other image, with the resize mode (:func:`keypoints.resize_placement`);
  bands a fill mode adds are outside the region.
- ``auto``: a face found in the pose (or init) image, the n-th ``auto`` identity taking the
  n-th face from the left unless it names ``face_index``. The region is that face's box grown
  by :data:`AUTO_MARGIN` of its width (left and right) and height (top and bottom), mapped to
  the output with the resize mode. Where two grown boxes would overlap, both are cut at the
  middle of the gap between the two faces, along the axis on which the faces are further apart.

Keypoints for each region: :func:`place_reference_kps` fits an identity's own reference face
into its region (for the pose source "reference"); :func:`region_pose_kps` takes the pose
image's face inside each region, mapped to the output.

Coordinates follow :mod:`instantid_ext.method.keypoints`: ``(x, y)`` pixels, sizes ``(width, height)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ..errors import InvalidInputError
from ..images import ImageLike, to_rgb_array
from .keypoints import (
    NUM_KPS,
    ResizeMode,
    ResizeModeLike,
    _check_size,
    map_bbox,
    map_points,
    resize_placement,
)

Size = tuple[int, int]

MAX_IDENTITIES = 4
SPLIT_KINDS = ("left", "right", "top", "bottom")
REGION_KINDS = (*SPLIT_KINDS, "box", "mask", "auto")
AUTO_MARGIN = 0.25
"""An ``auto`` region is the face box grown by this fraction of its width/height on each side."""
REFERENCE_FACE_FRACTION = 0.5
"""A reference face placed into a region is scaled so that its box spans this fraction of the
region's width or height, whichever is reached first, and centred in the region's box."""
KPS_TO_FACE_BOX = 2.5
"""Without a face box, one is assumed this many times the size of the keypoints' extent
(eyes-to-mouth spans about 40 % of an insightface box), around their centre."""
MASK_THRESHOLD = 128


class FaceLike(Protocol):
    """A detected face: ``bbox`` (x1, y1, x2, y2) and ``kps`` (5, 2) in its image's pixels."""

    bbox: Any
    kps: Any


@dataclass(frozen=True)
class RegionSpec:
    """Where one identity goes. ``kind`` is one of :data:`REGION_KINDS`.

    ``box``: fractions ``(x1, y1, x2, y2)`` for ``box``; ``mask``: the image for ``mask``;
    ``face_index``: for ``auto``, the pose image's face to use (0 = leftmost), or None for
    "the next face from the left".
    """

    kind: str
    box: tuple[float, float, float, float] | None = None
    mask: ImageLike | None = None
    face_index: int | None = None

    @classmethod
    def parse(cls, value: RegionSpec | str | Sequence[float] | dict | ImageLike) -> RegionSpec:
        """A spec from a kind name, a 4-tuple of fractions (box), an image (mask) or a dict."""
        if isinstance(value, RegionSpec):
            return value
        if isinstance(value, str):
            return cls(value.strip().lower())
        if isinstance(value, dict):
            unknown = set(value) - {"kind", "box", "mask", "face_index"}
            if unknown or "kind" not in value:
                msg = (
                    f"A region needs a 'kind' and may have 'box', 'mask' and 'face_index'; got the keys "
                    f"{sorted(value)}."
                )
                raise InvalidInputError(msg)
            return cls(**value)
        if isinstance(value, (Image.Image, np.ndarray)):
            return cls("mask", mask=value)
        if isinstance(value, (tuple, list)) and len(value) == 4:
            return cls("box", box=tuple(value))  # type: ignore[arg-type]
        msg = (
            f"Cannot read a region from {type(value).__name__}; use one of {', '.join(REGION_KINDS)}, "
            "a (x1, y1, x2, y2) box in fractions, or a mask image."
        )
        raise InvalidInputError(msg)


@dataclass(frozen=True, eq=False)
class Region:
    """One identity's region at the output size."""

    index: int
    """Position of the identity (0-based) in the list given to :func:`build_regions`."""
    label: str
    """How the user described it, for messages: ``left``, ``box (…)``, ``mask``, ``auto: face 2 …``."""
    mask: np.ndarray
    """float32 H×W, 1 inside the region, 0 outside."""
    box: tuple[int, int, int, int]
    """Bounding box of the mask in pixel edges ``(x1, y1, x2, y2)``, x2/y2 exclusive."""
    face_index: int | None = None
    """For ``auto``: the pose-image face (0 = leftmost) the region was built around."""

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    def describe(self) -> str:
        return f"identity {self.index + 1} ({self.label})"


# -- internals ------------------------------------------------------------------------------
def _edge(fraction: float, n: int) -> int:
    """The pixel edge nearest to ``fraction`` of ``n`` (halves round up)."""
    return math.floor(fraction * n + 0.5)


def _box_mask(x1: float, y1: float, x2: float, y2: float, size: Size) -> np.ndarray:
    """float32 mask of the pixels whose edges lie within the box (edges rounded to pixels)."""
    width, height = size
    mask = np.zeros((height, width), dtype=np.float32)
    left, right = max(_edge(x1, 1), 0), min(_edge(x2, 1), width)
    top, bottom = max(_edge(y1, 1), 0), min(_edge(y2, 1), height)
    if right > left and bottom > top:
        mask[top:bottom, left:right] = 1.0
    return mask


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _left_to_right(faces: Sequence[FaceLike]) -> list[FaceLike]:
    """Faces ordered by their box centre, left to right (then top to bottom), as the analyzer does."""

    def centre(face: FaceLike) -> tuple[float, float]:
        x1, y1, x2, y2 = (float(v) for v in np.asarray(face.bbox).reshape(4))
        return ((x1 + x2) / 2, (y1 + y2) / 2)

    return sorted(faces, key=centre)


def _enough_faces(faces: Sequence[FaceLike], needed: int, refusal: str) -> list[FaceLike]:
    """``faces`` left to right, refused when there are fewer than the ``needed`` identities that ask
    one each; ``refusal`` is the message, with ``{needed}`` and ``{found}`` (the faces there are)."""
    ordered = _left_to_right(faces)
    if needed > len(ordered):
        found = f"{len(ordered)} face{'s' if len(ordered) != 1 else ''}"
        raise InvalidInputError(refusal.format(needed=needed, found=found))
    return ordered


def _box_values(bbox: Any) -> np.ndarray:
    box = np.asarray(bbox, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.isfinite(box).all():
        msg = f"A face box must be four finite numbers (x1, y1, x2, y2), got {box.tolist()}."
        raise InvalidInputError(msg)
    return box


def _face_box(face: FaceLike) -> np.ndarray:
    return _box_values(face.bbox)


def _check_count(count: int) -> None:
    if count > MAX_IDENTITIES:
        msg = (
            f"One image can hold at most {MAX_IDENTITIES} identities, but {count} were given; "
            f"remove {count - MAX_IDENTITIES}."
        )
        raise InvalidInputError(msg)
    if count < 1:
        msg = "No identity was given; add at least one face."
        raise InvalidInputError(msg)


# -- the kinds ------------------------------------------------------------------------------
def _split_masks(specs: Sequence[RegionSpec], size: Size) -> dict[int, np.ndarray]:
    """Bands for the split kinds (see the module docstring): identity index → mask."""
    width, height = size
    masks: dict[int, np.ndarray] = {}
    for axis, (low, high) in (("x", ("left", "right")), ("y", ("top", "bottom"))):
        users = [i for i, spec in enumerate(specs) if spec.kind in (low, high)]
        if not users:
            continue
        bands = max(len(users), 2)
        free = list(range(bands))
        length = width if axis == "x" else height
        for i in users:
            band = free.pop(0) if specs[i].kind == low else free.pop()
            start, stop = _edge(band / bands, length), _edge((band + 1) / bands, length)
            mask = np.zeros((height, width), dtype=np.float32)
            if axis == "x":
                mask[:, start:stop] = 1.0
            else:
                mask[start:stop, :] = 1.0
            masks[i] = mask
    return masks


def _box_region(spec: RegionSpec, index: int, size: Size) -> tuple[np.ndarray, str]:
    try:
        x1, y1, x2, y2 = (float(v) for v in spec.box)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        msg = (
            f"The box of identity {index + 1} must be four numbers (x1, y1, x2, y2) as fractions of "
            f"the image, got {spec.box!r}."
        )
        raise InvalidInputError(msg) from None
    label = f"box ({x1:.2f}, {y1:.2f}, {x2:.2f}, {y2:.2f})"
    finite = all(map(math.isfinite, (x1, y1, x2, y2)))
    if not finite or min(x1, y1, x2, y2) < 0.0 or max(x1, y1, x2, y2) > 1.0:
        msg = (
            f"The {label} of identity {index + 1} reaches outside the canvas; give fractions from 0 "
            "to 1 (0, 0 is the top-left corner, 1, 1 the bottom-right)."
        )
        raise InvalidInputError(msg)
    if x2 <= x1 or y2 <= y1:
        msg = f"The {label} of identity {index + 1} is empty; x2 must exceed x1 and y2 must exceed y1."
        raise InvalidInputError(msg)
    width, height = size
    return _box_mask(x1 * width, y1 * height, x2 * width, y2 * height, size), label


def mask_region(image: ImageLike, size: Size, mode: ResizeModeLike, *, label: str = "the mask") -> np.ndarray:
    """A mask image (bright = region) as a float32 binary mask at ``size``, placed by ``mode``.

    The mask is resized like any image the WebUI fits into the output (bilinear, then
    thresholded at one half); the bands a fill mode adds belong to no region.
    """
    width, height = _check_size(size, "output size")
    rgb = to_rgb_array(image)
    binary = rgb.max(axis=2) >= MASK_THRESHOLD
    if not binary.any():
        msg = f"{label[0].upper()}{label[1:]} is empty (no white pixels); paint the region in white."
        raise InvalidInputError(msg)
    src = (binary.shape[1], binary.shape[0])
    (scaled_w, scaled_h), (off_x, off_y) = resize_placement(src, (width, height), mode)
    scaled = Image.fromarray(binary.astype(np.uint8) * 255).resize((scaled_w, scaled_h), Image.BILINEAR)
    small = np.asarray(scaled) >= MASK_THRESHOLD
    out = np.zeros((height, width), dtype=np.float32)
    x0, y0 = max(off_x, 0), max(off_y, 0)
    x1, y1 = min(off_x + scaled_w, width), min(off_y + scaled_h, height)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = small[y0 - off_y : y1 - off_y, x0 - off_x : x1 - off_x]
    return out


def _trim_auto_boxes(face_boxes: list[np.ndarray], grown: list[np.ndarray]) -> None:
    """Cut overlapping grown boxes in place at the middle of the gap between their faces."""
    for a in range(len(grown)):
        for b in range(a + 1, len(grown)):
            ga, gb = grown[a], grown[b]
            if min(ga[2], gb[2]) <= max(ga[0], gb[0]) or min(ga[3], gb[3]) <= max(ga[1], gb[1]):
                continue
            fa, fb = face_boxes[a], face_boxes[b]
            gaps = []
            for lo, hi in ((0, 2), (1, 3)):  # x, then y
                gaps.append(max(fb[lo] - fa[hi], fa[lo] - fb[hi]))
            axis = 0 if gaps[0] >= gaps[1] else 1
            lo, hi = (0, 2) if axis == 0 else (1, 3)
            first, second = (a, b) if (fa[lo] + fa[hi]) <= (fb[lo] + fb[hi]) else (b, a)
            f1, f2 = face_boxes[first], face_boxes[second]
            # Between the facing edges; if the faces overlap on this axis, between their centres.
            separate = f2[lo] >= f1[hi]
            cut = (f1[hi] + f2[lo]) / 2 if separate else (f1[lo] + f1[hi] + f2[lo] + f2[hi]) / 4
            grown[first][hi] = min(grown[first][hi], cut)
            grown[second][lo] = max(grown[second][lo], cut)


def _auto_regions(
    specs: Sequence[RegionSpec],
    faces: Sequence[FaceLike] | None,
    pose_size: Size | None,
    size: Size,
    mode: ResizeModeLike,
) -> dict[int, tuple[np.ndarray, str, int]]:
    users = [i for i, spec in enumerate(specs) if spec.kind == "auto"]
    if not users:
        return {}
    if faces is None or pose_size is None:
        msg = (
            f"Identity {users[0] + 1} has the region 'auto', which needs the faces of a pose image "
            "(or the init image); give one, or choose another region."
        )
        raise InvalidInputError(msg)
    ordered = _enough_faces(
        faces,
        len(users),
        "{needed} identities have the region 'auto' but the pose image shows only {found}; "
        "use a pose image with a face for each of them, or give the others a box or a split.",
    )
    claimed: dict[int, int] = {}
    for i in users:
        index = specs[i].face_index
        if index is None:
            continue
        if (
            isinstance(index, bool)
            or not isinstance(index, (int, np.integer))
            or not 0 <= index < len(ordered)
        ):
            msg = (
                f"Identity {i + 1} asks for face {index!r} of the pose image, which has faces 0 to "
                f"{len(ordered) - 1} (counted from the left); pick one of those."
            )
            raise InvalidInputError(msg)
        if int(index) in claimed.values():
            other = next(j for j, k in claimed.items() if k == int(index))
            msg = (
                f"Identities {other + 1} and {i + 1} both ask for face {index} of the pose image; "
                "give each identity its own face."
            )
            raise InvalidInputError(msg)
        claimed[i] = int(index)
    free = [k for k in range(len(ordered)) if k not in claimed.values()]
    for i in users:
        if i not in claimed:
            claimed[i] = free.pop(0)
    face_boxes = [_face_box(ordered[claimed[i]]) for i in users]
    grown = []
    for box in face_boxes:
        dx, dy = AUTO_MARGIN * (box[2] - box[0]), AUTO_MARGIN * (box[3] - box[1])
        grown.append(np.array([box[0] - dx, box[1] - dy, box[2] + dx, box[3] + dy]))
    _trim_auto_boxes(face_boxes, grown)
    regions = {}
    for i, box in zip(users, grown, strict=True):
        label = f"auto: face {claimed[i]} from the left"
        mapped = map_bbox(box, pose_size, size, mode)
        mask = _box_mask(*mapped, size)
        if not mask.any():
            msg = (
                f"The region of identity {i + 1} ({label}) falls outside the canvas with the resize "
                f"mode '{ResizeMode.parse(mode).value}'; choose 'Resize and Fill' or another face."
            )
            raise InvalidInputError(msg)
        regions[i] = (mask, label, claimed[i])
    return regions


# -- public ---------------------------------------------------------------------------------
def build_regions(
    specs: Sequence[RegionSpec | str | Sequence[float] | dict | ImageLike],
    output_size: Size,
    mode: ResizeModeLike = ResizeMode.CROP_AND_RESIZE,
    *,
    faces: Sequence[FaceLike] | None = None,
    pose_size: Size | None = None,
) -> list[Region]:
    """The region of every identity at ``output_size``, checked to fit and not to overlap.

    ``specs`` holds one spec per identity (see :class:`RegionSpec.parse` for the shorthands).
    ``faces`` (any order; boxes in pose-image pixels) and ``pose_size`` are needed for
    ``auto``. ``mode`` maps mask images and pose-image faces onto the output. Raises
    :class:`InvalidInputError` with one sentence for: more than :data:`MAX_IDENTITIES`
    identities, an unknown kind, a box reaching outside the canvas, an empty mask, a region
    that ends up outside the canvas, more ``auto`` identities than faces, and overlapping
    regions (naming the two and by how much).
    """
    parsed = [RegionSpec.parse(spec) for spec in specs]
    _check_count(len(parsed))
    size = _check_size(output_size, "output size")
    for i, spec in enumerate(parsed):
        if spec.kind not in REGION_KINDS:
            kinds = ", ".join(REGION_KINDS)
            msg = f"Identity {i + 1} has the unknown region {spec.kind!r}; use one of {kinds}."
            raise InvalidInputError(msg)
    splits = _split_masks(parsed, size)
    autos = _auto_regions(parsed, faces, pose_size, size, mode)
    regions: list[Region] = []
    for i, spec in enumerate(parsed):
        face_index = None
        if spec.kind in SPLIT_KINDS:
            mask, label = splits[i], spec.kind
        elif spec.kind == "box":
            mask, label = _box_region(spec, i, size)
        elif spec.kind == "mask":
            if spec.mask is None:
                msg = f"Identity {i + 1} has the region 'mask' but no mask image; upload one."
                raise InvalidInputError(msg)
            label = "mask"
            mask = mask_region(spec.mask, size, mode, label=f"the region mask of identity {i + 1}")
            if not mask.any():
                msg = (
                    f"The region mask of identity {i + 1} falls outside the canvas with the resize "
                    f"mode '{ResizeMode.parse(mode).value}'; paint it nearer the centre or choose "
                    "'Resize and Fill'."
                )
                raise InvalidInputError(msg)
        else:
            mask, label, face_index = autos[i]
        regions.append(Region(i, label, mask, _bounding_box(mask), face_index))
    check_disjoint(regions)
    return regions


def check_disjoint(regions: Sequence[Region]) -> None:
    """Raise if two regions share pixels, naming them and the size of the overlap."""
    for a in range(len(regions)):
        for b in range(a + 1, len(regions)):
            ra, rb = regions[a], regions[b]
            shared = int(np.count_nonzero((ra.mask > 0) & (rb.mask > 0)))
            if shared:
                smaller = min(ra.area, rb.area)
                msg = (
                    f"The regions of {ra.describe()} and {rb.describe()} overlap by {shared:,} px "
                    f"({100.0 * shared / smaller:.1f} % of the smaller one); make them disjoint."
                )
                raise InvalidInputError(msg)


def _check_kps(kps: Any) -> np.ndarray:
    points = np.asarray(kps, dtype=np.float64)
    if points.shape != (NUM_KPS, 2) or not np.isfinite(points).all():
        msg = f"Face keypoints must be 5 finite (x, y) pairs, got an array of shape {points.shape}."
        raise InvalidInputError(msg)
    return points


def place_reference_kps(
    kps: Any, region: Region, bbox: Any | None = None, fraction: float = REFERENCE_FACE_FRACTION
) -> np.ndarray:
    """An identity's reference keypoints moved into its region: float32 (5, 2) output pixels.

    The face box (``bbox`` in the reference photo; without one, :data:`KPS_TO_FACE_BOX` times
    the keypoints' extent) is scaled uniformly to span ``fraction`` of the region's box width
    or height, whichever it reaches first, and centred in that box. The pose (angles and
    proportions) of the reference face is kept.
    """
    points = _check_kps(kps)
    if bbox is None:
        lo, hi = points.min(axis=0), points.max(axis=0)
        centre = (lo + hi) / 2
        extent = np.maximum(hi - lo, 1.0) * KPS_TO_FACE_BOX
        face_w, face_h = float(extent[0]), float(extent[1])
    else:
        x1, y1, x2, y2 = _box_values(bbox)
        centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
        face_w, face_h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    rx1, ry1, rx2, ry2 = region.box
    scale = fraction * min((rx2 - rx1) / face_w, (ry2 - ry1) / face_h)
    # Pixel-centre coordinates: the box's pixels run from rx1 to rx2 - 1.
    target = np.array([(rx1 + rx2 - 1) / 2, (ry1 + ry2 - 1) / 2])
    return ((points - centre) * scale + target).astype(np.float32)


def match_pose_faces(
    regions: Sequence[Region],
    faces: Sequence[FaceLike],
    pose_size: Size,
    output_size: Size,
    mode: ResizeModeLike = ResizeMode.CROP_AND_RESIZE,
) -> list[FaceLike]:
    """The pose-image face for each region: its own face for ``auto``, otherwise the face
    whose box centre (mapped to the output) lies in the region (the largest, if several)."""
    ordered = _enough_faces(
        faces,
        len(regions),
        "{needed} identities take their pose from the pose image but it shows only {found}; "
        "use a pose image with one face per person, or the pose of each reference photo.",
    )
    width, height = _check_size(output_size, "output size")
    chosen: list[FaceLike] = []
    taken: dict[int, Region] = {}
    for region in regions:
        if region.face_index is not None:
            index = region.face_index
            if index >= len(ordered):
                msg = (
                    f"The region of {region.describe()} was built from face {index} of the pose image, "
                    f"but only {len(ordered)} faces were given now; pass the same faces as to build_regions."
                )
                raise InvalidInputError(msg)
        else:
            inside = []
            for k, face in enumerate(ordered):
                x1, y1, x2, y2 = map_bbox(_face_box(face), pose_size, (width, height), mode)
                cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
                if 0 <= cx < width and 0 <= cy < height and region.mask[cy, cx] > 0 and x2 > x1 and y2 > y1:
                    inside.append(((x2 - x1) * (y2 - y1), k))
            if not inside:
                msg = (
                    f"The region of {region.describe()} holds no face of the pose image; move the "
                    "region onto a face, use 'auto', or take this identity's pose from its reference photo."
                )
                raise InvalidInputError(msg)
            index = max(inside)[1]
        if index in taken:
            msg = (
                f"{taken[index].describe()[0].upper()}{taken[index].describe()[1:]} and {region.describe()} "
                f"would both use face {index} of the pose image; give each person its own face."
            )
            raise InvalidInputError(msg)
        taken[index] = region
        chosen.append(ordered[index])
    return chosen


def region_pose_kps(
    regions: Sequence[Region],
    faces: Sequence[FaceLike],
    pose_size: Size,
    output_size: Size,
    mode: ResizeModeLike = ResizeMode.CROP_AND_RESIZE,
) -> list[np.ndarray]:
    """For each region, the keypoints of its pose-image face mapped to the output (float32 (5, 2))."""
    matched = match_pose_faces(regions, faces, pose_size, output_size, mode)
    return [
        map_points(_check_kps(face.kps), pose_size, output_size, mode).astype(np.float32) for face in matched
    ]
