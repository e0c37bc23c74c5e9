"""Regions for several identities: every kind's mask, the keypoints per region, the errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instantid_ext.errors import InvalidInputError
from instantid_ext.faces.analysis import FaceAnalyzer
from instantid_ext.method.identitynet_regions import multi_identity_hint
from instantid_ext.method.keypoints import draw_kps, map_bbox, map_points
from instantid_ext.method.regions import (
    AUTO_MARGIN,
    KPS_TO_FACE_BOX,
    Region,
    RegionSpec,
    build_regions,
    match_pose_faces,
    place_reference_kps,
    region_pose_kps,
)
from tests.fakes import antelopev2_pack as fp

KPS_UNIT = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]])


@dataclass(frozen=True)
class FakeFace:
    bbox: np.ndarray
    kps: np.ndarray


def face_at(x1: float, y1: float, x2: float, y2: float) -> FakeFace:
    box = np.array([x1, y1, x2, y2], dtype=np.float32)
    kps = (box[:2] + KPS_UNIT * (box[2:] - box[:2])).astype(np.float32)
    return FakeFace(box, kps)


def box_mask(size: tuple[int, int], x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    width, height = size
    mask = np.zeros((height, width), dtype=np.float32)
    mask[y1:y2, x1:x2] = 1.0
    return mask


def masks_of(regions: list[Region]) -> list[np.ndarray]:
    return [r.mask for r in regions]


# -- splits ------------------------------------------------------------------------------------
def test_two_identities_split_into_halves() -> None:
    size = (100, 60)
    left, right = build_regions(["left", "right"], size)
    np.testing.assert_array_equal(left.mask, box_mask(size, 0, 0, 50, 60))
    np.testing.assert_array_equal(right.mask, box_mask(size, 50, 0, 100, 60))
    assert (left.box, right.box) == ((0, 0, 50, 60), (50, 0, 100, 60))
    assert left.mask.dtype == np.float32
    top, bottom = build_regions(["bottom", "top"], (60, 100))
    np.testing.assert_array_equal(top.mask, box_mask((60, 100), 0, 50, 60, 100))
    np.testing.assert_array_equal(bottom.mask, box_mask((60, 100), 0, 0, 60, 50))
    (alone,) = build_regions(["right"], (100, 60))  # a split always means at most a half
    np.testing.assert_array_equal(alone.mask, box_mask(size, 50, 0, 100, 60))


@pytest.mark.parametrize(
    ("kinds", "bands"),
    [
        (["left", "left", "right"], [(0, 30), (30, 60), (60, 90)]),
        (["left", "right", "left"], [(0, 30), (60, 90), (30, 60)]),
        (["right", "right", "left"], [(60, 90), (30, 60), (0, 30)]),
    ],
)
def test_three_identities_take_bands_in_order(kinds: list[str], bands: list[tuple[int, int]]) -> None:
    regions = build_regions(kinds, (90, 40))
    for region, (x1, x2) in zip(regions, bands, strict=True):
        np.testing.assert_array_equal(region.mask, box_mask((90, 40), x1, 0, x2, 40))


def test_four_identities_in_quarters() -> None:
    regions = build_regions(["left", "right", "left", "right"], (100, 20))
    assert [r.box[0::2] for r in regions] == [(0, 25), (75, 100), (25, 50), (50, 75)]
    assert sum(r.area for r in regions) == 100 * 20


# -- boxes and masks ------------------------------------------------------------------------
def test_box_fractions_map_to_pixel_edges() -> None:
    (region,) = build_regions([(0.1, 0.2, 0.5, 0.9)], (200, 100))
    np.testing.assert_array_equal(region.mask, box_mask((200, 100), 20, 20, 100, 90))
    assert region.label == "box (0.10, 0.20, 0.50, 0.90)"
    # Boxes and splits combine when they are disjoint.
    a, b = build_regions(["left", RegionSpec("box", box=(0.5, 0.25, 1.0, 0.75))], (200, 100))
    assert a.box == (0, 0, 100, 100) and b.box == (100, 25, 200, 75)


def _half_white(width: int = 200, height: int = 100) -> Image.Image:
    arr = np.zeros((height, width), dtype=np.uint8)
    arr[:, : width // 2] = 255
    return Image.fromarray(arr)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("Crop and Resize", (0, 0, 50, 100)),  # 200×100 scaled 1:1, 50 px cropped each side
        ("Resize and Fill", (0, 25, 50, 75)),  # scaled to 100×50, centred: bands above/below
        ("Just Resize", (0, 0, 50, 100)),  # squeezed to 100×100
    ],
)
def test_mask_image_follows_the_resize_mode(mode: str, expected: tuple[int, int, int, int]) -> None:
    (region,) = build_regions([_half_white()], (100, 100), mode)
    np.testing.assert_array_equal(region.mask, box_mask((100, 100), *expected))
    assert region.label == "mask"


def test_mask_from_rgba_and_colour_paint() -> None:
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[10:20, 5:15] = (255, 0, 0, 255)  # red paint, opaque
    rgba[30:, 30:] = (255, 255, 255, 0)  # transparent white is not painted
    (region,) = build_regions([RegionSpec("mask", mask=rgba)], (40, 40))
    np.testing.assert_array_equal(region.mask, box_mask((40, 40), 5, 10, 15, 20))


# -- auto ------------------------------------------------------------------------------------
def test_auto_regions_are_grown_face_boxes_left_to_right() -> None:
    faces = [face_at(250, 60, 330, 140), face_at(50, 50, 130, 130)]  # given right to left
    size = (400, 200)
    regions = build_regions(["auto", "auto"], size, "Just Resize", faces=faces, pose_size=size)
    margin = AUTO_MARGIN * 80
    assert regions[0].face_index == 0 and regions[1].face_index == 1
    assert regions[0].box == (
        round(50 - margin),
        round(50 - margin),
        round(130 + margin),
        round(130 + margin),
    )
    assert regions[1].box == (
        round(250 - margin),
        round(60 - margin),
        round(330 + margin),
        round(140 + margin),
    )
    assert regions[0].label == "auto: face 0 from the left"


def test_auto_regions_map_through_the_resize_mode() -> None:
    faces = [face_at(40, 40, 120, 120), face_at(260, 40, 340, 120)]
    pose, out = (400, 200), (200, 200)
    regions = build_regions(["auto", "auto"], out, "Crop and Resize", faces=faces, pose_size=pose)
    for region, face in zip(regions, faces, strict=True):
        grown = face.bbox + AUTO_MARGIN * 80 * np.array([-1, -1, 1, 1])
        x1, y1, x2, y2 = map_bbox(grown, pose, out, "Crop and Resize")
        assert region.box == (round(x1), round(y1), round(x2), round(y2))


def test_close_auto_regions_are_cut_between_the_faces() -> None:
    faces = [face_at(100, 50, 180, 130), face_at(200, 50, 280, 130)]
    size = (400, 200)
    a, b = build_regions(["auto", "auto"], size, "Just Resize", faces=faces, pose_size=size)
    assert a.box[2] == b.box[0] == 190  # the middle of the 20 px gap, not overlapping
    assert a.box[0] == 80 and b.box[2] == 300  # the far sides keep their margin
    # Faces stacked vertically are cut along y.
    faces = [face_at(100, 20, 180, 100), face_at(110, 110, 190, 190)]
    a, b = build_regions(["auto", "auto"], size, "Just Resize", faces=faces, pose_size=size)
    assert not np.any((a.mask > 0) & (b.mask > 0))
    assert a.box[3] == b.box[1] == 105


def test_auto_face_index_and_mixed_kinds() -> None:
    faces = [face_at(20, 20, 80, 80), face_at(150, 20, 210, 80), face_at(300, 20, 360, 80)]
    size = (400, 100)
    specs = [RegionSpec("auto", face_index=2), "auto", RegionSpec("box", box=(0.3, 0.0, 0.6, 1.0))]
    regions = build_regions(specs, size, "Just Resize", faces=faces, pose_size=size)
    assert [r.face_index for r in regions] == [2, 0, None]


def test_auto_regions_from_real_face_analysis(tmp_path: Path) -> None:
    img, drawn = fp.three_faces()
    faces = FaceAnalyzer(fp.write_pack(tmp_path)).analyze(img)
    size = (img.shape[1], img.shape[0])
    regions = build_regions(["auto"] * 3, size, "Just Resize", faces=faces, pose_size=size)
    for region, face in zip(regions, drawn, strict=True):
        x1, y1, x2, y2 = face.bbox
        cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
        assert region.mask[cy, cx] == 1.0
    kps = region_pose_kps(regions, faces, size, size, "Just Resize")
    for got, face in zip(kps, drawn, strict=True):
        np.testing.assert_allclose(got, face.kps, atol=1.0)


# -- keypoints per region -------------------------------------------------------------------
def test_reference_face_is_centred_in_its_region() -> None:
    _, right = build_regions(["left", "right"], (400, 200))
    face = face_at(10, 10, 110, 110)
    kps = place_reference_kps(face.kps, right, face.bbox)
    assert kps.dtype == np.float32
    # Region box 200..400 × 0..200: scale 0.5 · min(200/100, 200/100) = 1, centre (299.5, 99.5).
    np.testing.assert_allclose(kps, face.kps - np.array([60, 60]) + np.array([299.5, 99.5]), atol=1e-4)
    # A tall thin region limits by its width.
    (band,) = build_regions([(0.0, 0.0, 0.25, 1.0)], (400, 400))
    kps = place_reference_kps(face.kps, band, face.bbox)
    np.testing.assert_allclose(kps, (face.kps - 60) * 0.5 + np.array([49.5, 199.5]), atol=1e-4)


def test_reference_box_from_keypoints_when_missing() -> None:
    (region,) = build_regions([(0.0, 0.0, 1.0, 1.0)], (200, 200))
    face = face_at(0, 0, 100, 100)
    kps = place_reference_kps(face.kps, region)
    extent = face.kps.max(axis=0) - face.kps.min(axis=0)
    scale = 0.5 * min(200 / (extent[0] * KPS_TO_FACE_BOX), 200 / (extent[1] * KPS_TO_FACE_BOX))
    centre = (face.kps.max(axis=0) + face.kps.min(axis=0)) / 2
    np.testing.assert_allclose(kps, (face.kps - centre) * scale + np.array([99.5, 99.5]), atol=1e-4)


def test_pose_image_faces_are_matched_to_regions_and_mapped() -> None:
    faces = [face_at(260, 40, 340, 120), face_at(40, 60, 120, 140)]
    pose, out = (400, 200), (800, 400)
    regions = build_regions(["left", "right"], out)
    matched = match_pose_faces(regions, faces, pose, out, "Crop and Resize")
    assert matched == [faces[1], faces[0]]
    kps = region_pose_kps(regions, faces, pose, out, "Crop and Resize")
    np.testing.assert_allclose(kps[0], map_points(faces[1].kps, pose, out, "Crop and Resize"), atol=1e-4)
    assert kps[0].dtype == np.float32


def test_hint_for_several_faces_merges_their_drawings() -> None:
    kps_a = face_at(10, 10, 90, 90).kps
    kps_b = face_at(110, 10, 190, 90).kps
    np.testing.assert_array_equal(
        multi_identity_hint((200, 100), [kps_a]), np.asarray(draw_kps((200, 100), kps_a))
    )
    both = multi_identity_hint((200, 100), [kps_a, kps_b])
    np.testing.assert_array_equal(both[:, :100], np.asarray(draw_kps((200, 100), kps_a))[:, :100])
    np.testing.assert_array_equal(both[:, 100:], np.asarray(draw_kps((200, 100), kps_b))[:, 100:])


# -- errors -------------------------------------------------------------------------------------
def test_overlap_names_both_regions_and_the_amount() -> None:
    with pytest.raises(InvalidInputError) as err:
        build_regions(["left", (0.25, 0.0, 1.0, 1.0)], (100, 50))
    assert str(err.value) == (
        "The regions of identity 1 (left) and identity 2 (box (0.25, 0.00, 1.00, 1.00)) overlap by "
        "1,250 px (50.0 % of the smaller one); make them disjoint."
    )
    with pytest.raises(InvalidInputError, match=r"identity 1 \(left\) and identity 2 \(top\) overlap"):
        build_regions(["left", "top"], (100, 50))


def test_spec_shorthands() -> None:
    assert RegionSpec.parse(" Left ") == RegionSpec("left")
    assert RegionSpec.parse((0.1, 0.2, 0.3, 0.4)) == RegionSpec("box", box=(0.1, 0.2, 0.3, 0.4))
    assert RegionSpec.parse({"kind": "auto", "face_index": 1}) == RegionSpec("auto", face_index=1)
    assert RegionSpec.parse(np.zeros((4, 4))).kind == "mask"
    with pytest.raises(InvalidInputError, match="needs a 'kind'"):
        RegionSpec.parse({"where": "left"})
    with pytest.raises(InvalidInputError, match="Cannot read a region from int"):
        RegionSpec.parse(3)


def test_more_than_four_identities() -> None:
    with pytest.raises(InvalidInputError, match="at most 4 identities, but 5 were given; remove 1"):
        build_regions(["left"] * 5, (100, 100))
    with pytest.raises(InvalidInputError, match="No identity"):
        build_regions([], (100, 100))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ((-0.1, 0.0, 0.5, 1.0), r"box \(-0.10, 0.00, 0.50, 1.00\) of identity 1 reaches outside the canvas"),
        ((0.0, 0.0, 1.2, 1.0), "reaches outside the canvas"),
        ((0.5, 0.0, 0.5, 1.0), "is empty; x2 must exceed x1"),
        ((0.1, "a", 0.5, 1.0), "must be four numbers"),
        ("middle", "unknown region 'middle'"),
    ],
)
def test_bad_boxes_and_kinds(spec: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        build_regions([spec], (100, 100))


def test_empty_and_cropped_masks() -> None:
    with pytest.raises(InvalidInputError, match="region mask of identity 2 is empty"):
        build_regions(["left", np.zeros((50, 50), dtype=np.uint8)], (100, 100))
    edge = np.zeros((100, 200), dtype=np.uint8)
    edge[:, :20] = 255  # lies in the part Crop and Resize cuts off
    with pytest.raises(
        InvalidInputError, match="falls outside the canvas with the resize mode 'Crop and Resize'"
    ):
        build_regions([edge], (100, 100), "Crop and Resize")
    (region,) = build_regions([edge], (100, 100), "Resize and Fill")
    assert region.area > 0
    with pytest.raises(InvalidInputError, match="no mask image"):
        build_regions([RegionSpec("mask")], (100, 100))


def test_auto_errors() -> None:
    faces = [face_at(20, 20, 80, 80), face_at(150, 20, 210, 80)]
    size = (400, 100)
    with pytest.raises(InvalidInputError, match="needs the faces of a pose image"):
        build_regions(["auto"], size)
    with pytest.raises(
        InvalidInputError, match="3 identities have the region 'auto' but the pose image shows only 2"
    ):
        build_regions(["auto"] * 3, size, faces=faces, pose_size=size)
    with pytest.raises(InvalidInputError, match="asks for face 5 of the pose image, which has faces 0 to 1"):
        build_regions([RegionSpec("auto", face_index=5)], size, faces=faces, pose_size=size)
    with pytest.raises(InvalidInputError, match="Identities 1 and 2 both ask for face 1"):
        specs = [RegionSpec("auto", face_index=1), RegionSpec("auto", face_index=1)]
        build_regions(specs, size, faces=faces, pose_size=size)
    with pytest.raises(
        InvalidInputError, match=r"region of identity 1 \(auto: face 0 from the left\) falls outside"
    ):
        build_regions(["auto"], (100, 100), "Crop and Resize", faces=faces, pose_size=size)


def test_pose_matching_errors() -> None:
    size = (400, 200)
    regions = build_regions(["left", "right"], size)
    right_only = [face_at(260, 40, 340, 120), face_at(300, 130, 360, 190)]
    with pytest.raises(InvalidInputError) as err:
        match_pose_faces(regions, right_only, size, size)
    assert str(err.value).startswith("The region of identity 1 (left) holds no face of the pose image;")
    with pytest.raises(
        InvalidInputError, match="2 identities take their pose from the pose image but it shows only 1 face;"
    ):
        match_pose_faces(regions, right_only[:1], size, size)
