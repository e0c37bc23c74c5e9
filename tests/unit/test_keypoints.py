"""The keypoint image must be the reference's, pixel for pixel, and must land on the face.

The drawing is checked three ways: exact pixels derived by hand for axis-aligned cases,
a geometric sandwich (every stick lies between a slightly shrunk and a slightly grown
ideal ellipse), and an independent re-implementation that rasterises the circles with
numpy and the sticks as a label map, compared bit for bit on random inputs.
"""

from __future__ import annotations

import math
from enum import Enum

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from instantid_ext.errors import InvalidInputError
from instantid_ext.method.keypoints import (
    DEFAULT_COLORS,
    Placement,
    ResizeMode,
    draw_kps,
    face_mask,
    kps_image_for_output,
    map_bbox,
    map_points,
    reference_resize,
    resize_placement,
)

RED, GREEN, BLUE, YELLOW, MAGENTA = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)
PALETTE = [RED, GREEN, BLUE, YELLOW, MAGENTA]
DIM_RED = (153, 0, 0)  # int(255 * 0.6)
DISC_10 = 317  # lattice points with dx² + dy² <= 10²

MODES = list(ResizeMode)


def rgb(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def is_color(arr: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    return (arr == np.array(color, dtype=np.uint8)).all(axis=-1)


def disc(shape: tuple[int, int], cx: int, cy: int, r: int = 10) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def oracle_draw(size: tuple[int, int], kps, colors=PALETTE) -> np.ndarray:
    """The keypoint image from its definition, built differently from the module.

    Sticks go into a label map (which stick owns each pixel, later ones winning) that a
    palette of pre-dimmed colours turns into RGB; circles are lattice discs
    ``dx² + dy² <= 100`` around the truncated centres, painted in order. The arithmetic
    on the coordinates stays in the keypoints' own dtype, as in the reference.
    """
    width, height = size
    pts = np.array(kps)
    tips = (0, 1, 3, 4)
    labels = np.zeros((height, width), dtype=np.uint8)
    for label, tip in enumerate(tips, start=1):
        xs, ys = pts[[tip, 2], 0], pts[[tip, 2], 1]
        dx, dy = xs[0] - xs[1], ys[0] - ys[1]
        half_length = int((dx**2 + dy**2) ** 0.5 / 2)
        rotation = int(math.degrees(math.atan2(dy, dx)))
        centre = (int(np.mean(xs)), int(np.mean(ys)))
        outline = cv2.ellipse2Poly(centre, (half_length, 4), rotation, 0, 360, 1)
        cv2.fillConvexPoly(labels, outline, label)
    palette = np.zeros((len(tips) + 1, 3), dtype=np.uint8)
    for label, tip in enumerate(tips, start=1):
        palette[label] = (np.asarray(colors[tip], dtype=np.float64) * 0.6).astype(np.uint8)
    out = palette[labels]
    for index, (x, y) in enumerate(pts):
        out[disc((height, width), int(x), int(y))] = colors[index]
    return out


# ---------------------------------------------------------------- draw_kps: hand-derived pixels

FACE = np.array([[100, 100], [300, 100], [200, 200], [120, 300], [280, 300]], dtype=np.float32)


def test_output_is_rgb_pil_of_the_requested_size():
    image = draw_kps((400, 320), FACE)
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    assert image.size == (400, 320)


def test_circle_centres_have_the_full_colours_and_the_background_is_black():
    arr = rgb(draw_kps((400, 400), FACE))
    for (x, y), color in zip(FACE.astype(int), PALETTE, strict=True):
        assert tuple(arr[y, x]) == color
    assert tuple(arr[390, 10]) == (0, 0, 0)
    assert tuple(arr[5, 395]) == (0, 0, 0)


def test_only_full_or_dimmed_channel_values_appear():
    arr = rgb(draw_kps((400, 400), FACE))
    assert set(np.unique(arr).tolist()) == {0, 153, 255}


def test_limbs_are_dimmed_to_sixty_percent_of_the_tip_colour():
    arr = rgb(draw_kps((400, 400), FACE))
    # Midpoints of eye→nose and mouth→nose sticks.
    assert tuple(arr[150, 150]) == (153, 0, 0)
    assert tuple(arr[150, 250]) == (0, 153, 0)
    assert tuple(arr[250, 160]) == (153, 153, 0)
    assert tuple(arr[250, 240]) == (153, 0, 153)


def horizontal_stick() -> np.ndarray:
    """Eye at (50, 100), everything else on the nose at (250, 100): one horizontal stick."""
    kps = np.array([[50, 100], [250, 100], [250, 100], [250, 100], [250, 100]], dtype=np.float32)
    return rgb(draw_kps((300, 200), kps))


def test_horizontal_stick_is_nine_pixels_thick_and_spans_between_the_circles():
    arr = horizontal_stick()
    # Semi-axes (100, 4) around (150, 100): rows 96..104 at the middle column.
    column = [y for y in range(200) if arr[y, 150].any()]
    assert column == list(range(96, 105))
    assert all(tuple(arr[y, 150]) == DIM_RED for y in column)
    row = [x for x in range(300) if is_color(arr[100, x], DIM_RED)]
    assert (row[0], row[-1]) == (61, 239)  # circles of radius 10 cover 40..60 and 240..260
    assert not arr[100, 39].any()
    assert not arr[100, 261].any()


def test_vertical_stick_is_nine_pixels_thick():
    kps = np.array([[100, 20], [100, 180], [100, 180], [100, 180], [100, 180]], dtype=np.float64)
    arr = rgb(draw_kps((200, 200), kps))
    assert [x for x in range(200) if arr[100, x].any()] == list(range(96, 105))


def test_circle_is_the_lattice_disc_of_radius_ten():
    arr = horizontal_stick()
    red = is_color(arr, RED)
    assert red.sum() == DISC_10
    assert (red == disc(arr.shape[:2], 50, 100)).all()
    assert tuple(arr[100, 60]) == RED  # d = 10: inside
    assert tuple(arr[90, 50]) == RED
    assert tuple(arr[93, 57]) == RED  # 49 + 49 = 98
    assert not arr[92, 43].any()  # 49 + 64 = 113: outside, and off the stick


def test_later_circles_overwrite_earlier_ones_and_the_sticks():
    arr = horizontal_stick()
    # kps 1, 2, 3, 4 share the nose: the last one (magenta) wins, over the stick too.
    assert tuple(arr[100, 250]) == MAGENTA
    assert is_color(arr, MAGENTA).sum() == DISC_10
    assert not is_color(arr, BLUE).any()
    # Two circles 15 px apart: the overlap belongs to the later one.
    kps = np.array([[100, 100], [115, 100], [300, 300], [400, 300], [500, 300]], dtype=np.float32)
    arr = rgb(draw_kps((600, 400), kps))
    overlap = disc(arr.shape[:2], 100, 100) & disc(arr.shape[:2], 115, 100)
    assert is_color(arr[overlap], GREEN).all()
    assert is_color(arr, RED).sum() == DISC_10 - overlap.sum()


def test_later_sticks_overwrite_earlier_ones():
    # Both eyes at the same spot: stick 1 (green) is drawn over stick 0 (red).
    kps = np.array([[50, 100], [50, 100], [250, 100], [250, 300], [250, 300]], dtype=np.float32)
    arr = rgb(draw_kps((300, 400), kps))
    assert tuple(arr[100, 150]) == (0, 153, 0)
    assert not is_color(arr, DIM_RED).any()


def test_coordinates_are_truncated_toward_zero():
    # int(-0.7) == 0, so the circle is centred on column 0 and reaches column 10.
    kps = np.array([[-0.7, 50], [300, 50], [300, 150], [300, 250], [300, 350]], dtype=np.float32)
    arr = rgb(draw_kps((400, 400), kps))
    assert tuple(arr[50, 10]) == RED
    # 10.9 truncates to 10: the circle spans columns 0..20.
    kps[0, 0] = 10.9
    arr = rgb(draw_kps((400, 400), kps))
    assert tuple(arr[50, 20]) == RED
    assert tuple(arr[50, 21]) != RED


def test_arithmetic_follows_the_keypoint_dtype():
    # 101 - 1 ulp and 101: the float32 mean rounds to 101, the float64 mean is 100.99999…
    # so the stick centre moves by one pixel depending on the dtype, as in the reference.
    x0 = float(np.nextafter(np.float32(101), np.float32(0)))
    kps = [[x0, 150.0], [300.0, 60.0], [101.0, 300.0], [60.0, 200.0], [250.0, 250.0]]
    as32 = rgb(draw_kps((400, 400), np.array(kps, dtype=np.float32)))
    as64 = rgb(draw_kps((400, 400), np.array(kps, dtype=np.float64)))
    assert (as32 != as64).any()
    assert (as32 == oracle_draw((400, 400), np.array(kps, dtype=np.float32))).all()
    assert (as64 == oracle_draw((400, 400), np.array(kps, dtype=np.float64))).all()


def test_float16_is_drawn_as_float32():
    kps16 = np.array(FACE, dtype=np.float16)
    assert rgb(draw_kps((400, 400), kps16)).tobytes() == rgb(draw_kps((400, 400), FACE)).tobytes()


def test_lists_and_custom_colours_are_accepted():
    colors = [(10, 20, 30), (40, 50, 60), (70, 80, 90), (100, 110, 120), (130, 140, 250)]
    arr = rgb(draw_kps((400, 400), FACE.tolist(), colors))
    assert (arr == oracle_draw((400, 400), FACE.tolist(), colors)).all()
    assert tuple(arr[150, 150]) == (6, 12, 18)
    assert tuple(PALETTE) == DEFAULT_COLORS


def test_sticks_are_painted_on_a_float_canvas_and_dimmed_by_truncation():
    # The stick keeps 300 and 127.5 until the dimming (180, 76.5 → 76, 1.8 → 1); the
    # circle goes on the uint8 image, where OpenCV saturates 300 and rounds 127.5.
    colors = [(300, 127.5, 3), *PALETTE[1:]]
    arr = rgb(draw_kps((400, 400), FACE, colors))
    assert tuple(arr[150, 150]) == (180, 76, 1)
    assert tuple(arr[100, 100]) == (255, 128, 3)


@settings(max_examples=60, deadline=None)
@given(
    tip=st.tuples(st.floats(-50, 350), st.floats(-50, 350)),
    nose=st.tuples(st.floats(0, 300), st.floats(0, 300)),
)
def test_stick_lies_between_shrunk_and_grown_ideal_ellipses(tip, nose):
    """Geometry without OpenCV: the polygon approximates the ellipse to within ~2 px."""
    width = height = 300
    kps = np.array([tip, nose, nose, nose, nose], dtype=np.float64)
    stick = is_color(rgb(draw_kps((width, height), kps)), DIM_RED)
    dx, dy = tip[0] - nose[0], tip[1] - nose[1]
    a, b = int(math.hypot(dx, dy) / 2), 4
    theta = math.radians(int(math.degrees(math.atan2(dy, dx))))
    cx, cy = int((tip[0] + nose[0]) / 2), int((tip[1] + nose[1]) / 2)
    yy, xx = np.mgrid[:height, :width]
    u = (xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)
    v = -(xx - cx) * math.sin(theta) + (yy - cy) * math.cos(theta)
    grown = (u / (a + 2)) ** 2 + (v / (b + 2)) ** 2 <= 1
    assert not (stick & ~grown).any()
    if a >= 2:
        shrunk = (u / (a - 1)) ** 2 + (v / (b - 1)) ** 2 <= 1
        circles = disc((height, width), int(tip[0]), int(tip[1])) | disc(
            (height, width), int(nose[0]), int(nose[1])
        )
        assert (stick | circles)[shrunk].all()


# ---------------------------------------------------------------- draw_kps: bit-exact on random inputs


@st.composite
def drawing_cases(draw) -> tuple[tuple[int, int], np.ndarray]:
    width = draw(st.integers(64, 1400))
    height = draw(st.integers(64, 1400))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64]))

    def coordinate(extent: int):
        if np.issubdtype(dtype, np.integer):
            return st.integers(-extent // 2, 3 * extent // 2)
        width_bits = 32 if dtype is np.float32 else 64
        return st.floats(-0.5 * extent, 1.5 * extent, width=width_bits)

    points = [[draw(coordinate(width)), draw(coordinate(height))] for _ in range(5)]
    for i in (0, 1, 3, 4):  # zero-length sticks
        if draw(st.integers(0, 5)) == 0:
            points[i] = list(points[2])
    return (width, height), np.array(points, dtype=dtype)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawing_cases())
