"""Face analysis through the real insightface + onnxruntime code, on a generated fake pack.

See ``tests/fakes/antelopev2_pack.py`` for how the fake detector "sees" the drawn faces.
"""

from __future__ import annotations

import builtins
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from instantid_ext.errors import DependencyError, InvalidInputError, ModelFileError, NoFaceError
from instantid_ext.faces import analysis as face_mod
from instantid_ext.faces.analysis import FaceAnalyzer, choose_face, mean_embedding
from tests.fakes import antelopev2_pack as fp

CPU = "CPUExecutionProvider"
BBOX_TOL = 1.0  # px, scale-1 detection: the moments are exact up to float error
SCORE_TOL = 0.02
pytestmark = pytest.mark.usefixtures("no_network", "fresh_face_results")


@pytest.fixture(scope="session")
def pack_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fp.write_pack(tmp_path_factory.mktemp("insightface"))


@pytest.fixture
def analyzer(pack_root: Path) -> FaceAnalyzer:
    return FaceAnalyzer(pack_root)


@pytest.fixture
def call_log(analyzer: FaceAnalyzer, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Record every detector / recognizer call the analyzer's cached insightface models get."""
    loaded = analyzer._loaded()
    calls: list[tuple[str, Any]] = []
    detect, get = loaded.detector.detect, loaded.recognizer.get

    def spy_detect(img: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        calls.append(("detect", kwargs.get("input_size")))
        return detect(img, *args, **kwargs)

    def spy_get(img: np.ndarray, face: Any) -> Any:
        calls.append(("embed", None))
        return get(img, face)

    monkeypatch.setattr(loaded.detector, "detect", spy_detect)
    monkeypatch.setattr(loaded.recognizer, "get", spy_get)
    return calls


def one_face(
    ident: int = 1, size: int = 160, shape: tuple[int, int] = (400, 360)
) -> tuple[np.ndarray, fp.DrawnFace]:
    img = fp.background(*shape)
    drawn = fp.draw_face(img, (shape[1] / 2, shape[0] / 2), size, ident=ident)
    return img, drawn


# --------------------------------------------------------------------------------------
# Detection geometry, order, choice
# --------------------------------------------------------------------------------------


def test_faces_left_to_right_with_drawn_geometry(analyzer: FaceAnalyzer) -> None:
    img, drawn = fp.three_faces()
    faces = analyzer.analyze(img)
    assert len(faces) == 3
    assert [f.center_x for f in faces] == sorted(f.center_x for f in faces)
    for got, want in zip(faces, drawn, strict=True):
        assert got.bbox.dtype == np.float32
        assert got.bbox.shape == (4,)
        assert got.kps.dtype == np.float32
        assert got.kps.shape == (5, 2)
        assert got.embedding.dtype == np.float32
        assert got.embedding.shape == (512,)
        assert isinstance(got.score, float)
        np.testing.assert_allclose(got.bbox, want.bbox, atol=BBOX_TOL)
        np.testing.assert_allclose(got.kps, want.kps, atol=BBOX_TOL)
        assert got.score == pytest.approx(fp.expected_score(img, want), abs=SCORE_TOL)
        assert got.area == pytest.approx(want.area, rel=0.02)
    # ArcFace keypoint order: image-left eye first, mouth below the nose.
    kps = faces[0].kps
    assert kps[0, 0] < kps[1, 0]
    assert kps[2, 1] < kps[3, 1]
    assert kps[3, 0] < kps[4, 0]


def test_face_records_are_read_only(analyzer: FaceAnalyzer) -> None:
    img, _ = one_face()
    (f,) = analyzer.analyze(img)
    with pytest.raises(ValueError, match="read-only"):
        f.embedding[0] = 0.0
    with pytest.raises(AttributeError):
        f.score = 1.0  # type: ignore[misc]


def test_choose_face_modes(analyzer: FaceAnalyzer) -> None:
    img, drawn = fp.three_faces()
    faces = analyzer.analyze(img)
    largest = choose_face(faces)
    np.testing.assert_allclose(largest.bbox, drawn[1].bbox, atol=BBOX_TOL)
    assert largest is sorted(faces, key=lambda f: f.area)[-1]
    for i in range(3):
        np.testing.assert_allclose(choose_face(faces, "index", i).bbox, drawn[i].bbox, atol=BBOX_TOL)
    best = choose_face(faces, "highest_score")
    np.testing.assert_allclose(best.bbox, drawn[2].bbox, atol=BBOX_TOL)
    assert best.score == max(f.score for f in faces)
    # The three modes really disagree on this image.
    assert len({id(largest), id(best), id(choose_face(faces, "index", 0))}) == 3


def test_analyze_one_uses_the_choice(analyzer: FaceAnalyzer) -> None:
    img, drawn = fp.three_faces()
    np.testing.assert_allclose(analyzer.analyze_one(img).bbox, drawn[1].bbox, atol=BBOX_TOL)
    np.testing.assert_allclose(analyzer.analyze_one(img, "index", 2).bbox, drawn[2].bbox, atol=BBOX_TOL)


def test_choice_errors(analyzer: FaceAnalyzer) -> None:
    img = fp.background(300, 500)
    fp.draw_face(img, (120, 150), 100, ident=1)
    fp.draw_face(img, (380, 150), 100, ident=2)
    with pytest.raises(InvalidInputError) as info:
        analyzer.analyze_one(img, "index", 3, label="reference image 1")
    assert "Face index 3 requested but only 2 faces found in reference image 1" in str(info.value)
    faces = analyzer.analyze(img)
    with pytest.raises(InvalidInputError, match="whole number"):
        choose_face(faces, "index", -1)
    with pytest.raises(InvalidInputError, match="Unknown face choice"):
        choose_face(faces, "smallest")  # type: ignore[arg-type]
    with pytest.raises(NoFaceError, match="pose image"):
        choose_face([], label="pose image")


def test_no_face_names_the_input_and_the_fix(analyzer: FaceAnalyzer) -> None:
    with pytest.raises(NoFaceError) as info:
        analyzer.analyze_one(fp.background(200, 200), label="reference image 2")
    msg = str(info.value)
    assert "reference image 2" in msg
    assert "pad the photo" in msg


# --------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------


def test_raw_embedding_matches_independent_recomputation(analyzer: FaceAnalyzer) -> None:
    img, drawn = fp.three_faces()
    for got, want in zip(analyzer.analyze(img), drawn, strict=True):
        expected = fp.expected_embedding(img, got.kps)
        np.testing.assert_allclose(got.embedding, expected, rtol=1e-4, atol=1e-3)
        # From the drawn keypoints (sub-pixel apart) it is nearly the same vector.
        from_drawn = fp.expected_embedding(img, want.kps)
        assert np.linalg.norm(got.embedding - from_drawn) < 0.01 * np.linalg.norm(from_drawn)
        # Raw, not L2-normalised.
        assert np.linalg.norm(got.embedding) > 10.0


def test_different_faces_have_different_embeddings(analyzer: FaceAnalyzer) -> None:
    e1 = analyzer.analyze_one(one_face(ident=1)[0]).embedding
    e2 = analyzer.analyze_one(one_face(ident=2)[0]).embedding
    cosine = float(e1 @ e2 / np.linalg.norm(e1) / np.linalg.norm(e2))
    assert cosine < 0.99
    # The same face drawn elsewhere and at another size is the same identity.
    img = fp.background(500, 600)
    fp.draw_face(img, (200, 300), 120, ident=1)
    e1b = analyzer.analyze_one(img).embedding
    assert float(e1 @ e1b / np.linalg.norm(e1) / np.linalg.norm(e1b)) > 0.99


def test_mean_embedding_unweighted_and_weighted(analyzer: FaceAnalyzer) -> None:
    faces = analyzer.analyze(fp.three_faces()[0])
    vectors = [f.embedding for f in faces]
    mean = mean_embedding(vectors)
    assert mean.dtype == np.float32
    assert mean.shape == (512,)
    np.testing.assert_allclose(mean, np.mean(np.stack(vectors), axis=0), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(mean_embedding(faces), mean)  # Face records work too
    weights = [1.0, 2.0, 5.0]
    manual = (vectors[0] * 1.0 + vectors[1] * 2.0 + vectors[2] * 5.0) / 8.0
    np.testing.assert_allclose(mean_embedding(vectors, weights), manual, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(mean_embedding(vectors, [0, 1, 0]), vectors[1], atol=1e-6)
    np.testing.assert_allclose(mean_embedding([vectors[0].reshape(1, 512)]), vectors[0])


@pytest.mark.parametrize(
    ("embeddings", "weights", "match"),
    [
        ([], None, "at least one"),
        ([np.zeros(128)], None, r"shape \(128,\)"),
        ([np.zeros((2, 512))], None, r"shape \(2, 512\)"),
        ([np.full(512, np.nan)], None, "NaN"),
        ([np.zeros(512), np.ones(512)], [1.0], "2 face embeddings"),
        ([np.zeros(512), np.ones(512)], [1.0, -1.0], "≥ 0"),
        ([np.zeros(512), np.ones(512)], [0.0, 0.0], "not all 0"),
    ],
)
def test_mean_embedding_validation(
    embeddings: list[np.ndarray], weights: list[float] | None, match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        mean_embedding(embeddings, weights)


# --------------------------------------------------------------------------------------
# Inputs, padding retry, caching
# --------------------------------------------------------------------------------------


def test_every_input_type_gives_the_same_embedding(analyzer: FaceAnalyzer) -> None:
    img, drawn = one_face(ident=5)

    def embed(image: Any, order: str = "rgb") -> np.ndarray:
        face_mod._RESULTS.clear()  # make the models run for each input
        return analyzer.analyze_one(image, channel_order=order).embedding  # type: ignore[arg-type]

    reference = embed(img)
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    for variant, order in [
        (Image.fromarray(img), "rgb"),
        (Image.fromarray(rgba, "RGBA"), "rgb"),
        (rgba, "rgb"),
        (np.ascontiguousarray(img[..., ::-1]), "bgr"),
        (img.astype(np.float32) / 255.0, "rgb"),
    ]:
        np.testing.assert_allclose(embed(variant, order), reference, rtol=1e-6, atol=1e-5)

    # Transparent background: composited over black, the face itself unchanged.
    alpha = np.zeros(img.shape[:2], np.uint8)
    x0, y0, x1, y1 = (int(v) for v in drawn.bbox)
    alpha[y0 - 4 : y1 + 4, x0 - 4 : x1 + 4] = 255
    np.testing.assert_allclose(embed(Image.fromarray(np.dstack([img, alpha]), "RGBA")), reference, atol=1e-5)

    gray = Image.fromarray(img).convert("L")
    gray_reference = embed(np.asarray(gray.convert("RGB")))
    np.testing.assert_allclose(embed(gray), gray_reference, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(embed(np.asarray(gray)), gray_reference, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(embed(np.asarray(gray)[..., None]), gray_reference, rtol=1e-6, atol=1e-5)


def test_tight_crop_found_after_padding_and_smaller_detector_sizes(
    analyzer: FaceAnalyzer, call_log: list[tuple[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    img = fp.background(600, 600)
    drawn = fp.draw_face(img, (300, 300), 560, ident=7)
    with caplog.at_level(logging.INFO, logger="instantid_ext.faces.analysis"):
        face = analyzer.analyze_one(img, label="reference image 3")
    sizes = [size for kind, size in call_log if kind == "detect"]
    assert sizes[0] == (640, 640)
    assert sizes[1] == (640, 640)  # padded, same size first
    used = sizes[-1][0]
    assert sizes[1:] == [(s, s) for s in range(640, used - 1, -64)]
    assert used < 640
    records = [r for r in caplog.records if "after padding" in r.getMessage()]
    assert len(records) == 1
    assert f"{used}x{used}" in records[0].getMessage()
    assert "reference image 3" in records[0].getMessage()
    # Mapped back to the original image; the padded image is scaled down, so a looser tolerance.
    np.testing.assert_allclose(face.bbox, drawn.bbox, atol=3.0)
    np.testing.assert_allclose(face.kps, drawn.kps, atol=3.0)
    # Black padding = insightface's zero border when aligning: same embedding as on the original.
    np.testing.assert_allclose(face.embedding, fp.expected_embedding(img, face.kps), rtol=1e-4, atol=1e-3)

    # The shared analyzer is untouched: the next image is detected at 640 again.
    call_log.clear()
    analyzer.analyze(one_face()[0])
    assert [size for kind, size in call_log if kind == "detect"] == [(640, 640)]


def test_no_face_tries_every_size_once_then_caches(
    analyzer: FaceAnalyzer, call_log: list[tuple[str, Any]]
) -> None:
    blank = fp.background(300, 400)
    assert analyzer.analyze(blank) == []
    sizes = [size for kind, size in call_log if kind == "detect"]
    assert sizes == [(640, 640)] + [(s, s) for s in range(640, 191, -64)]
    call_log.clear()
    assert analyzer.analyze(blank) == []
    assert call_log == []


def test_same_image_is_not_analysed_twice(analyzer: FaceAnalyzer, call_log: list[tuple[str, Any]]) -> None:
    img, _ = fp.three_faces()
    first = analyzer.analyze(img)
    assert [kind for kind, _ in call_log] == ["detect", "embed", "embed", "embed"]
    call_log.clear()
    second = analyzer.analyze(Image.fromarray(img))  # same pixels, another container
    assert call_log == []
    assert [f.embedding is g.embedding for f, g in zip(first, second, strict=True)] == [True] * 3
    second.pop()  # the caller's list is its own
    assert len(analyzer.analyze(img)) == 3
    changed = img.copy()
    changed[0, 0] = 0
    analyzer.analyze(changed)
    assert [kind for kind, _ in call_log] == ["detect", "embed", "embed", "embed"]


def test_result_cache_is_bounded(analyzer: FaceAnalyzer) -> None:
    img, _ = one_face()
    for i in range(face_mod.RESULT_CACHE_SIZE + 2):
        variant = img.copy()
        variant[0, 0] = i
        analyzer.analyze(variant)
    assert len(face_mod._RESULTS) == face_mod.RESULT_CACHE_SIZE


# --------------------------------------------------------------------------------------
# Loading, providers, dependencies, files
# --------------------------------------------------------------------------------------


def test_models_load_lazily_once_per_root_and_providers(
    pack_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    face_mod.clear_cache()
    loads: list[Path] = []
    real_load = face_mod._load

    def counting_load(pack: Path, providers: tuple[str, ...], *spec: Any) -> Any:
        loads.append(pack)
        return real_load(pack, providers, *spec)

    monkeypatch.setattr(face_mod, "_load", counting_load)
    first = FaceAnalyzer(pack_root)
    second = FaceAnalyzer(str(pack_root), providers=["cpu"])
    assert loads == []  # construction is cheap
    first.analyze(one_face()[0])
    second.analyze(fp.three_faces()[0])
    assert loads == [(pack_root / "models" / "antelopev2").resolve()]


def test_unavailable_gpu_falls_back_to_cpu_with_one_warning(
    pack_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    face_mod.clear_cache()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    with caplog.at_level(logging.WARNING, logger="instantid_ext.faces.analysis"):
        analyzer = FaceAnalyzer(pack_root, providers="cuda")
        assert analyzer.providers == (CPU,)
        face = analyzer.analyze_one(one_face()[0])
        assert FaceAnalyzer(pack_root, providers="CUDA").providers == (CPU,)
    assert face.embedding.shape == (512,)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "CUDAExecutionProvider" in warnings[0].getMessage()
    loaded = analyzer._loaded()
    assert loaded.detector.session.get_providers() == [CPU]
    assert loaded.recognizer.session.get_providers() == [CPU]


def test_provider_names(monkeypatch: pytest.MonkeyPatch) -> None:
    face_mod.clear_cache()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", CPU])
    assert face_mod.resolve_providers("cuda") == ("CUDAExecutionProvider", CPU)
    assert face_mod.resolve_providers(["CUDAExecutionProvider", "cpu"]) == ("CUDAExecutionProvider", CPU)
    assert face_mod.resolve_providers(None) == (CPU,)
    assert face_mod.resolve_providers("cpu") == (CPU,)
    with pytest.raises(InvalidInputError, match="tpu"):
        FaceAnalyzer("anywhere", providers="tpu")


def test_missing_insightface_raises_dependency_error(
    pack_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    face_mod.clear_cache()
    for name in ("insightface", "insightface.app", "insightface.app.common"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(DependencyError) as info:
        FaceAnalyzer(pack_root).analyze(one_face()[0])
    msg = str(info.value)
    assert "'insightface'" in msg
    assert "install.py" in msg
    assert "pip install insightface onnxruntime" in msg


def test_missing_insightface_dependency_is_named(pack_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    face_mod.clear_cache()
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("insightface"):
            raise ModuleNotFoundError("No module named 'skimage'", name="skimage")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DependencyError, match="dependency 'skimage' is missing"):
        FaceAnalyzer(pack_root).load()


def test_missing_onnxruntime_raises_dependency_error(
    pack_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    face_mod.clear_cache()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(DependencyError, match="'onnxruntime'"):
        FaceAnalyzer(pack_root).analyze(one_face()[0])


def test_import_does_not_load_insightface() -> None:
    code = (
        "import sys\n"
        "sys.modules['insightface'] = None\n"
        "sys.modules['onnxruntime'] = None\n"
        "import instantid_ext.faces.analysis, instantid_ext.faces.antelopev2\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_fresh_process_stays_offline(tmp_path: Path) -> None:
    """First import of insightface (0.7.x pulls in albumentations' update check) and a full analysis."""
    code = f"""
import socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("offline")
socket.socket.connect = refuse
socket.create_connection = refuse
from tests.fakes import antelopev2_pack as fp
from instantid_ext.faces.analysis import FaceAnalyzer
root = fp.write_pack({str(tmp_path)!r})
img = fp.background(200, 200)
fp.draw_face(img, (100, 100), 80)
assert len(FaceAnalyzer(root).analyze(img)) == 1
print("attempts", attempts)
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("attempts []"), out.stdout + out.stderr


def test_missing_pack_is_reported_before_insightface_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    face_mod.clear_cache()

    def no_insightface() -> Any:
        raise AssertionError("insightface must not be reached without a valid pack")

    monkeypatch.setattr(face_mod, "_import_insightface", no_insightface)
    analyzer = FaceAnalyzer(tmp_path / "empty")  # no error yet: lazy
    with pytest.raises(ModelFileError, match="not found"):
        analyzer.analyze(one_face()[0])
    fp.make_nested(tmp_path / "nested")
    with pytest.raises(ModelFileError, match="one folder too deep"):
        FaceAnalyzer(tmp_path / "nested").analyze_one(one_face()[0])


def test_damaged_model_file_becomes_model_file_error(tmp_path: Path) -> None:
    face_mod.clear_cache()
    fp.write_pack(tmp_path)
    detector = tmp_path / "models" / "antelopev2" / fp.DETECTOR
    detector.write_bytes(b"\x08\x07garbage" * 500)
    with pytest.raises(ModelFileError) as info:
        FaceAnalyzer(tmp_path).load()
    assert str(detector.parent) in str(info.value)
    assert "download the pack again" in str(info.value)


def test_a_pack_folder_in_the_working_directory_is_ignored(
    pack_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """insightface 2.x prefers ./antelopev2 over root/models/antelopev2 when given the bare name."""
    face_mod.clear_cache()
    (tmp_path / "antelopev2").mkdir()
    (tmp_path / "antelopev2" / "scrfd_10g_bnkps.onnx").write_bytes(b"junk")
    monkeypatch.chdir(tmp_path)
    img, drawn = one_face()
    np.testing.assert_allclose(FaceAnalyzer(pack_root).analyze_one(img).bbox, drawn.bbox, atol=BBOX_TOL)


def test_providers_accept_the_flags_comma_list() -> None:
    assert face_mod._normalize_providers("cuda, cpu") == ("CUDAExecutionProvider", "CPUExecutionProvider")
