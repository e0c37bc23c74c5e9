"""Pose presets follow from one 3-D face turned by their angles; edits do what they document.

Expected geometry is recomputed here from the template's source (MediaPipe's canonical
face, raw vertices below) with per-axis formulas written out for each single rotation,
not with the module's rotation matrices.
"""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instantid_ext.errors import InvalidInputError
from instantid_ext.method.keypoints import CIRCLE_RADIUS, draw_kps
from instantid_ext.method.pose_presets import (
    EYE_DISTANCE_FRACTION,
    EYE_LINE_FRACTION,
    FACE_TEMPLATE_MM,
    KPS_NAMES,
    PRESETS,
    PoseEdit,
    angles_kps,
    apply_edit,
    canvas_warning,
    face_center,
    fits_canvas,
    get_preset,
    place_on_canvas,
    points_outside,
    preset_kps,
    preset_names,
    preview_image,
    project_template,
    rotation_matrix,
)
from tests.without_webui import run_without_webui

# canonical_face_model.obj vertices (cm; x right, y up, z towards the viewer), by index.
OBJ_VERTICES = {
    1: (0.000000, -1.126865, 7.475604),  # nose tip
    33: (-4.445859, 2.663991, 3.173422),  # image-left eye, outer corner
    133: (-1.856432, 2.585245, 3.757904),  # image-left eye, inner corner
    362: (1.856432, 2.585245, 3.757904),  # image-right eye, inner corner
    263: (4.445859, 2.663991, 3.173422),  # image-right eye, outer corner
    61: (-2.456206, -4.342621, 4.283884),  # image-left mouth corner
    291: (2.456206, -4.342621, 4.283884),  # image-right mouth corner
}
# insightface's ArcFace alignment template (112×112 crop), the mean frontal detection.
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)

SIZES = [
    (512, 512),
    (1024, 1024),
    (832, 1216),
    (1216, 832),
    (768, 1344),
    (1344, 768),
    (640, 1536),
    (1536, 640),
]
ALL_NAMES = [
    "front",
    "three_quarter_left",
    "three_quarter_right",
    "profile_left",
    "profile_right",
    "looking_up",
    "looking_down",
    "tilted_left",
    "tilted_right",
]
IPD_MM = 63.02
EYE_Y, EYE_Z = -37.51, 40.10
MOUTH_X, MOUTH_Y, MOUTH_Z = 24.56, 32.16, 31.92


def source_template() -> np.ndarray:
    """The five template points from the raw vertices: mm, y and z negated, nose at 0."""
    v = {k: np.array(p) * 10.0 * np.array([1.0, -1.0, -1.0]) for k, p in OBJ_VERTICES.items()}
    nose = v[1]
    rows = [(v[33] + v[133]) / 2, (v[362] + v[263]) / 2, nose, v[61], v[291]]
    return np.array([r - nose for r in rows])


def scale_px(size: tuple[int, int]) -> float:
    return EYE_DISTANCE_FRACTION * min(size) / IPD_MM


def eye_angle_deg(kps: np.ndarray) -> float:
    """The eye line's angle, counter-clockwise on screen (y points down)."""
    dx, dy = kps[1] - kps[0]
    return math.degrees(math.atan2(-dy, dx))


def signed_area(kps: np.ndarray) -> float:
    """Twice the signed area of the eyes-nose triangle: its sign flips with a mirror only."""
    (x0, y0), (x1, y1), (x2, y2) = kps[:3].astype(np.float64)
    return (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)