def test_matches_the_independent_implementation_bit_for_bit(case):
    size, kps = case
    assert rgb(draw_kps(size, kps)).tobytes() == oracle_draw(size, kps).tobytes()


def test_matches_the_independent_implementation_on_many_face_like_cases():
    rng = np.random.default_rng(20240122)
    for _ in range(300):
        width, height = (int(v) for v in rng.integers(64, 257, size=2))
        centre = rng.uniform([0, 0], [width, height])
        scale = rng.uniform(2, 0.6 * min(width, height))
        template = np.array([[-0.4, -0.3], [0.4, -0.3], [0.0, 0.05], [-0.3, 0.4], [0.3, 0.4]])
        angle = rng.uniform(-math.pi, math.pi)
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        kps = (centre + scale * template @ rot.T + rng.normal(0, 2, (5, 2))).astype(
            rng.choice([np.float32, np.float64])
        )
        assert rgb(draw_kps((width, height), kps)).tobytes() == oracle_draw((width, height), kps).tobytes()


# ---------------------------------------------------------------- draw_kps: validation


@pytest.mark.parametrize(
    "kps",
    [
        np.zeros((4, 2)),
        np.zeros((5, 3)),
        np.zeros(10),
        [[1, 2]] * 4 + [[1]],
        np.full((5, 2), np.nan),
        np.array([[0, 0]] * 4 + [[np.inf, 0]]),
        np.array([["a", "b"]] * 5),
        np.zeros((5, 2), dtype=bool),
        np.zeros((5, 2), dtype=complex),
        None,
        np.full((5, 2), 1e9),
    ],
)
def test_bad_keypoints_are_refused(kps):
    with pytest.raises(InvalidInputError, match="keypoints"):
        draw_kps((64, 64), kps)


