"""The known insightface packs: checking and finding the optional buffalo_l next to antelopev2."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from instantid_ext.errors import ModelFileError
from instantid_ext.faces import packs as face_packs
from instantid_ext.faces.analysis import FaceAnalyzer
from instantid_ext.faces.packs import ANTELOPEV2, BUFFALO_L, find_optional_pack, validate_pack
from tests.fakes import antelopev2_pack as fp
from tests.fakes import buffalo_pack as bp


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    face_packs._WARNED.clear()


def _error(root: Path) -> str:
    with pytest.raises(ModelFileError) as info:
        validate_pack(root, BUFFALO_L)
    return str(info.value)


def test_labels_and_folders(tmp_path: Path) -> None:
    assert ANTELOPEV2.label == "antelopev2 (glintr100)"
    assert BUFFALO_L.label == "buffalo_l (w600k_r50)"
    assert BUFFALO_L.files == ("det_10g.onnx", "w600k_r50.onnx")
    assert BUFFALO_L.folder(tmp_path) == tmp_path / "models" / "buffalo_l"
    assert (
        repr(FaceAnalyzer(tmp_path)) == f"FaceAnalyzer(root='{tmp_path}', providers=['CPUExecutionProvider'])"
    )
    assert repr(FaceAnalyzer(tmp_path, pack=BUFFALO_L)).endswith(", pack='buffalo_l')")


def test_valid_buffalo_pack(tmp_path: Path) -> None:
    bp.write_pack(tmp_path)
    assert validate_pack(tmp_path, BUFFALO_L) == (tmp_path / "models" / "buffalo_l").resolve()


def test_antelopev2_keeps_its_detailed_diagnosis(tmp_path: Path) -> None:
    fp.make_nested(tmp_path)
    with pytest.raises(ModelFileError, match="up one level"):
        validate_pack(tmp_path, ANTELOPEV2)
    fp.write_pack(tmp_path)
    assert validate_pack(tmp_path, ANTELOPEV2) == fp.pack_dir(tmp_path).resolve()


def test_buffalo_layout_problems_name_the_fix(tmp_path: Path) -> None:
    target = tmp_path / "models" / "buffalo_l"
    msg = _error(tmp_path)
    assert f"'{target}' does not exist" in msg
    assert "buffalo_l.zip" in msg

    bp.write_pack(tmp_path, files=(bp.DETECTOR,))
    msg = _error(tmp_path)
    assert "incomplete" in msg
    assert "w600k_r50.onnx is missing" in msg
    assert "det_10g.onnx" not in msg

    nested = tmp_path / "nested"
    inner = nested / "models" / "buffalo_l" / "buffalo_l"
    inner.mkdir(parents=True)
    (inner / bp.DETECTOR).write_bytes(fp.detector_bytes())
    (inner / bp.RECOGNIZER).write_bytes(bp.recognizer_bytes())
    msg = _error(nested)
    assert "one folder too deep" in msg
    assert f"into '{nested / 'models' / 'buffalo_l'}'" in msg


def test_buffalo_broken_downloads(tmp_path: Path) -> None:
    bp.write_pack(tmp_path)
    recognizer = bp.pack_dir(tmp_path) / bp.RECOGNIZER
    recognizer.write_bytes(b"")
    msg = _error(tmp_path)
    assert "The buffalo_l model file" in msg
    assert "empty (0 bytes)" in msg
    recognizer.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n")
    msg = _error(tmp_path)
    assert "Git LFS pointer" in msg
    assert "buffalo_l.zip" in msg


def test_find_optional_pack(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    absent, broken, good = tmp_path / "absent", tmp_path / "broken", tmp_path / "good"
    absent.mkdir()
    bp.write_pack(broken, files=(bp.DETECTOR,))
    bp.write_pack(good)
    assert find_optional_pack([None, "", absent], BUFFALO_L) == (None, "")
    assert find_optional_pack([absent, good, broken], BUFFALO_L) == (good.resolve(), "")
    with caplog.at_level(logging.WARNING, logger="instantid_ext.faces.packs"):
        root, problem = find_optional_pack([absent, broken], BUFFALO_L)
        again = find_optional_pack([broken], BUFFALO_L)
    assert root is None
    assert "w600k_r50.onnx is missing" in problem
    assert again == (None, problem)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per problem, not per generation
    assert "optional buffalo_l" in warnings[0].getMessage()