def similarity_rms(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance after the least-squares similarity map of ``a`` onto ``b`` (in ``b`` units)."""
    ac, bc = a - a.mean(0), b - b.mean(0)
    norm = (ac**2).sum()
    p = (ac * bc).sum() / norm
    q = (ac[:, 0] * bc[:, 1] - ac[:, 1] * bc[:, 0]).sum() / norm
    fitted = ac @ np.array([[p, -q], [q, p]]).T
    return float(np.sqrt(((fitted - bc) ** 2).sum(axis=1).mean()))


# --- template -----------------------------------------------------------------------------------


def test_template_is_mediapipes_canonical_face() -> None:
    np.testing.assert_allclose(FACE_TEMPLATE_MM, source_template(), atol=0.006)
    assert not FACE_TEMPLATE_MM.flags.writeable
    ipd = np.linalg.norm(FACE_TEMPLATE_MM[1] - FACE_TEMPLATE_MM[0])
    assert ipd == pytest.approx(63.0, abs=0.1)  # the adult mean inter-pupillary distance


def test_front_matches_insightfaces_frontal_layout() -> None:
    front = preset_kps("front", (1024, 1024)).astype(np.float64)
    arc_ipd = np.linalg.norm(ARCFACE_DST[1] - ARCFACE_DST[0])
    assert similarity_rms(front, ARCFACE_DST) / arc_ipd < 0.025


def test_rotation_matrix_is_a_rotation_with_the_documented_senses() -> None:
    r = rotation_matrix(23.0, -41.0, 117.0)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    in_front = np.array([0.0, 0.0, -1.0])
    assert (rotation_matrix(yaw=30) @ in_front)[0] < 0  # yaw > 0: nose to the image's left
    assert (rotation_matrix(pitch=30) @ in_front)[1] < 0  # pitch > 0: nose up
    assert (rotation_matrix(roll=30) @ np.array([1.0, 0.0, 0.0]))[1] < 0  # roll > 0: CCW on screen
    # Yaw, then pitch, then roll.
    np.testing.assert_allclose(
        rotation_matrix(20, 30, 40),
        rotation_matrix(roll=40) @ rotation_matrix(pitch=30) @ rotation_matrix(yaw=20),
        atol=1e-12,
    )


# --- presets ------------------------------------------------------------------------------------


def test_the_library_holds_the_documented_presets() -> None:
    assert preset_names() == ALL_NAMES
    angles = {name: (p.yaw, p.pitch, p.roll) for name, p in PRESETS.items()}
    assert angles == {
        "front": (0, 0, 0),
        "three_quarter_left": (35, 0, 0),
        "three_quarter_right": (-35, 0, 0),
        "profile_left": (80, 0, 0),
        "profile_right": (-80, 0, 0),
        "looking_up": (0, 20, 0),
        "looking_down": (0, -20, 0),
        "tilted_left": (0, 0, 15),
        "tilted_right": (0, 0, -15),
    }
    assert get_preset("three_quarter_left").label == "Three-quarter left"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_preset_is_float32_and_inside_the_canvas(name: str, size: tuple[int, int]) -> None:
    kps = preset_kps(name, size)
    assert kps.shape == (5, 2)
    assert kps.dtype == np.float32
    assert fits_canvas(kps, size, margin=CIRCLE_RADIUS)  # whole dots, not just their centres


@pytest.mark.parametrize("size", SIZES)
def test_front_is_placed_by_the_documented_rule(size: tuple[int, int]) -> None:
    width, height = size
    kps = preset_kps("front", size).astype(np.float64)
    s = scale_px(size)
    tol = 1e-3 * max(size) / 1024
    assert kps[1, 0] - kps[0, 0] == pytest.approx(EYE_DISTANCE_FRACTION * min(size), abs=tol)
    assert kps[:2, 1].mean() == pytest.approx(EYE_LINE_FRACTION * height - 0.5, abs=tol)
    assert kps[:, 0].mean() == pytest.approx((width - 1) / 2, abs=tol)
    # Left/right symmetric about the vertical through the nose, eye and mouth lines level.
    nose_x = kps[2, 0]
    assert (kps[0, 0] + kps[1, 0]) / 2 == pytest.approx(nose_x, abs=tol)
    assert (kps[3, 0] + kps[4, 0]) / 2 == pytest.approx(nose_x, abs=tol)
    assert kps[0, 1] == kps[1, 1]
    assert kps[3, 1] == kps[4, 1]
    # The frontal template, scaled: nose and mouth drops below the eye line.
    assert kps[2, 1] - kps[0, 1] == pytest.approx(-EYE_Y * s, abs=tol)
    assert kps[3, 1] - kps[0, 1] == pytest.approx((MOUTH_Y - EYE_Y) * s, abs=tol)
    assert kps[4, 0] - kps[3, 0] == pytest.approx(2 * MOUTH_X * s, abs=tol)


@pytest.mark.parametrize("size", [(1024, 1024), (832, 1216)])
@pytest.mark.parametrize(
    ("name", "yaw"),
    [("three_quarter_left", 35), ("three_quarter_right", -35), ("profile_left", 80), ("profile_right", -80)],
)
def test_turned_presets_are_the_template_turned_by_their_yaw(name: str, yaw: float, size) -> None:
    kps = preset_kps(name, size).astype(np.float64)
    s, c, n = scale_px(size), math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    tol = 1e-3
    # A turn about the vertical: x' = x cos + z sin, y unchanged.
    assert kps[1, 0] - kps[0, 0] == pytest.approx(IPD_MM * c * s, abs=tol)
    assert kps[2, 0] - kps[:2, 0].mean() == pytest.approx(-EYE_Z * n * s, abs=tol)
    assert kps[4, 0] - kps[3, 0] == pytest.approx(2 * MOUTH_X * c * s, abs=tol)
    assert kps[2, 0] - kps[3:, 0].mean() == pytest.approx(-MOUTH_Z * n * s, abs=tol)
    assert kps[0, 1] == kps[1, 1] == pytest.approx(EYE_LINE_FRACTION * size[1] - 0.5, abs=tol)
    assert kps[2, 1] - kps[0, 1] == pytest.approx(-EYE_Y * s, abs=tol)
    assert kps[3, 1] - kps[0, 1] == pytest.approx((MOUTH_Y - EYE_Y) * s, abs=tol)
    assert kps[:, 0].mean() == pytest.approx((size[0] - 1) / 2, abs=tol)
    # "left" = turned towards the image's left: the nose is left of the eyes, and the far eye
    # (the image-left one) is the one nearer the nose; index 0 stays the image-left eye.
    assert (kps[2, 0] < kps[0, 0]) == (yaw >= 80)
    assert kps[0, 0] < kps[1, 0]
    far, near = (0, 1) if yaw > 0 else (1, 0)
    assert abs(kps[far, 0] - kps[2, 0]) < abs(kps[near, 0] - kps[2, 0])
    assert (kps[2, 0] < kps[:2, 0].mean()) == (yaw > 0)


def test_profiles_keep_five_distinct_points_with_the_far_ones_inside() -> None:
    size = (1024, 1024)
    ipd_px = EYE_DISTANCE_FRACTION * 1024
    for name, far_eye, near_eye, far_mouth, near_mouth in (
        ("profile_left", 0, 1, 3, 4),
        ("profile_right", 1, 0, 4, 3),
    ):
        kps = preset_kps(name, size).astype(np.float64)
        gaps = [np.linalg.norm(kps[i] - kps[j]) for i in range(5) for j in range(i + 1, 5)]
        assert min(gaps) > CIRCLE_RADIUS  # five dots, every centre visible
        nose = kps[2, 0]
        # Far points lie between the nose and their near twins.
        assert abs(kps[far_eye, 0] - nose) < abs(kps[near_eye, 0] - nose)
        assert abs(kps[far_mouth, 0] - nose) < abs(kps[near_mouth, 0] - nose)
        assert abs(kps[near_eye, 0] - kps[far_eye, 0]) / ipd_px == pytest.approx(0.174, abs=0.001)
        assert abs(kps[near_mouth, 0] - kps[far_mouth, 0]) / ipd_px == pytest.approx(0.135, abs=0.001)


@pytest.mark.parametrize(("name", "pitch"), [("looking_up", 20), ("looking_down", -20)])
def test_pitched_presets_move_the_nose_the_documented_way(name: str, pitch: float) -> None:
    size = (1024, 1024)
    kps = preset_kps(name, size).astype(np.float64)
    front = preset_kps("front", size).astype(np.float64)
    s, c, n = scale_px(size), math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
    # A nod about the horizontal: y' = y cos + z sin, x unchanged.
    eye_y = EYE_Y * c + EYE_Z * n
    mouth_y = MOUTH_Y * c + MOUTH_Z * n
    assert kps[2, 1] - kps[0, 1] == pytest.approx(-eye_y * s, abs=1e-3)
    assert kps[3, 1] - kps[0, 1] == pytest.approx((mouth_y - eye_y) * s, abs=1e-3)
    np.testing.assert_allclose(kps[:, 0], front[:, 0], atol=1e-3)
    assert kps[:2, 1].mean() == pytest.approx(front[:2, 1].mean(), abs=1e-3)
    nose_drop, front_drop = kps[2, 1] - kps[0, 1], front[2, 1] - front[0, 1]
    if pitch > 0:  # looking up: the nose rises towards the eye line
        assert nose_drop < front_drop - 0.2 * front_drop
    else:  # looking down: it sinks towards the mouth
        assert nose_drop > front_drop + 0.2 * front_drop
        assert kps[3, 1] - kps[2, 1] < front[3, 1] - front[2, 1]


@pytest.mark.parametrize(("name", "roll"), [("tilted_left", 15), ("tilted_right", -15)])
def test_tilted_presets_have_their_roll_as_eye_line_angle(name: str, roll: float) -> None:
    kps = preset_kps(name, (1024, 1024))
    assert eye_angle_deg(kps.astype(np.float64)) == pytest.approx(roll, abs=1e-4)
    # tilted_left: the top of the head leans to the image's left, so the left eye is lower.
    assert (kps[0, 1] > kps[1, 1]) == (roll > 0)
    # Roll is an in-image rotation of the front preset, the same sense as the rotate edit.
    turned = apply_edit(preset_kps("front", (1024, 1024)), (1024, 1024), PoseEdit(rotate=roll))
    np.testing.assert_allclose(kps - kps.mean(0), turned - turned.mean(0), atol=1e-3)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("side", ["three_quarter", "profile", "tilted"])
def test_right_presets_are_the_mirrored_left_ones(side: str, size: tuple[int, int]) -> None:
    left, right = preset_kps(f"{side}_left", size), preset_kps(f"{side}_right", size)
    np.testing.assert_allclose(apply_edit(left, size, PoseEdit(mirror=True)), right, atol=2e-3)
    front = preset_kps("front", size)
    np.testing.assert_allclose(apply_edit(front, size, PoseEdit(mirror=True)), front, atol=2e-3)


def test_custom_angles_compose_and_are_checked() -> None:
    size = (1024, 1024)
    np.testing.assert_array_equal(angles_kps(size, 35), preset_kps("three_quarter_left", size))
    mm = project_template(10, -5, 3)
    expected = (FACE_TEMPLATE_MM @ rotation_matrix(10, -5, 3).T)[:, :2]
    np.testing.assert_allclose(mm, expected, atol=1e-12)
    np.testing.assert_allclose(place_on_canvas(mm, size).astype(np.float32), angles_kps(size, 10, -5, 3))
    for kwargs in ({"yaw": 91}, {"pitch": -90.5}, {"roll": 181}, {"yaw": float("nan")}, {"roll": True}):
        with pytest.raises(InvalidInputError, match="must be a number"):
            angles_kps(size, **kwargs)


@pytest.mark.parametrize(
    "spelling",
    [
        "three_quarter_left",
        "Three-quarter left",
        "THREE QUARTER LEFT",
        "  three-quarter_Left ",
        "three--quarter left",
    ],
)
def test_preset_names_are_forgiving(spelling: str) -> None:
    np.testing.assert_array_equal(
        preset_kps(spelling, (512, 512)), preset_kps("three_quarter_left", (512, 512))
    )
    assert get_preset(spelling).name == "three_quarter_left"


@pytest.mark.parametrize("name", ["sideways", "", "three quarter", None, 3])
def test_unknown_presets_list_the_valid_names(name) -> None:
    with pytest.raises(InvalidInputError, match="Unknown pose preset") as info:
        preset_kps(name, (512, 512))
    message = str(info.value)
    assert all(valid in message for valid in ALL_NAMES)
    assert message.count(".") == 1  # one sentence


def test_preset_sizes_are_checked() -> None:
    for size in [(0, 512), (512.0, 512), (512,), "512x512", (20000, 512)]:
        with pytest.raises(InvalidInputError, match="output size"):
            preset_kps("front", size)


# --- PoseEdit -----------------------------------------------------------------------------------


def test_pose_edit_defaults_and_identity() -> None:
    edit = PoseEdit()
    assert edit == PoseEdit(False, 0.0, 1.0, 0.0, 0.0)
    assert edit.is_identity
    for changed in (
        PoseEdit(mirror=True),
        PoseEdit(rotate=0.5),
        PoseEdit(scale=1.01),
        PoseEdit(offset_x=-0.1),
        PoseEdit(offset_y=0.1),
    ):
        assert not changed.is_identity
    with pytest.raises(FrozenInstanceError):
        edit.rotate = 3.0  # type: ignore[misc]


def test_pose_edit_accepts_its_bounds_and_stores_floats() -> None:
    low = PoseEdit(mirror=np.bool_(True), rotate=-180, scale=0.2, offset_x=-1, offset_y=np.int64(-1))
    high = PoseEdit(rotate=180, scale=3, offset_x=1, offset_y=np.float32(1))
    assert low.mirror is True
    for edit in (low, high):
        for value in (edit.rotate, edit.scale, edit.offset_x, edit.offset_y):
            assert type(value) is float
    assert high.offset == (1.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"rotate": 180.01}, "rotation"),
        ({"rotate": -181}, "rotation"),
        ({"rotate": float("nan")}, "rotation"),
        ({"rotate": "10"}, "rotation"),
        ({"scale": 0.19}, "scale"),
        ({"scale": 3.5}, "scale"),
        ({"scale": float("inf")}, "scale"),
        ({"scale": True}, "scale"),
        ({"offset_x": 1.5}, "horizontal"),
        ({"offset_y": -1.01}, "vertical"),
        ({"offset_y": None}, "vertical"),
        ({"mirror": 1}, "mirror"),
        ({"mirror": "yes"}, "mirror"),
    ],
)
def test_pose_edit_refuses_bad_values_in_one_sentence(kwargs: dict, words: str) -> None:
    with pytest.raises(InvalidInputError, match=words) as info:
        PoseEdit(**kwargs)
    message = str(info.value)
    assert message.endswith(".")
    assert repr(next(iter(kwargs.values()))) in message


# --- edits --------------------------------------------------------------------------------------

# A known set around the centre (100, 200): the mean of these five points.
KNOWN = np.array([[90.0, 190.0], [110.0, 190.0], [100.0, 200.0], [92.0, 210.0], [108.0, 210.0]])
SIZE = (400, 300)


def test_known_set_centre() -> None:
    np.testing.assert_array_equal(face_center(KNOWN), [100.0, 200.0])


def test_mirror_flips_about_the_face_centre_and_swaps_the_sides() -> None:
    skewed = KNOWN + np.array([[0, 0], [3, -1], [5, 0], [0, 2], [-4, 0]])
    cx = skewed[:, 0].mean()
    out = apply_edit(skewed, SIZE, PoseEdit(mirror=True)).astype(np.float64)
    expected = np.column_stack([2 * cx - skewed[:, 0], skewed[:, 1]])[[1, 0, 2, 4, 3]]
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert out[0, 0] < out[1, 0]  # index 0 is still the image-left eye
    np.testing.assert_allclose(face_center(out), face_center(skewed), atol=1e-4)
    twice = apply_edit(out, SIZE, PoseEdit(mirror=True))
    np.testing.assert_allclose(twice, skewed, atol=1e-4)


def test_rotate_90_counter_clockwise_by_hand() -> None:
    out = apply_edit(KNOWN, SIZE, PoseEdit(rotate=90))
    # About (100, 200), counter-clockwise on screen (y down): (dx, dy) -> (dy, -dx).
    expected = np.array([[90.0, 210.0], [90.0, 190.0], [100.0, 200.0], [110.0, 208.0], [110.0, 192.0]])
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert eye_angle_deg(out.astype(np.float64)) == pytest.approx(90.0)
    # And clockwise: (dx, dy) -> (-dy, dx).
    clockwise = np.array([[110.0, 190.0], [110.0, 210.0], [100.0, 200.0], [90.0, 192.0], [90.0, 208.0]])
    np.testing.assert_allclose(apply_edit(KNOWN, SIZE, PoseEdit(rotate=-90)), clockwise, atol=1e-4)


def test_rotate_there_and_back_is_the_identity() -> None:
    for angle in (1.0, 33.3, 90.0, 179.0, 180.0):
        there = apply_edit(KNOWN, SIZE, PoseEdit(rotate=angle))
        back = apply_edit(there, SIZE, PoseEdit(rotate=-angle))
        np.testing.assert_allclose(back, KNOWN, atol=1e-4)


def test_scale_keeps_the_centre_and_multiplies_distances() -> None:
    out = apply_edit(KNOWN, SIZE, PoseEdit(scale=2.5)).astype(np.float64)
    np.testing.assert_allclose(face_center(out), [100.0, 200.0], atol=1e-4)
    np.testing.assert_allclose(out, [100.0, 200.0] + 2.5 * (KNOWN - [100.0, 200.0]), atol=1e-4)


def test_offsets_move_by_a_fraction_of_the_canvas() -> None:
    out = apply_edit(KNOWN, SIZE, PoseEdit(offset_x=0.25, offset_y=-0.5))
    np.testing.assert_array_equal(out, (KNOWN + np.array([0.25 * 400, -0.5 * 300])).astype(np.float32))


def test_edits_compose_as_mirror_rotate_scale_move() -> None:
    kps = preset_kps("three_quarter_left", (1024, 768))
    size = (1024, 768)
    edit = PoseEdit(mirror=True, rotate=30, scale=1.5, offset_x=0.1, offset_y=-0.2)
    step = kps
    for single in (
        PoseEdit(mirror=True),
        PoseEdit(rotate=30),
        PoseEdit(scale=1.5),
        PoseEdit(offset_x=0.1, offset_y=-0.2),
    ):
        step = apply_edit(step, size, single)
    np.testing.assert_allclose(apply_edit(kps, size, edit), step, atol=2e-3)
    # The order matters: rotating before mirroring turns the result the other way.
    other = apply_edit(apply_edit(kps, size, PoseEdit(rotate=30)), size, PoseEdit(mirror=True))
    combined = apply_edit(kps, size, PoseEdit(mirror=True, rotate=30))
    assert eye_angle_deg(combined.astype(np.float64)) == pytest.approx(30.0, abs=1e-3)
    assert eye_angle_deg(other.astype(np.float64)) == pytest.approx(-30.0, abs=1e-3)


def test_identity_edit_returns_the_points_as_float32() -> None:
    detected = np.array([[10.5, 20.25], [30, 20], [20, 30], [12, 40], [28, 40]], dtype=np.float64)
    for edit in (None, PoseEdit(), PoseEdit(rotate=-0.0)):
        out = apply_edit(detected, (64, 64), edit)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, detected.astype(np.float32))
    ints = apply_edit(detected.astype(np.int32), (64, 64), PoseEdit(scale=2))
    assert ints.dtype == np.float32
    out = apply_edit(detected, (64, 64), PoseEdit(scale=2))
    assert out is not detected


def test_edits_refuse_bad_inputs() -> None:
    with pytest.raises(InvalidInputError, match=r"shape \(5, 2\)"):
        apply_edit(np.zeros((4, 2)), SIZE, PoseEdit(mirror=True))
    with pytest.raises(InvalidInputError, match="NaN"):
        apply_edit(np.full((5, 2), np.nan), SIZE, PoseEdit(mirror=True))
    with pytest.raises(InvalidInputError, match="output size"):
        apply_edit(KNOWN, (0, 10), PoseEdit(mirror=True))
    with pytest.raises(InvalidInputError, match="PoseEdit"):
        apply_edit(KNOWN, SIZE, {"mirror": True})  # type: ignore[arg-type]


coordinate = st.floats(-2000, 3000, allow_nan=False, allow_infinity=False)
points_5x2 = st.lists(st.tuples(coordinate, coordinate), min_size=5, max_size=5).map(np.array)
edits = st.builds(
    PoseEdit,
    mirror=st.booleans(),
    rotate=st.floats(-180, 180),
    scale=st.floats(0.2, 3.0),
    offset_x=st.floats(-1, 1),
    offset_y=st.floats(-1, 1),
)
sizes = st.tuples(st.integers(1, 4096), st.integers(1, 4096))


@settings(max_examples=300, deadline=None)
@given(kps=points_5x2, size=sizes, edit=edits)
def test_any_edit_is_a_similarity_about_the_face_centre(kps: np.ndarray, size, edit: PoseEdit) -> None:
    out = apply_edit(kps, size, edit).astype(np.float64)
    spread = 1.0 + float(np.abs(kps - kps.mean(0)).max())
    tol = 1e-6 * (4000 + 3 * spread) + 1e-3
    # The centre moves by exactly the offset.
    shift = np.array([edit.offset_x * size[0], edit.offset_y * size[1]])
    np.testing.assert_allclose(face_center(out), face_center(kps) + shift, atol=tol)
    # Distances grow by the scale; a mirror reorders them but keeps the set.
    order = [1, 0, 2, 4, 3] if edit.mirror else list(range(5))
    before = np.linalg.norm(kps[order][:, None] - kps[order][None], axis=-1)
    after = np.linalg.norm(out[:, None] - out[None], axis=-1)
    np.testing.assert_allclose(after, edit.scale * before, atol=2 * tol)
    # Orientation: the mirror flips it and reindexes, rotation and scale keep it.
    area = signed_area(kps[order]) * edit.scale**2 * (-1 if edit.mirror else 1)
    assert signed_area(out) == pytest.approx(area, rel=1e-4, abs=tol * spread * 4)


@settings(max_examples=200, deadline=None)
@given(kps=points_5x2, size=sizes, angle=st.floats(-180, 180), scale=st.floats(0.2, 3.0))
def test_rotation_and_scale_undo_and_the_mirror_is_an_involution(kps, size, angle, scale) -> None:
    spread = 1.0 + float(np.abs(kps).max())
    tol = 1e-6 * 8 * spread + 1e-3
    there = apply_edit(kps, size, PoseEdit(rotate=angle))
    np.testing.assert_allclose(apply_edit(there, size, PoseEdit(rotate=-angle)), kps, atol=tol)
    mirrored = apply_edit(kps, size, PoseEdit(mirror=True))
    np.testing.assert_allclose(apply_edit(mirrored, size, PoseEdit(mirror=True)), kps, atol=tol)
    if 0.2 <= 1 / scale <= 3.0:
        grown = apply_edit(kps, size, PoseEdit(scale=scale))
        np.testing.assert_allclose(apply_edit(grown, size, PoseEdit(scale=1 / scale)), kps, atol=tol * 4)


# --- canvas checks and preview ------------------------------------------------------------------


def test_points_outside_uses_pixel_centres_and_margin() -> None:
    size = (100, 50)
    kps = np.array([[0.0, 0.0], [99.0, 49.0], [50.0, 25.0], [-0.01, 25.0], [50.0, 49.5]])
    assert points_outside(kps, size) == [3, 4]
    assert not fits_canvas(kps, size)
    assert fits_canvas(kps[[0, 1, 2, 2, 2]], size)
    assert points_outside(kps[[0, 1, 2, 2, 2]], size, margin=10) == [0, 1]
    with pytest.raises(InvalidInputError, match="margin"):
        points_outside(kps, size, margin=-1)


def test_canvas_warning_names_the_lost_points() -> None:
    size = (512, 512)
    kps = preset_kps("front", size)
    assert canvas_warning(kps, size) is None
    pushed = apply_edit(kps, size, PoseEdit(offset_y=0.5))
    warning = canvas_warning(pushed, size)
    assert warning is not None
    assert f"({KPS_NAMES[3]}, {KPS_NAMES[4]})" in warning
    assert "2 of the 5" in warning
    assert "512×512" in warning
    big = apply_edit(kps, size, PoseEdit(scale=3.0, offset_x=0.5))
    assert not fits_canvas(big, size)
    one = kps.copy()
    one[2, 0] = size[0]
    assert canvas_warning(one, size).startswith("1 of the 5 pose keypoints (nose tip) falls outside")


def test_preview_is_draw_kps_at_the_output_size() -> None:
    size = (832, 1216)
    kps = apply_edit(preset_kps("looking_down", size), size, PoseEdit(rotate=-20, scale=1.3))
    image = preview_image(kps, size)
    assert image.size == size
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(draw_kps(size, kps)))
    x, y = (int(v) for v in kps[2])
    assert tuple(np.asarray(image)[y, x]) == (0, 0, 255)  # the nose dot


def test_module_imports_with_the_webui_blocked() -> None:
    result = run_without_webui("import instantid_ext.method.pose_presets as p\nprint(p.preset_names())\n")
    assert result.returncode == 0, result.stderr
    assert "three_quarter_left" in result.stdout