@pytest.mark.parametrize(
    "size",
    [(0, 64), (64, -1), (64.0, 64), (True, 64), (64,), (64, 64, 3), "ab", None, (20000, 64)],
)
def test_bad_sizes_are_refused(size):
    with pytest.raises(InvalidInputError, match="size"):
        draw_kps(size, FACE)


def test_numpy_int_sizes_are_accepted():
    assert draw_kps((np.int64(64), np.int32(48)), FACE).size == (64, 48)


@pytest.mark.parametrize("colors", [PALETTE[:4], [(1, 2)] * 5, [(1, 2, float("nan"))] * 5, ["red"] * 5])
def test_bad_colours_are_refused(colors):
    with pytest.raises(InvalidInputError, match="colo"):
        draw_kps((64, 64), FACE, colors)


# ---------------------------------------------------------------- resize modes


class ControlNetResizeMode(Enum):
    """Stand-in for sd-webui-controlnet's ``external_code.ResizeMode``."""

    RESIZE = "Just Resize"
    INNER_FIT = "Crop and Resize"
    OUTER_FIT = "Resize and Fill"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, ResizeMode.JUST_RESIZE),
        (1, ResizeMode.CROP_AND_RESIZE),
        (2, ResizeMode.RESIZE_AND_FILL),
        (3, ResizeMode.JUST_RESIZE),
        (np.int64(1), ResizeMode.CROP_AND_RESIZE),
        ("Just Resize", ResizeMode.JUST_RESIZE),
        ("Crop and Resize", ResizeMode.CROP_AND_RESIZE),
        ("Resize and Fill", ResizeMode.RESIZE_AND_FILL),
        ("crop and resize", ResizeMode.CROP_AND_RESIZE),
        ("Just resize (latent upscale)", ResizeMode.JUST_RESIZE),
        ("INNER_FIT", ResizeMode.CROP_AND_RESIZE),
        ("ResizeMode.OUTER_FIT", ResizeMode.RESIZE_AND_FILL),
        (ControlNetResizeMode.RESIZE, ResizeMode.JUST_RESIZE),
        (ControlNetResizeMode.INNER_FIT, ResizeMode.CROP_AND_RESIZE),
        (ControlNetResizeMode.OUTER_FIT, ResizeMode.RESIZE_AND_FILL),
        (ResizeMode.RESIZE_AND_FILL, ResizeMode.RESIZE_AND_FILL),
    ],
)
def test_resize_mode_accepts_a1111_and_controlnet_spellings(value, expected):
    assert ResizeMode.parse(value) is expected
    assert ResizeMode(value) is expected


