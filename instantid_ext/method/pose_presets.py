"""Pose presets for IdentityNet: named head poses as five keypoints, and edits for any keypoint set.

IdentityNet takes the head pose from the five keypoints it is given, so a user who wants
another angle than the reference photo's needs keypoints for that angle. The presets are
not hand-placed: each is ONE 3-D face template turned by documented angles and
projected, so its geometry follows from its angles.

**Coordinates.** Pixels as in :mod:`.keypoints`: ``(x, y)`` with ``(i, j)`` the centre of
pixel column ``i``, row ``j``; x grows to the image's right, y downwards; sizes are
``(width, height)``. The keypoint order is insightface's: 0 image-left eye, 1 image-right
eye, 2 nose tip, 3 image-left mouth corner, 4 image-right mouth corner.

**Template** (:data:`FACE_TEMPLATE_MM`, millimetres, nose tip at the origin, x to the
image's right, y down, z away from the camera, so the face looks into the camera). It is
MediaPipe's canonical face model (``mediapipe/modules/face_geometry/data/
canonical_face_model.obj``, Apache-2.0, a metric mean face in cm, y up, z towards the
viewer), with y and z negated and the nose tip (vertex 1) moved to the origin:

* eye centre = midpoint of the eye corners (vertices 33 & 133, 362 & 263): ±31.51, -37.51, 40.10;
* nose tip = vertex 1: 0, 0, 0;
* mouth corners = vertices 61 and 291: ±24.56, 32.16, 31.92.

Its inter-ocular distance is 63.0 mm, the adult mean. The model has no pupils, so the eye
point is the midpoint of the eye corners, a little behind the cornea. Seen from the front,
the template is within 2.5 % of the eye distance (rms, after the best similarity fit) of
insightface's ArcFace alignment template, the five-point layout insightface aligns frontal
faces to; IdentityNet was trained on insightface's keypoints.

**Angles**, all in degrees; ``left`` always means towards the *image's* left, i.e. the
subject's right:

* yaw > 0 turns the face towards the image's left (the nose moves left of the eyes);
* pitch > 0 makes the face look up (the nose moves up towards the eye line);
* roll > 0 tilts the head counter-clockwise as seen on screen (top of the head to the
  image's left), like ``PIL.Image.rotate``.

The template is turned by yaw first, then pitch, then roll (``R = R_roll @ R_pitch @
R_yaw``) and projected orthographically (x, y kept, z dropped); a face a metre or more
from the camera is close to that. Roll, applied last, is an exact in-image rotation.

**Presets** (:data:`PRESETS`; ``*_left`` has the positive angle): ``front`` (0, 0, 0);
``three_quarter_*`` yaw ±35°, the portrait three-quarter view, where the nose tip comes
within 3 mm of the far eye's column; ``profile_*`` yaw ±80°; ``looking_up`` /
``looking_down`` pitch ±20°; ``tilted_*`` roll ±15°. Profiles keep all five points, as
insightface reports five points for strong profiles too: the far eye and far mouth corner
lie between the nose and their near twins, 0.17 and 0.14 of the eye distance inside them
(in a real face they are partly hidden behind the nose). Profiles stop at 80° because at
90° an orthographic projection puts each far point exactly on its near twin, which no
detector reports, and the far dot would vanish under the near one.

**Placement** (:func:`place_on_canvas`). The scale is fixed by the template, not by the
projection, so a turned head keeps its size: the *frontal* eye distance is
:data:`EYE_DISTANCE_FRACTION` (0.14) of the canvas's shorter side. The eye midpoint sits
:data:`EYE_LINE_FRACTION` (0.35) of the height from the top, and the face centre (the
mean of the five points) is centred horizontally. Both defaults are the medians measured
on the reference demo's example portraits (its five face photos and its Mona Lisa pose,
pupils located by hand to about 1 % of the side): eye distance 0.12-0.21 of the shorter
side, eye line 0.23-0.44 of the height. That is a head-and-shoulders portrait, with the
whole head on the canvas.

**Edits** (:class:`PoseEdit`, :func:`apply_edit`) work on any five keypoints, a preset's
or a photo's, in output pixels, in this order: mirror, rotate, scale, move. Mirror,
rotate and scale all act about the face centre (the mean of the five points), which they
leave in place, so only the move changes where the face is. Mirroring flips x about the
face centre and swaps indices 0<->1 and 3<->4, so index 0 stays the image-left eye (a
mirrored face is another face, whose right eye is the old left one). Rotation is
counter-clockwise on screen for positive degrees, like roll, and keeps the indices: an
upside-down face's right eye is still its right eye. Because rotation comes after the
mirror, a positive angle turns the final picture counter-clockwise whether or not it is
mirrored.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from ..errors import InvalidInputError
from .keypoints import NUM_KPS, Size, _as_points, _check_size, draw_kps

#: The keypoints in kps order, named for messages.
KPS_NAMES: tuple[str, ...] = (
    "image-left eye",
    "image-right eye",
    "nose tip",
    "image-left mouth corner",
    "image-right mouth corner",
)

#: MediaPipe's canonical face as five points, mm: x right, y down, z away from the camera.
FACE_TEMPLATE_MM = np.array(
    [
        [-31.51, -37.51, 40.10],  # image-left eye
        [31.51, -37.51, 40.10],  # image-right eye
        [0.0, 0.0, 0.0],  # nose tip
        [-24.56, 32.16, 31.92],  # image-left mouth corner
        [24.56, 32.16, 31.92],  # image-right mouth corner
    ],
    dtype=np.float64,
)
FACE_TEMPLATE_MM.setflags(write=False)
#: The template's inter-ocular distance, mm; the placement scales it to the canvas.
TEMPLATE_EYE_DISTANCE_MM = float(FACE_TEMPLATE_MM[1, 0] - FACE_TEMPLATE_MM[0, 0])

#: The frontal eye distance as a fraction of the canvas's shorter side.
EYE_DISTANCE_FRACTION = 0.14
#: The eye midpoint's height from the top, as a fraction of the canvas height.
EYE_LINE_FRACTION = 0.35

THREE_QUARTER_YAW = 35.0
PROFILE_YAW = 80.0
LOOK_PITCH = 20.0
TILT_ROLL = 15.0

#: Largest |yaw| and |pitch|: beyond 90° the face would turn away from the camera.
MAX_YAW = 90.0
MAX_PITCH = 90.0

# Index permutation of a mirror: the eyes and the mouth corners trade places.
_MIRROR_ORDER = [1, 0, 2, 4, 3]


class Preset(NamedTuple):
    """A named head pose: the angles (degrees) that turn the template into it."""

    name: str
    label: str
    yaw: float
    pitch: float
    roll: float


#: The built-in presets, in display order, by name.
PRESETS: MappingProxyType[str, Preset] = MappingProxyType(
    {
        preset.name: preset
        for preset in (
            Preset("front", "Front", 0.0, 0.0, 0.0),
            Preset("three_quarter_left", "Three-quarter left", THREE_QUARTER_YAW, 0.0, 0.0),
            Preset("three_quarter_right", "Three-quarter right", -THREE_QUARTER_YAW, 0.0, 0.0),
            Preset("profile_left", "Profile left", PROFILE_YAW, 0.0, 0.0),
            Preset("profile_right", "Profile right", -PROFILE_YAW, 0.0, 0.0),
            Preset("looking_up", "Looking up", 0.0, LOOK_PITCH, 0.0),
            Preset("looking_down", "Looking down", 0.0, -LOOK_PITCH, 0.0),
            Preset("tilted_left", "Tilted left", 0.0, 0.0, TILT_ROLL),
            Preset("tilted_right", "Tilted right", 0.0, 0.0, -TILT_ROLL),
        )
    }
)


def preset_names() -> list[str]:
    """The preset names, in display order."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; case, spaces, hyphens and underscores do not matter.

    "Three-quarter left", "three quarter LEFT" and "three_quarter_left" are the same preset.
    """
    key = "_".join(name.lower().replace("-", " ").replace("_", " ").split()) if isinstance(name, str) else ""
    preset = PRESETS.get(key)
    if preset is None:
        msg = f"Unknown pose preset {name!r}: use one of {', '.join(PRESETS)}."
        raise InvalidInputError(msg)
    return preset


def _number(value: object, what: str, low: float, high: float) -> float:
    """``value`` as a float if it is a real number in ``[low, high]``; bools are refused."""
    number: float | None = None
    if not isinstance(value, bool | np.bool_):
        try:
            number = float(operator.index(value))  # type: ignore[arg-type]
        except TypeError:
            if isinstance(value, float | np.floating):
                number = float(value)
    if number is None or not math.isfinite(number) or not low <= number <= high:
        msg = f"The {what} must be a number from {low:g} to {high:g}, got {value!r}."
        raise InvalidInputError(msg)
    return number


def rotation_matrix(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """The 3×3 head rotation ``R_roll @ R_pitch @ R_yaw`` for angles in degrees (see the module doc)."""
    cy, sy = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    cp, sp = math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
    cr, sr = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    # Columns act on (x right, y down, z away). Yaw > 0 sends a point in front (z < 0) to the
    # left, pitch > 0 sends it up, roll > 0 turns (1, 0) towards (cos, -sin): up on screen.
    r_yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    r_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
    r_roll = np.array([[cr, sr, 0.0], [-sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return r_roll @ r_pitch @ r_yaw


def project_template(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """The template turned by the angles and projected orthographically: ``(5, 2)`` mm, float64."""
    yaw = _number(yaw, "yaw", -MAX_YAW, MAX_YAW)
    pitch = _number(pitch, "pitch", -MAX_PITCH, MAX_PITCH)
    roll = _number(roll, "roll", -180.0, 180.0)
    turned = FACE_TEMPLATE_MM @ rotation_matrix(yaw, pitch, roll).T
    return turned[:, :2].copy()


def place_on_canvas(points_mm: Any, size: Size) -> np.ndarray:
    """Projected template points (mm) as pixels on a ``size`` canvas, float64 (see the module doc).

    The frontal eye distance becomes :data:`EYE_DISTANCE_FRACTION` of the shorter side,
    the eye midpoint goes :data:`EYE_LINE_FRACTION` of the height down from the top edge,
    and the mean of the five points goes to the horizontal centre. Edges are pixel edges:
    the canvas spans ``-0.5 .. width - 0.5``, so its centre is ``(width - 1) / 2``.
    """
    points = _as_points(points_mm, "template points", (NUM_KPS, 2)).astype(np.float64)
    width, height = _check_size(size, "output size")
    scaled = points * (EYE_DISTANCE_FRACTION * min(width, height) / TEMPLATE_EYE_DISTANCE_MM)
    shift_x = (width - 1) / 2 - scaled[:, 0].mean()
    shift_y = EYE_LINE_FRACTION * height - 0.5 - scaled[:2, 1].mean()
    return scaled + np.array([shift_x, shift_y])


def angles_kps(size: Size, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Keypoints of the template turned by the angles (degrees), placed on a ``size`` canvas.

    Yaw and pitch range over -90..90, roll over -180..180; returns ``(5, 2)`` float32 like
    insightface.
    """
    return place_on_canvas(project_template(yaw, pitch, roll), size).astype(np.float32)


