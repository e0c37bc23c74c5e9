"""Likeness score: real insightface + onnxruntime on generated antelopev2 and buffalo_l packs.

The fake recognizers are fixed linear maps of the aligned crop, so every expected score is
recomputed here independently (``expected_embedding``) from the drawn images.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from instantid_ext.errors import InvalidInputError
from instantid_ext.faces import analysis as face_mod
from instantid_ext.faces import likeness as lk
from instantid_ext.faces.analysis import FaceAnalyzer, mean_embedding
from instantid_ext.faces.likeness import LikenessResult, LikenessScorer, ScoredFace
from instantid_ext.faces.packs import ANTELOPEV2, BUFFALO_L
from tests.fakes import antelopev2_pack as fp
from tests.fakes import buffalo_pack as bp

COS_TOL = 1e-5  # float32 ONNX vs float64 numpy, on 512-d vectors
pytestmark = pytest.mark.usefixtures("no_network", "fresh_face_results")


@pytest.fixture(scope="module")
def antelope_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fp.write_pack(tmp_path_factory.mktemp("insightface-antelopev2"))


@pytest.fixture(scope="module")
def both_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("insightface-both")
    fp.write_pack(root)
    return bp.write_pack(root)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def portrait(
    ident: int, center: tuple[float, float] = (180, 200), size: int = 160, shape: tuple[int, int] = (400, 360)
) -> tuple[np.ndarray, fp.DrawnFace]:
    img = fp.background(*shape)
    return img, fp.draw_face(img, center, size, ident=ident)


def conditioning_embedding(root: Path, images: list[np.ndarray]) -> np.ndarray:
    """What the generation conditioned on: the antelopev2 mean raw embedding of the references."""
    analyzer = FaceAnalyzer(root)
    return mean_embedding([analyzer.analyze_one(img) for img in images])


def drawn_result(similarity: float, copy_paste: bool = False, independent: bool = False) -> LikenessResult:
    face = ScoredFace(
        bbox=np.zeros(4, np.float32),
        kps=np.zeros((5, 2), np.float32),
        det_score=0.9,
        similarity=similarity,
        pose_distance=None,
        copy_paste=copy_paste,
    )
    pack = BUFFALO_L if independent else ANTELOPEV2
    return LikenessResult((face,), pack.label, pack.name, independent)


# --------------------------------------------------------------------------------------
# The score itself
# --------------------------------------------------------------------------------------


def test_score_is_the_cosine_of_the_recognizer_embeddings(antelope_root: Path) -> None:
    ref_img, _ = portrait(ident=1)
    embedding = conditioning_embedding(antelope_root, [ref_img])
    scorer = LikenessScorer.from_roots([antelope_root])
    reference = scorer.reference(embedding, [ref_img])
    assert not reference.independent
    assert reference.recognizer == "antelopev2 (glintr100)"
    np.testing.assert_array_equal(reference.embedding, embedding)  # exactly what InstantID used

    out, drawn = portrait(ident=2, center=(300, 260), size=200, shape=(520, 560))
    result = scorer.score(Image.fromarray(out), reference)
    assert result.state == "scored"
    assert result.found
    assert len(result.faces) == 1
    best = result.best
    assert best is not None
    np.testing.assert_allclose(best.bbox, drawn.bbox, atol=1.0)
    ref_kps = FaceAnalyzer(antelope_root).analyze_one(ref_img).kps
    expected = cosine(fp.expected_embedding(out, best.kps), fp.expected_embedding(ref_img, ref_kps))
    assert result.similarity == pytest.approx(expected, abs=COS_TOL)
    assert best.similarity == result.similarity
    assert result.band == lk.band_for(expected)
    assert result.recognizer == "antelopev2 (glintr100)"
    assert result.pack == "antelopev2"
    assert result.independent is False
    assert result.note == "buffalo_l is not installed"
    # The fake glintr100 puts all drawn faces close together (≈0.98) and every drawn face has the
    # same keypoint layout, so this other identity still passes the copy-paste test here.
    assert expected > lk.COPY_PASTE_MIN_SIMILARITY
    assert lk.format_infotext(result) == f"{expected:.2f} (strong, antelopev2, copy-paste)"


def test_other_identity_scores_lower_than_the_same_identity(antelope_root: Path, both_root: Path) -> None:
    ref_img, _ = portrait(ident=1)
    same, _ = portrait(ident=1, center=(250, 240), size=130, shape=(480, 520))
    other, _ = portrait(ident=4, center=(250, 240), size=130, shape=(480, 520))
    for root in (antelope_root, both_root):
        scorer = LikenessScorer.from_roots([root])
        reference = scorer.reference(conditioning_embedding(root, [ref_img]), [ref_img])
        s_same = scorer.score(same, reference).similarity
        s_other = scorer.score(other, reference).similarity
        assert s_same is not None and s_other is not None
        assert s_same > 0.99  # the same drawn face, moved and resized (resampling blurs it a little)
        assert s_other < s_same


def test_no_face_is_a_state_not_an_error(antelope_root: Path) -> None:
    ref_img, _ = portrait(ident=1)
    scorer = LikenessScorer.from_roots([antelope_root])
    reference = scorer.reference(conditioning_embedding(antelope_root, [ref_img]), [ref_img])
    result = scorer.score(fp.background(300, 400), reference)
    assert result.state == "no face"
    assert not result.found
    assert result.faces == ()
    assert result.best is None
    assert result.best_index is None
    assert result.similarity is None
    assert result.band is None
    assert result.copy_paste is False
    assert result.recognizer == "antelopev2 (glintr100)"
    assert lk.format_infotext(result) == "no face"
    assert lk.NO_FACE in lk.format_summary(result)
    assert result.to_dict()["state"] == "no face"
    assert result.to_dict()["faces"] == []


def test_several_faces_the_most_similar_one_counts(antelope_root: Path, both_root: Path) -> None:
    ref_img, _ = portrait(ident=12)
    # The reference identity on the smallest, rightmost face: "best" is neither largest nor first.
    out, drawn = fp.background(480, 640), []
    drawn.append(fp.draw_face(out, (90, 240), 110, ident=11))
    drawn.append(fp.draw_face(out, (330, 200), 140, ident=13))
    drawn.append(fp.draw_face(out, (560, 320), 80, ident=12))
    for root, expected_embedding in (
        (antelope_root, fp.expected_embedding),
        (both_root, bp.expected_embedding),
    ):
        scorer = LikenessScorer.from_roots([root])
        reference = scorer.reference(conditioning_embedding(root, [ref_img]), [ref_img])
        (ref_face,) = reference.faces
        result = scorer.score(out, reference)
        assert len(result.faces) == 3
        assert [f.bbox[0] for f in result.faces] == sorted(f.bbox[0] for f in result.faces)
        for face, want in zip(result.faces, drawn, strict=True):
            np.testing.assert_allclose(face.bbox, want.bbox, atol=1.0)
            expected = cosine(expected_embedding(out, face.kps), expected_embedding(ref_img, ref_face.kps))
            assert face.similarity == pytest.approx(expected, abs=COS_TOL)
        assert result.best_index == 2
        assert result.best is result.faces[2]
        assert result.similarity == max(f.similarity for f in result.faces)
        assert "best of 3 faces" in lk.format_summary(result)
        assert result.to_dict()["best_index"] == 2


# --------------------------------------------------------------------------------------
# Bands and text
# --------------------------------------------------------------------------------------


def test_bands_at_their_thresholds() -> None:
    assert lk.BORDERLINE_MIN < lk.SAME_PERSON_MIN < lk.STRONG_MIN < lk.COPY_PASTE_MIN_SIMILARITY
    cases = [
        (1.0, "strong"),
        (lk.STRONG_MIN, "strong"),
        (np.nextafter(lk.STRONG_MIN, 0.0), "same-person range"),
        (lk.SAME_PERSON_MIN, "same-person range"),
        (np.nextafter(lk.SAME_PERSON_MIN, 0.0), "borderline"),
        (lk.BORDERLINE_MIN, "borderline"),
        (np.nextafter(lk.BORDERLINE_MIN, 0.0), "likely lost"),
        (0.0, "likely lost"),
        (-0.5, "likely lost"),
    ]
    for similarity, band in cases:
        assert lk.band_for(float(similarity)) == band, similarity
        result = drawn_result(float(similarity))
        assert result.band == band
        assert result.best is not None and result.best.band == band
    # The documented numbers.
    assert (lk.BORDERLINE_MIN, lk.SAME_PERSON_MIN, lk.STRONG_MIN) == (0.30, 0.40, 0.60)


def test_infotext_and_summary() -> None:
    assert lk.format_infotext(drawn_result(0.634)) == "0.63 (strong, antelopev2)"
    assert lk.format_infotext(drawn_result(0.45, independent=True)) == "0.45 (same-person range, buffalo_l)"
    assert lk.format_infotext(drawn_result(0.91, copy_paste=True)) == "0.91 (strong, antelopev2, copy-paste)"
    assert lk.format_infotext(drawn_result(0.12)) == "0.12 (likely lost, antelopev2)"

    flattering = lk.format_summary(drawn_result(0.35))
    assert flattering.startswith("Likeness 0.35 (borderline): ")
    assert "antelopev2 (glintr100), the conditioning encoder, which flatters it" in flattering
    independent = lk.format_summary(drawn_result(0.52, independent=True))
    assert "buffalo_l (w600k_r50), independent of the encoder that made the image" in independent
    assert "copy the reference photo" in lk.format_summary(drawn_result(0.9, copy_paste=True))
    for text in (flattering, independent):
        assert "\n" not in text


# --------------------------------------------------------------------------------------
# The second recognizer
# --------------------------------------------------------------------------------------


def test_second_recognizer_scores_when_installed(both_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    face_mod.clear_cache()
    loads: list[str] = []
    real_load = face_mod._load

    def counting_load(pack: Path, providers: tuple[str, ...], *spec: Any) -> Any:
        loads.append(pack.name)
        return real_load(pack, providers, *spec)

    monkeypatch.setattr(face_mod, "_load", counting_load)

    refs = [portrait(ident=1)[0], portrait(ident=5, center=(170, 210), size=150)[0]]
    weights = [3.0, 1.0]
    scorer = LikenessScorer.from_roots([both_root])
    assert scorer.independent is not None
    assert scorer.independent.pack == BUFFALO_L
    antelope = conditioning_embedding(both_root, refs)
    reference = scorer.reference(antelope, refs, weights=weights)
    assert reference.independent
    assert reference.recognizer == "buffalo_l (w600k_r50)"
    assert reference.note == ""
    buffalo_faces = [FaceAnalyzer(both_root, pack=BUFFALO_L).analyze_one(img) for img in refs]
    expected_ref = (
        3.0 * bp.expected_embedding(refs[0], buffalo_faces[0].kps)
        + 1.0 * bp.expected_embedding(refs[1], buffalo_faces[1].kps)
    ) / 4.0
    np.testing.assert_allclose(reference.embedding, expected_ref, rtol=1e-4, atol=1e-4)
    assert len(reference.faces) == 2

    out, _ = portrait(ident=3, center=(260, 230), size=180, shape=(460, 500))
    result = scorer.score(out, reference)
    best = result.best
    assert best is not None
    buffalo_cos = cosine(bp.expected_embedding(out, best.kps), expected_ref)
    antelope_cos = cosine(fp.expected_embedding(out, best.kps), antelope)
    assert result.similarity == pytest.approx(buffalo_cos, abs=COS_TOL)
    assert abs(buffalo_cos - antelope_cos) > 0.3  # the two recognizers really disagree here
    assert result.recognizer == "buffalo_l (w600k_r50)"
    assert result.pack == "buffalo_l"
    assert result.independent is True
    assert lk.format_infotext(result).endswith(", buffalo_l)")

    # Both packs loaded once each, through the same cached machinery.
    scorer.score(portrait(ident=6)[0], reference)
    assert sorted(loads) == ["antelopev2", "buffalo_l"]


def test_saved_identity_can_only_be_scored_by_the_conditioning_encoder(both_root: Path) -> None:
    ref_img, _ = portrait(ident=1)
    identity_face = FaceAnalyzer(both_root).analyze_one(ref_img)
    scorer = LikenessScorer.from_roots([both_root])
    reference = scorer.reference(identity_face.embedding, kps=identity_face.kps)
    assert not reference.independent
    assert reference.recognizer == "antelopev2 (glintr100)"
    assert reference.note == "a saved identity has no photos to re-embed with buffalo_l"
    out, _ = portrait(ident=2, center=(200, 220), size=150)
    result = scorer.score(out, reference)
    assert result.independent is False
    assert result.note == reference.note
    best = result.best
    assert best is not None
    expected = cosine(fp.expected_embedding(out, best.kps), identity_face.embedding)
    assert result.similarity == pytest.approx(expected, abs=COS_TOL)
    summary = lk.format_summary(result)
    assert "the conditioning encoder, which flatters it; a saved identity has no photos" in summary


def test_second_recognizer_turned_off(both_root: Path) -> None:
    scorer = LikenessScorer.from_roots([both_root], use_independent=False)
    assert scorer.independent is None
    ref_img, _ = portrait(ident=1)
    reference = scorer.reference(conditioning_embedding(both_root, [ref_img]), [ref_img])
    assert not reference.independent
    assert reference.note == "the second recognizer is turned off"


def test_unusable_second_pack_falls_back_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ref_img, _ = portrait(ident=1)
    # Installed but incomplete: found at construction.
    incomplete = bp.write_pack(fp.write_pack(tmp_path / "incomplete"), files=(bp.DETECTOR,))
    with caplog.at_level(logging.WARNING):
        scorer = LikenessScorer.from_roots([incomplete])
    assert scorer.independent is None
    assert any("w600k_r50.onnx" in r.getMessage() for r in caplog.records)
    reference = scorer.reference(conditioning_embedding(incomplete, [ref_img]), [ref_img])
    assert not reference.independent
    assert reference.note == "buffalo_l is installed but not usable"

    # Complete but damaged: insightface fails when the photos are first embedded.
    damaged = bp.write_pack(fp.write_pack(tmp_path / "damaged"))
    (bp.pack_dir(damaged) / bp.RECOGNIZER).write_bytes(b"\x08\x07" * 4096)
    caplog.clear()
    scorer = LikenessScorer.from_roots([damaged])
    assert scorer.independent is not None
    with caplog.at_level(logging.WARNING, logger="instantid_ext.faces.likeness"):
        reference = scorer.reference(conditioning_embedding(damaged, [ref_img]), [ref_img])
    assert not reference.independent
    assert reference.note == "buffalo_l could not embed the reference photos"
    assert any("buffalo_l" in r.getMessage() for r in caplog.records)
    result = scorer.score(ref_img, reference)
    assert result.recognizer == "antelopev2 (glintr100)"
    assert result.similarity == pytest.approx(1.0, abs=1e-5)


def test_reference_from_another_scorer_is_refused(antelope_root: Path, both_root: Path) -> None:
    ref_img, _ = portrait(ident=1)
    with_second = LikenessScorer.from_roots([both_root])
    reference = with_second.reference(conditioning_embedding(both_root, [ref_img]), [ref_img])
    with pytest.raises(InvalidInputError, match=r"buffalo_l \(w600k_r50\)"):
        LikenessScorer.from_roots([antelope_root]).score(ref_img, reference)


# --------------------------------------------------------------------------------------
# Copy-paste hint
# --------------------------------------------------------------------------------------


def rotated(kps: np.ndarray, degrees: float) -> np.ndarray:
    centre = kps.mean(axis=0)
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return ((kps - centre) @ rot.T + centre).astype(np.float32)


def test_pose_distance_ignores_position_and_scale_but_not_rotation() -> None:
    kps = fp.draw_face(fp.background(300, 300), (150, 150), 120).kps
    moved = kps * 1.7 + np.array([40.0, -25.0], np.float32)
    assert lk.pose_distance(kps, moved) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(lk.normalized_kps(kps)[:2], [[-0.5, 0.0], [0.5, 0.0]], atol=0.01)
    assert lk.pose_distance(kps, rotated(kps, 10.0)) > lk.COPY_PASTE_MAX_POSE_DISTANCE
    assert lk.pose_distance(kps, rotated(kps, 1.0)) < lk.COPY_PASTE_MAX_POSE_DISTANCE
    with pytest.raises(InvalidInputError, match="both eyes"):
        lk.normalized_kps(np.zeros((5, 2)))


def test_copy_paste_needs_both_the_face_and_the_pose(both_root: Path) -> None:
    ref_img, _ = portrait(ident=1)
    scorer = LikenessScorer.from_roots([both_root])
    reference = scorer.reference(conditioning_embedding(both_root, [ref_img]), [ref_img])
    # The reference face again, moved and resized: same face, same keypoint layout.
    copy, _ = portrait(ident=1, center=(230, 260), size=190, shape=(500, 460))
    result = scorer.score(copy, reference)
    assert result.copy_paste
    best = result.best
    assert best is not None
    assert best.pose_distance is not None and best.pose_distance < 0.01
    assert best.similarity > lk.COPY_PASTE_MIN_SIMILARITY
    assert lk.format_infotext(result).endswith(", copy-paste)")
    # Another face in the same pose: no copy.
    other = scorer.score(portrait(ident=3)[0], reference)
    assert other.best is not None and other.best.pose_distance is not None
    assert other.best.pose_distance < 0.01
    assert other.similarity is not None and other.similarity < lk.COPY_PASTE_MIN_SIMILARITY
    assert not other.copy_paste

    # The same face in another pose (a saved identity whose reference head was tilted): no copy.
    antelope = FaceAnalyzer(both_root).analyze_one(ref_img)
    tilted = scorer.reference(antelope.embedding, kps=rotated(antelope.kps, 15.0))
    result = scorer.score(copy, tilted)
    assert result.similarity is not None and result.similarity > lk.COPY_PASTE_MIN_SIMILARITY
    assert result.best is not None and result.best.pose_distance is not None
    assert result.best.pose_distance > lk.COPY_PASTE_MAX_POSE_DISTANCE
    assert not result.copy_paste
    # Without any reference keypoints there is no pose to compare, hence no hint.
    bare = scorer.score(copy, scorer.reference(antelope.embedding))
    assert bare.best is not None and bare.best.pose_distance is None
    assert not bare.copy_paste


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def test_records_are_frozen_and_json_ready(antelope_root: Path) -> None:
    ref_img, _ = portrait(ident=1)
    scorer = LikenessScorer.from_roots([antelope_root])
    reference = scorer.reference(conditioning_embedding(antelope_root, [ref_img]), [ref_img])
    result = scorer.score(ref_img, reference)
    best = result.best
    assert best is not None
    with pytest.raises(AttributeError):
        result.note = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        best.bbox[0] = 0.0
    with pytest.raises(ValueError, match="read-only"):
        reference.embedding[0] = 0.0
    data = json.loads(json.dumps(result.to_dict()))
    assert data["similarity"] == pytest.approx(best.similarity)
    assert data["faces"][0]["band"] == best.band
    assert data["recognizer"] == "antelopev2 (glintr100)"


@pytest.mark.parametrize(
    ("embedding", "match"),
    [(np.zeros(512), "all zeros"), (np.ones(128), r"shape \(128,\)"), (np.full(512, np.nan), "not finite")],
)
def test_unusable_reference_embedding(antelope_root: Path, embedding: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        LikenessScorer.from_roots([antelope_root]).reference(embedding)


def test_bgr_output_arrays(antelope_root: Path) -> None:
    ref_img, _ = portrait(ident=1)
    scorer = LikenessScorer.from_roots([antelope_root])
    reference = scorer.reference(conditioning_embedding(antelope_root, [ref_img]), [ref_img])
    out, _ = portrait(ident=2)
    rgb = scorer.score(out, reference).similarity
    bgr = scorer.score(np.ascontiguousarray(out[..., ::-1]), reference, channel_order="bgr").similarity
    assert rgb is not None and bgr == pytest.approx(rgb, abs=1e-6)


def test_reference_photos_use_the_generation_face_choice(both_root: Path) -> None:
    group = fp.background(320, 560)
    fp.draw_face(group, (140, 160), 150, ident=1)
    right = fp.draw_face(group, (420, 160), 120, ident=5)
    scorer = LikenessScorer.from_roots([both_root])
    antelope = FaceAnalyzer(both_root).analyze_one(group, "index", 1).embedding
    reference = scorer.reference(antelope, [group], face_choice="index", face_index=1)
    assert reference.independent
    (face,) = reference.faces
    assert face.kps is not None
    np.testing.assert_allclose(face.kps, right.kps, atol=1.0)
    np.testing.assert_allclose(
        reference.embedding, bp.expected_embedding(group, face.kps), rtol=1e-4, atol=1e-4
    )
    # Bad weights are the caller's error, not a reason to fall back to the conditioning encoder.
    with pytest.raises(InvalidInputError, match="one weight per image"):
        scorer.reference(antelope, [group], weights=[1.0, 2.0])