@pytest.mark.parametrize("value", [4, -1, True, None, 1.0, "Fill", ""])
def test_unknown_resize_modes_are_refused(value):
    with pytest.raises(InvalidInputError, match="resize mode"):
        ResizeMode.parse(value)
    with pytest.raises(InvalidInputError):
        map_points([[0, 0]], (64, 64), (64, 64), value)


def test_resize_mode_compares_equal_to_its_label():
    assert ResizeMode.CROP_AND_RESIZE == "Crop and Resize"


# ---------------------------------------------------------------- placement and point mapping


def a1111_resize(mode: int, im: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's ``images.resize_image`` for modes 0-2 without upscalers (LANCZOS)."""
    lanczos = Image.Resampling.LANCZOS
    if mode == 0:
        return im.resize((width, height), resample=lanczos)
    ratio, src_ratio = width / height, im.width / im.height
    if mode == 1:
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
    else:
        src_w = width if ratio < src_ratio else im.width * height // im.height
        src_h = height if ratio >= src_ratio else im.height * width // im.width
    resized = im.resize((src_w, src_h), resample=lanczos)
    res = Image.new(im.mode, (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == 2 and ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            res.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            band = resized.resize((width, fill), box=(0, resized.height, width, resized.height))
            res.paste(band, box=(0, fill + src_h))
    elif mode == 2 and ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            res.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            band = resized.resize((fill, height), box=(resized.width, 0, resized.width, height))
            res.paste(band, box=(fill + src_w, 0))
    return res


def test_placement_matches_a1111_numbers():
    assert resize_placement((800, 600), (512, 512), 0) == Placement((512, 512), (0, 0))
    assert resize_placement((800, 600), (512, 512), 1) == Placement((682, 512), (-85, 0))
    assert resize_placement((800, 600), (512, 512), 2) == Placement((512, 384), (0, 64))
    assert resize_placement((600, 800), (1024, 768), "Crop and Resize") == Placement((1024, 1365), (0, -298))
    assert resize_placement((600, 800), (1024, 768), "Resize and Fill") == Placement((576, 768), (224, 0))


def test_extreme_aspect_keeps_at_least_one_pixel():
    placement = resize_placement((4000, 10), (64, 64), "Resize and Fill")
    assert placement.scaled_size == (64, 1)


sizes = st.tuples(st.integers(64, 2048), st.integers(64, 2048))


@settings(max_examples=200, deadline=None)
@given(src=sizes, dst=sizes, mode=st.sampled_from(MODES))
def test_identity_when_sizes_match(src, dst, mode):
    points = np.array([[0.0, 0.0], [src[0] - 1, src[1] - 1], [12.34567, 0.1], [-3.5, 1e-9]])
    assert (map_points(points, src, src, mode) == points).all()


@settings(max_examples=200, deadline=None)
@given(src=sizes, dst=sizes, mode=st.sampled_from([ResizeMode.CROP_AND_RESIZE, ResizeMode.RESIZE_AND_FILL]))
def test_source_centre_maps_to_output_centre(src, dst, mode):
    centre = map_points([[(src[0] - 1) / 2, (src[1] - 1) / 2]], src, dst, mode)[0]
    assert np.abs(centre - [(dst[0] - 1) / 2, (dst[1] - 1) / 2]).max() <= 0.5 + 1e-9


@settings(max_examples=200, deadline=None)
@given(src=sizes, dst=sizes, mode=st.sampled_from([ResizeMode.CROP_AND_RESIZE, ResizeMode.RESIZE_AND_FILL]))
def test_crop_and_fill_scale_both_axes_alike(src, dst, mode):
    """Aspect is kept: distances scale by one factor, up to A1111's flooring of one side."""
    origin, along_x, along_y = map_points([[0, 0], [src[0], 0], [0, src[1]]], src, dst, mode)
    sx, sy = (along_x - origin)[0] / src[0], (along_y - origin)[1] / src[1]
    assert (along_x - origin)[1] == 0
    assert (along_y - origin)[0] == 0
    pick = max if mode is ResizeMode.CROP_AND_RESIZE else min
    exact = pick(dst[0] / src[0], dst[1] / src[1])
    assert abs(sx - sy) / max(sx, sy) <= 1 / (exact * min(src)) + 1e-12
    assert max(abs(sx / exact - 1), abs(sy / exact - 1)) <= 1 / (exact * min(src)) + 1e-12


@settings(max_examples=200, deadline=None)
@given(src=sizes, dst=sizes, xy=st.tuples(st.floats(-100, 3000), st.floats(-100, 3000)))
def test_just_resize_scales_each_axis(src, dst, xy):
    mapped = map_points([xy], src, dst, "Just Resize")[0]
    expected = [(xy[0] + 0.5) * dst[0] / src[0] - 0.5, (xy[1] + 0.5) * dst[1] / src[1] - 0.5]
    assert np.allclose(mapped, expected, rtol=0, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(src=sizes, dst=sizes)
def test_fill_keeps_the_whole_source_and_crop_covers_the_whole_output(src, dst):
    corners = [[-0.5, -0.5], [src[0] - 0.5, src[1] - 0.5]]
    (x0, y0), (x1, y1) = map_points(corners, src, dst, "Resize and Fill")
    assert -0.5 - 1e-9 <= x0 <= x1 <= dst[0] - 0.5 + 1e-9
    assert -0.5 - 1e-9 <= y0 <= y1 <= dst[1] - 0.5 + 1e-9
    (x0, y0), (x1, y1) = map_points(corners, src, dst, "Crop and Resize")
    assert x0 <= -0.5 + 1e-9 and x1 >= dst[0] - 0.5 - 1e-9
    assert y0 <= -0.5 + 1e-9 and y1 >= dst[1] - 0.5 - 1e-9


def test_map_points_shapes_and_validation():
    assert map_points(np.zeros((0, 2)), (64, 64), (128, 128), 1).shape == (0, 2)
    out = map_points([[1, 2]], (64, 64), (128, 128), 0)
    assert out.dtype == np.float64
    assert out.tolist() == [[2.5, 4.5]]
    with pytest.raises(InvalidInputError, match="points"):
        map_points([1, 2], (64, 64), (128, 128), 0)
    with pytest.raises(InvalidInputError, match="source size"):
        map_points([[1, 2]], (0, 64), (128, 128), 0)
    with pytest.raises(InvalidInputError, match="output size"):
        map_points([[1, 2]], (64, 64), (128, 1.5), 0)


def centroid(arr: np.ndarray) -> np.ndarray:
    weights = arr.astype(np.float64)
    yy, xx = np.mgrid[: arr.shape[0], : arr.shape[1]]
    return np.array([(weights * xx).sum(), (weights * yy).sum()]) / weights.sum()


def dot_case(src, dst, mode, fx, fy):
    """An integer source pixel whose image lies inside the output, and a dot radius for it."""
    origin, unit = map_points([[0, 0], [1, 1]], src, dst, mode)
    scale = unit - origin
    radius = max(2, math.ceil(2.5 / scale.min()))
    margin = radius + math.ceil(4 / scale.min()) + 2
    target = np.array([fx * (dst[0] - 1), fy * (dst[1] - 1)])
    px, py = np.rint((target - origin) / scale).astype(int)
    assume(margin <= px < src[0] - margin and margin <= py < src[1] - margin)
    mapped = map_points([[px, py]], src, dst, mode)[0]
    reach = radius * scale.max() + 3
    assume(reach <= mapped[0] <= dst[0] - 1 - reach and reach <= mapped[1] <= dst[1] - 1 - reach)
    image = np.zeros((src[1], src[0]), dtype=np.uint8)
    cv2.circle(image, (int(px), int(py)), radius, 255, -1)
    return image, mapped


small_sizes = st.tuples(st.integers(48, 320), st.integers(48, 320))
fractions = st.floats(0.25, 0.75)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(src=small_sizes, dst=small_sizes, mode=st.sampled_from([0, 1, 2]), fx=fractions, fy=fractions)
def test_a_dot_resized_by_a1111_lands_on_the_mapped_point(src, dst, mode, fx, fy):
    image, mapped = dot_case(src, dst, mode, fx, fy)
    resized = np.asarray(a1111_resize(mode, Image.fromarray(image), *dst))
    assert np.abs(centroid(resized) - mapped).max() <= 1.0


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    src=small_sizes,
    dst=small_sizes,
    fx=fractions,
    fy=fractions,
    interpolation=st.sampled_from([cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC]),
)
def test_a_dot_stretched_by_opencv_lands_on_the_mapped_point(src, dst, fx, fy, interpolation):
    image, mapped = dot_case(src, dst, ResizeMode.JUST_RESIZE, fx, fy)
    resized = cv2.resize(image, dst, interpolation=interpolation)
    assert np.abs(centroid(resized) - mapped).max() <= 1.0


# ---------------------------------------------------------------- boxes, kps image at output size, mask


def test_map_bbox_maps_corners_and_clips_to_the_output():
    bbox = [100.0, 50.0, 300.0, 250.0]
    src, dst = (800, 600), (512, 512)
    mapped = map_bbox(bbox, src, dst, "Crop and Resize")
    expected = map_points([[100, 50], [300, 250]], src, dst, "Crop and Resize").ravel()
    assert np.allclose(mapped, np.clip(expected, 0, 512))
    wide = map_bbox([-50, -50, 850, 650], src, dst, "Crop and Resize")
    assert wide.tolist() == [0.0, 0.0, 512.0, 512.0]
    with pytest.raises(InvalidInputError, match="bounding box"):
        map_bbox([1, 2, 3], src, dst, 0)


@settings(max_examples=100, deadline=None)
@given(
    src=sizes,
    dst=sizes,
    mode=st.sampled_from(MODES),
    box=st.lists(st.floats(-500, 2500), min_size=4, max_size=4),
)
def test_mapped_bbox_is_ordered_and_inside_the_output(src, dst, mode, box):
    x1, y1, x2, y2 = map_bbox(box, src, dst, mode)
    assert 0 <= x1 <= x2 <= dst[0]
    assert 0 <= y1 <= y2 <= dst[1]


@pytest.mark.parametrize("mode", MODES)
def test_kps_image_at_the_source_size_is_draw_kps(mode):
    kps = FACE + np.float32(0.37)
    expected = rgb(draw_kps((400, 400), kps)).tobytes()
    assert rgb(kps_image_for_output(kps, (400, 400), (400, 400), mode)).tobytes() == expected


@pytest.mark.parametrize("mode", MODES)
def test_kps_image_is_drawn_at_output_size_with_trained_radius(mode):
    src, dst = (400, 300), (1024, 1024)
    kps = np.array([[100, 100], [300, 100], [200, 150], [130, 220], [270, 220]], dtype=np.float32)
    image = kps_image_for_output(kps, src, dst, mode)
    assert image.size == dst
    arr = rgb(image)
    mapped = map_points(kps, src, dst, mode).astype(np.float32)
    assert arr.tobytes() == rgb(draw_kps(dst, mapped)).tobytes()
    for (x, y), color in zip(mapped, PALETTE, strict=True):
        assert tuple(arr[int(y), int(x)]) == color
        assert is_color(arr, color).sum() == DISC_10  # circles are far apart at this scale


def test_kps_image_keeps_the_face_unstretched_under_crop():
    """A square face layout stays square in crop mode and is squashed by just resize."""
    src, dst = (400, 400), (800, 400)
    kps = np.array([[150, 150], [250, 150], [200, 200], [150, 250], [250, 250]], dtype=np.float64)
    crop = map_points(kps, src, dst, "Crop and Resize")
    width, height = np.ptp(crop[:, 0]), np.ptp(crop[:, 1])
    assert width == pytest.approx(height)
    stretch = map_points(kps, src, dst, "Just Resize")
    assert np.ptp(stretch[:, 0]) == pytest.approx(2 * np.ptp(stretch[:, 1]))


def test_face_mask_is_the_truncated_box():
    mask = face_mask([10.7, 20.2, 50.9, 60.99], (100, 80))
    assert mask.shape == (80, 100)
    assert mask.dtype == np.uint8
    expected = np.zeros((80, 100), dtype=np.uint8)
    expected[20:60, 10:50] = 255
    assert (mask == expected).all()
    assert set(np.unique(mask).tolist()) == {0, 255}


def test_face_mask_clamps_negative_corners_and_tolerates_overflow():
    mask = face_mask([-5.5, -3.0, 20.0, 30.0], (64, 48))
    assert (mask[:30, :20] == 255).all()
    assert mask.sum() == 255 * 30 * 20
    mask = face_mask(np.array([40, 30, 500, 500], dtype=np.float32), (64, 48))
    assert mask.sum() == 255 * 24 * 18
    assert not face_mask([30, 30, 10, 10], (64, 48)).any()


def test_face_mask_of_a_mapped_box_covers_the_mapped_face():
    src, dst = (800, 600), (512, 512)
    bbox = map_bbox([300, 200, 500, 450], src, dst, "Crop and Resize")
    mask = face_mask(bbox, dst)
    inside = map_points([[400, 300]], src, dst, "Crop and Resize")[0].astype(int)
    assert mask[inside[1], inside[0]] == 255
    assert mask[5, 5] == 0


def test_face_mask_validation():
    with pytest.raises(InvalidInputError, match="bounding box"):
        face_mask([1, 2, float("nan"), 4], (64, 64))
    with pytest.raises(InvalidInputError, match="size"):
        face_mask([1, 2, 3, 4], (0, 64))


# ---------------------------------------------------------------- reference output size


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((800, 600), (1280, 960)),
        ((600, 600), (1280, 1280)),
        ((1280, 1280), (1280, 1280)),
        ((5000, 5000), (1280, 1280)),
        ((720, 1280), (704, 1280)),
        ((3000, 2000), (1280, 832)),
    ],
)
def test_reference_resize_examples(size, expected):
    assert reference_resize(size) == expected


def test_reference_resize_with_multicontrolnet_max_side():
    assert reference_resize((512, 512), max_side=1024) == (1024, 1024)
    assert reference_resize((800, 600), max_side=1024) == (1024, 768)


@settings(max_examples=300, deadline=None)
@given(size=st.tuples(st.integers(16, 6000), st.integers(16, 6000)))
def test_reference_resize_properties(size):
    width, height = reference_resize(size)
    assert width % 64 == 0
    assert height % 64 == 0
    assert max(width, height) == 1280
    short_exact = 1280 * min(size) / max(size)
    assert short_exact - 64 - 1 <= min(width, height) <= max(short_exact + 1, 64)


def test_reference_resize_never_returns_a_zero_side():
    assert reference_resize((64, 4000)) == (64, 1280)


def test_reference_resize_validation():
    with pytest.raises(InvalidInputError, match="size"):
        reference_resize((0, 10))
    with pytest.raises(InvalidInputError, match="base_pixel_number"):
        reference_resize((10, 10), base_pixel_number=0)