def preset_kps(name: str, size: Size) -> np.ndarray:
    """The keypoints of preset ``name`` on a ``size`` ``(width, height)`` canvas: ``(5, 2)`` float32."""
    preset = get_preset(name)
    return angles_kps(size, preset.yaw, preset.pitch, preset.roll)


@dataclass(frozen=True)
class PoseEdit:
    """A user's change to a keypoint set, applied as mirror, rotate, scale, move.

    ``rotate`` is in degrees, counter-clockwise on screen (-180..180); ``scale`` multiplies
    the face's size (0.2..3); ``offset_x``/``offset_y`` move the face by that fraction of the
    canvas width/height, right and down for positive values (-1..1). Numbers are stored as
    floats; anything else raises :class:`InvalidInputError`.
    """

    mirror: bool = False
    rotate: float = 0.0
    scale: float = 1.0
    offset_x: float = 0.0
    offset_y: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.mirror, bool | np.bool_):
            msg = f"The pose mirror flag must be true or false, got {self.mirror!r}."
            raise InvalidInputError(msg)
        object.__setattr__(self, "mirror", bool(self.mirror))
        for field, what, low, high in (
            ("rotate", "pose rotation (degrees)", -180.0, 180.0),
            ("scale", "pose scale", 0.2, 3.0),
            ("offset_x", "horizontal pose offset (fraction of the width)", -1.0, 1.0),
            ("offset_y", "vertical pose offset (fraction of the height)", -1.0, 1.0),
        ):
            object.__setattr__(self, field, _number(getattr(self, field), what, low, high))

    @property
    def is_identity(self) -> bool:
        """Whether applying this edit leaves every keypoint where it is."""
        return not self.mirror and self.rotate == 0.0 and self.scale == 1.0 and self.offset == (0.0, 0.0)

    @property
    def offset(self) -> tuple[float, float]:
        """``(offset_x, offset_y)``."""
        return self.offset_x, self.offset_y


