"""Finding the antelopev2 pack and explaining every common layout mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instantid_ext.errors import ModelFileError
from instantid_ext.faces import antelopev2 as av2
from tests.fakes import antelopev2_pack as fp


def _error(root: Path) -> str:
    with pytest.raises(ModelFileError) as info:
        av2.validate_root(root)
    return str(info.value)


def test_valid_pack_returns_its_folder(tmp_path: Path) -> None:
    fp.write_pack(tmp_path)
    assert av2.validate_root(tmp_path) == (tmp_path / "models" / "antelopev2").resolve()


def test_optional_files_are_not_required(tmp_path: Path) -> None:
    fp.write_pack(tmp_path, files=(fp.DETECTOR, fp.RECOGNIZER))
    av2.validate_root(tmp_path)
    status = av2.pack_status([tmp_path])[0]
    assert status["usable"] is True
    assert status["missing_optional"] == list(av2.OPTIONAL_FILES)


def test_nested_folder_says_move_up_one_level(tmp_path: Path) -> None:
    fp.make_nested(tmp_path)
    target = tmp_path / "models" / "antelopev2"
    msg = _error(tmp_path)
    assert f"'{target / 'antelopev2'}'" in msg
    assert f"into '{target}'" in msg
    assert "up one level" in msg


def test_zip_not_unpacked(tmp_path: Path) -> None:
    fp.make_zip_only(tmp_path)
    msg = _error(tmp_path)
    assert str(tmp_path / "models" / "antelopev2.zip") in msg
    assert "not unpacked" in msg
    assert f"'{tmp_path / 'models' / 'antelopev2'}'" in msg


def test_zip_next_to_an_empty_folder_is_still_reported_as_zip(tmp_path: Path) -> None:
    fp.make_zip_only(tmp_path)
    fp.make_empty(tmp_path)
    assert "not unpacked" in _error(tmp_path)


@pytest.mark.parametrize(
    ("missing", "named", "not_named"),
    [
        ((fp.DETECTOR,), [fp.DETECTOR], [fp.RECOGNIZER]),
        ((fp.RECOGNIZER,), [fp.RECOGNIZER], [fp.DETECTOR]),
        ((fp.DETECTOR, fp.RECOGNIZER), [fp.DETECTOR, fp.RECOGNIZER], []),
    ],
)
def test_missing_required_files_are_named(
    tmp_path: Path, missing: tuple[str, ...], named: list[str], not_named: list[str]
) -> None:
    fp.make_missing(tmp_path, missing)
    msg = _error(tmp_path)
    assert "incomplete" in msg
    assert str(tmp_path / "models" / "antelopev2") in msg
    for name in named:
        assert name in msg
    for name in not_named:
        assert name not in msg


def test_empty_folder(tmp_path: Path) -> None:
    fp.make_empty(tmp_path)
    msg = _error(tmp_path)
    assert f"'{tmp_path / 'models' / 'antelopev2'}' is empty" in msg
    for name in av2.ALL_FILES:
        assert name in msg


def test_absent_folder_lists_every_place_searched(tmp_path: Path) -> None:
    roots = [
        tmp_path / "webui" / "models" / "insightface",
        tmp_path / "annotator" / "insightface",
        tmp_path / "mine",
    ]
    with pytest.raises(ModelFileError) as info:
        av2.find_root(roots)
    msg = str(info.value)
    assert "not found" in msg
    for root in roots:
        assert f"'{root / 'models' / 'antelopev2'}'" in msg
    assert f"Create the folder '{roots[0] / 'models' / 'antelopev2'}'" in msg
    assert "5 files" in msg
    assert fp.DETECTOR in msg
    assert fp.RECOGNIZER in msg


def test_absent_single_root(tmp_path: Path) -> None:
    msg = _error(tmp_path / "nothing")
    assert f"'{tmp_path / 'nothing' / 'models' / 'antelopev2'}'" in msg


def test_files_directly_in_root_are_pointed_at(tmp_path: Path) -> None:
    for name in (fp.DETECTOR, fp.RECOGNIZER):
        (tmp_path / "antelopev2").mkdir(exist_ok=True)
        (tmp_path / "antelopev2" / name).write_bytes(b"x" * 4096)
    msg = _error(tmp_path)
    assert f"'{tmp_path / 'antelopev2'}'" in msg
    assert f"'{tmp_path / 'models' / 'antelopev2'}'" in msg


def test_empty_file_and_lfs_pointer(tmp_path: Path) -> None:
    fp.write_pack(tmp_path)
    detector = tmp_path / "models" / "antelopev2" / fp.DETECTOR
    detector.write_bytes(b"")
    assert f"'{detector}' is empty" in _error(tmp_path)
    detector.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 16923827\n")
    msg = _error(tmp_path)
    assert "Git LFS pointer" in msg
    assert str(detector) in msg


def test_find_root_returns_first_valid(tmp_path: Path) -> None:
    broken = fp.make_nested(tmp_path / "broken")
    first = fp.write_pack(tmp_path / "first")
    second = fp.write_pack(tmp_path / "second")
    assert av2.find_root([None, tmp_path / "absent", broken, first, second]) == first.resolve()
    assert av2.find_root([second, first]) == second.resolve()


def test_find_root_prefers_a_layout_mistake_over_absent(tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    nested = fp.make_nested(tmp_path / "nested")
    with pytest.raises(ModelFileError) as info:
        av2.find_root([absent, nested])
    msg = str(info.value)
    assert "one folder too deep" in msg
    assert str(absent / "models" / "antelopev2") in msg  # still lists where it looked


def test_candidate_roots_order_and_dedupe(tmp_path: Path) -> None:
    webui_models = tmp_path / "models"
    annot = tmp_path / "annotator"
    roots = av2.candidate_roots(
        user_root=webui_models / "insightface", webui_models_dir=webui_models, controlnet_annotator_dir=annot
    )
    assert roots == [webui_models / "insightface", annot / "insightface"]
    assert av2.candidate_roots(None, webui_models, None) == [webui_models / "insightface"]
    assert av2.candidate_roots() == []


def test_pack_status_per_root(tmp_path: Path) -> None:
    good = fp.write_pack(tmp_path / "good", files=(fp.DETECTOR, fp.RECOGNIZER, "genderage.onnx"))
    partial = fp.make_missing(tmp_path / "partial", [fp.RECOGNIZER])
    absent = tmp_path / "absent"
    status = av2.pack_status([good, partial, absent, None, good])
    assert [s["root"] for s in status] == [str(good), str(partial), str(absent)]
    json.dumps(status)  # ready for an API route

    assert status[0]["usable"] is True
    assert status[0]["problem"] is None
    assert status[0]["found"] == [fp.DETECTOR, fp.RECOGNIZER, "genderage.onnx"]
    assert status[0]["missing_required"] == []
    assert status[0]["missing_optional"] == ["1k3d68.onnx", "2d106det.onnx"]

    assert status[1]["usable"] is False
    assert status[1]["missing_required"] == [fp.RECOGNIZER]
    assert fp.RECOGNIZER in str(status[1]["problem"])

    assert status[2] == {
        "root": str(absent),
        "pack_dir": str(absent / "models" / "antelopev2"),
        "exists": False,
        "usable": False,
        "found": [],
        "missing_required": list(av2.REQUIRED_FILES),
        "missing_optional": list(av2.OPTIONAL_FILES),
        "problem": status[2]["problem"],
    }
    assert "not found" in str(status[2]["problem"])
