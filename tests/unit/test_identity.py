"""Identity files: save once, reuse without photos or insightface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from instantid_ext.errors import InvalidInputError, ModelFileError
from instantid_ext.faces.analysis import Face
from instantid_ext.faces.identity import (
    Identity,
    IdentityStore,
    check_identity_name,
    load_identity,
    save_from_photos,
    save_identity,
)


def face(seed: int) -> Face:
    rng = np.random.default_rng(seed)
    return Face(
        bbox=np.array([10, 20, 110, 140], np.float32),
        kps=rng.uniform(20, 100, (5, 2)).astype(np.float32),
        score=0.9,
        embedding=rng.normal(0, 1.5, 512).astype(np.float32),
    )


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    faces = [face(1), face(2)]
    identity = Identity.from_faces(faces, [(640, 480), (300, 300)], weights=[3, 1], name="alice")
    path = save_identity(identity, tmp_path / "alice.safetensors")
    loaded = load_identity(path)
    want = (3 * faces[0].embedding.astype(np.float64) + faces[1].embedding) / 4
    np.testing.assert_allclose(loaded.embedding, want, rtol=1e-6)
    np.testing.assert_array_equal(loaded.kps, faces[0].kps)
    np.testing.assert_array_equal(loaded.bbox, faces[0].bbox)
    assert loaded.image_size == (640, 480)
    assert loaded.source_count == 2
    assert loaded.name == "alice"
    assert loaded.created.endswith("+00:00")


def test_store_lists_saves_loads_and_deletes(tmp_path: Path) -> None:
    store = IdentityStore(tmp_path / "identities")
    assert store.names() == []
    identity = Identity.from_faces([face(3)], [(512, 512)])
    store.save("Bob 2", identity)
    store.save("alice", identity)
    assert store.names() == ["alice", "Bob 2"]
    assert store.load("Bob 2.safetensors").name == "Bob 2"
    with pytest.raises(InvalidInputError, match="already exists"):
        store.save("alice", identity)
    store.save("alice", identity, overwrite=True)
    assert store.delete("alice") is True
    assert store.delete("alice") is False
    with pytest.raises(ModelFileError, match="available: Bob 2"):
        store.load("alice")


@pytest.mark.parametrize("name", ["", "../etc/passwd", "a/b", "x" * 65, ".hidden", "a..b", "new\nline"])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInputError, match="not a valid identity name"):
        check_identity_name(name)


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "model.safetensors"
    save_file({"embedding": np.zeros(512, np.float32)}, str(other))
    with pytest.raises(ModelFileError, match="not an InstantID identity"):
        load_identity(other)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="not a readable identity"):
        load_identity(bad)
    with pytest.raises(InvalidInputError, match="512-d"):
        save_identity(Identity(embedding=np.zeros(3, np.float32)), tmp_path / "x.safetensors")


def test_two_saves_of_one_name_at_once_both_succeed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The UI and the API may save the same identity at the same moment: each writes its own
    temporary file, and the last one to finish is the identity."""
    import threading

    import safetensors.numpy

    both_written = threading.Barrier(2, timeout=10)
    real_save = safetensors.numpy.save_file

    def save_then_wait(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        both_written.wait()  # neither moves its file into place before the other has written

    monkeypatch.setattr(safetensors.numpy, "save_file", save_then_wait)
    errors: list[BaseException] = []

    def save(seed: int) -> None:
        try:
            identity = Identity.from_faces([face(seed)], [(256, 256)], name="ada")
            save_identity(identity, tmp_path / "ada.safetensors")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=save, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert load_identity(tmp_path / "ada.safetensors").name == "ada"
    assert [p.name for p in tmp_path.iterdir()] == ["ada.safetensors"]


class FakeAnalyzer:
    """Hands out one face per photo (the photo is its seed) and records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, str, int, str]] = []

    def analyze_one(self, image: object, mode: str = "largest", index: int = 0, *, label: str = "") -> Face:
        self.calls.append((image, mode, index, label))
        return face(int(np.asarray(image).flat[0]))


def photo(seed: int) -> np.ndarray:
    return np.full((48, 64, 3), seed, np.uint8)


def test_save_from_photos_averages_the_chosen_faces(tmp_path: Path) -> None:
    store, analyzer = IdentityStore(tmp_path), FakeAnalyzer()
    photos = [("photo 1", photo(1)), ("photo 2", photo(2))]
    path, identity = save_from_photos(
        store, lambda: analyzer, " Ada ", photos, face_choice="index", face_index=1, weights=[3, 1]
    )
    assert path == tmp_path / "Ada.safetensors"
    assert [(mode, index, label) for _, mode, index, label in analyzer.calls] == [
        ("index", 1, "photo 1"),
        ("index", 1, "photo 2"),
    ]
    expected = Identity.from_faces([face(1), face(2)], [(64, 48)] * 2, weights=[3, 1])
    np.testing.assert_allclose(identity.embedding, expected.embedding)
    loaded = load_identity(path)
    assert (loaded.name, loaded.source_count, loaded.image_size) == ("Ada", 2, (64, 48))


def test_save_from_photos_refuses_a_taken_name_before_reading_a_photo(tmp_path: Path) -> None:
    store = IdentityStore(tmp_path)
    save_from_photos(store, FakeAnalyzer, "ada", [("photo 1", photo(1))])

    def never() -> Any:
        raise AssertionError("a photo was read or the face models loaded")

    unread = (never() for _ in range(1))
    with pytest.raises(InvalidInputError, match="'ada' already exists; choose another name or add --x"):
        save_from_photos(store, never, "ada", unread, overwrite_hint="add --x")
    path, _ = save_from_photos(store, FakeAnalyzer, "ada", [("photo 2", photo(2))], overwrite=True)
    replaced = Identity.from_faces([face(2)], [(64, 48)])
    np.testing.assert_allclose(load_identity(path).embedding, replaced.embedding)


def test_save_from_photos_needs_a_photo_and_a_valid_name(tmp_path: Path) -> None:
    store = IdentityStore(tmp_path)
    with pytest.raises(InvalidInputError, match="one or more reference photos"):
        save_from_photos(store, FakeAnalyzer, "ada", [])
    with pytest.raises(InvalidInputError, match="not a valid identity name"):
        save_from_photos(store, FakeAnalyzer, "../ada", [("photo 1", photo(1))])
    assert list(tmp_path.iterdir()) == []


def test_the_panel_the_api_and_the_command_line_save_the_same_way() -> None:
    import ast
    import importlib.util

    for module, function in (
        ("instantid_ext.webui.api", "create_identity"),
        ("instantid_ext.webui.services", "save_identity"),
        ("instantid_ext.cli", "identity_save"),
    ):
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        body = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
        called = {
            n.func.id for n in ast.walk(body) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        assert "save_from_photos" in called, function
        assert "from_faces" not in ast.unparse(body), function