def face_center(kps: Any) -> np.ndarray:
    """The face centre that edits turn and scale about: the mean of the five points, float64 ``(2,)``."""
    return _as_points(kps, "keypoints", (NUM_KPS, 2)).astype(np.float64).mean(axis=0)


def apply_edit(kps: Any, size: Size, edit: PoseEdit | None = None) -> np.ndarray:
    """``kps`` after ``edit`` on a ``size`` canvas: ``(5, 2)`` float32.

    With ``c`` the face centre, a point ``p`` goes to ``c + scale * Rot(rotate) @
    Mirror(p - c) + (offset_x * width, offset_y * height)``, and a mirror also swaps
    indices 0<->1 and 3<->4. An identity edit (or ``None``) returns the points unchanged.
    """
    points = _as_points(kps, "keypoints", (NUM_KPS, 2))
    width, height = _check_size(size, "output size")
    if edit is not None and not isinstance(edit, PoseEdit):
        msg = f"The pose edit must be a PoseEdit, got {type(edit).__name__}."
        raise InvalidInputError(msg)
    if edit is None or edit.is_identity:
        return points.astype(np.float32)
    coords = points.astype(np.float64)
    center = coords.mean(axis=0)
    delta = coords - center
    if edit.mirror:
        delta = delta[_MIRROR_ORDER] * np.array([-1.0, 1.0])
    cos, sin = math.cos(math.radians(edit.rotate)), math.sin(math.radians(edit.rotate))
    # Counter-clockwise on screen with y pointing down: (1, 0) -> (cos, -sin).
    turn = np.array([[cos, sin], [-sin, cos]])
    moved = center + edit.scale * (delta @ turn.T) + np.array([edit.offset_x * width, edit.offset_y * height])
    return moved.astype(np.float32)


def points_outside(kps: Any, size: Size, margin: float = 0.0) -> list[int]:
    """Indices of the keypoints whose centre is not on the canvas, shrunk by ``margin`` pixels.

    A point is on a ``(width, height)`` canvas when ``margin <= x <= width - 1 - margin``
    and likewise for y: the pixel it is drawn at exists (with the margin, so does the ring
    of ``margin`` pixels around it; ``keypoints.CIRCLE_RADIUS`` keeps whole dots).
    """
    points = _as_points(kps, "keypoints", (NUM_KPS, 2)).astype(np.float64)
    width, height = _check_size(size, "output size")
    margin = _number(margin, "canvas margin", 0.0, float(max(width, height)))
    low = np.array([margin, margin])
    high = np.array([width - 1 - margin, height - 1 - margin])
    inside = ((points >= low) & (points <= high)).all(axis=1)
    return [int(i) for i in np.flatnonzero(~inside)]


def fits_canvas(kps: Any, size: Size, margin: float = 0.0) -> bool:
    """Whether every keypoint is on the canvas (see :func:`points_outside`)."""
    return not points_outside(kps, size, margin)


def canvas_warning(kps: Any, size: Size) -> str | None:
    """One sentence for the user when keypoints fall off the canvas, else None."""
    outside = points_outside(kps, size)
    if not outside:
        return None
    width, height = _check_size(size, "output size")
    names = ", ".join(KPS_NAMES[i] for i in outside)
    verb = "falls" if len(outside) == 1 else "fall"
    return (
        f"{len(outside)} of the 5 pose keypoints ({names}) {verb} outside the {width}×{height} output, "
        "so IdentityNet sees only part of the face: reduce the pose scale or offset."
    )


def preview_image(kps: Any, size: Size) -> Image.Image:
    """The IdentityNet condition image for ``kps`` at the output size: :func:`.keypoints.draw_kps`."""
    return draw_kps(size, kps)
