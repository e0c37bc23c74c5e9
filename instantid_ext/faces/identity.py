"""Saved identities: a face analysed once, reusable without the photos or insightface.

An identity file is a small ``.safetensors`` holding the mean raw face embedding (what the
Resampler needs), the keypoints and size of the reference image (to draw the IdentityNet
hint when no pose image is given), and metadata: how many photos were averaged and when it
was made. Loading needs no pickle and no face detector.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidInputError, ModelFileError
from ..images import ImageLike, image_size
from .analysis import EMBEDDING_DIM, Face, mean_embedding

if TYPE_CHECKING:
    from .analysis import ChoiceMode, FaceAnalyzer

logger = logging.getLogger(__name__)

FORMAT = "instantid-identity"
VERSION = "1"
SUFFIX = ".safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}$")
#: Writes to the identity folder go one at a time: the panel, the API and a delete may meet.
STORE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Identity:
    """A reusable face: raw mean embedding plus the reference keypoints for the pose hint."""

    embedding: np.ndarray  # float32 (512,)
    kps: np.ndarray | None = None  # float32 (5, 2) in the reference image's pixels
    image_size: tuple[int, int] | None = None  # (width, height) of that reference image
    bbox: np.ndarray | None = None  # float32 (4,) face box in that image, for the face-region mask
    source_count: int = 1
    created: str = ""
    name: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_faces(
        cls,
        faces: Sequence[Face],
        image_sizes: Sequence[tuple[int, int]],
        weights: Sequence[float] | None = None,
        name: str = "",
    ) -> Identity:
        """Average several photos' faces; the first photo provides the keypoints and size."""
        if len(faces) != len(image_sizes):
            msg = "Each face needs the size of the image it was found in."
            raise InvalidInputError(msg)
        return cls(
            embedding=mean_embedding(list(faces), weights),
            kps=np.asarray(faces[0].kps, dtype=np.float32).copy(),
            bbox=np.asarray(faces[0].bbox, dtype=np.float32).copy(),
            image_size=(int(image_sizes[0][0]), int(image_sizes[0][1])),
            source_count=len(faces),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            name=name,
        )


def save_identity(identity: Identity, path: Path | str) -> Path:
    """Write ``identity`` as safetensors (atomically: a crash never leaves half a file)."""
    from safetensors.numpy import save_file

    path = Path(path)
    embedding = np.asarray(identity.embedding, dtype=np.float32).reshape(-1)
    if embedding.shape != (EMBEDDING_DIM,) or not np.all(np.isfinite(embedding)):
        msg = f"An identity needs a finite {EMBEDDING_DIM}-d embedding, got shape {embedding.shape}."
        raise InvalidInputError(msg)
    tensors = {"embedding": embedding}
    if identity.kps is not None:
        tensors["kps"] = np.asarray(identity.kps, dtype=np.float32).reshape(5, 2)
    if identity.bbox is not None:
        tensors["bbox"] = np.asarray(identity.bbox, dtype=np.float32).reshape(4)
    if identity.image_size is not None:
        tensors["image_size"] = np.asarray(identity.image_size, dtype=np.int64).reshape(2)
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "source_count": str(int(identity.source_count)),
        "created": identity.created,
        "name": identity.name,
        "extra": json.dumps(identity.extra, sort_keys=True),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary file of this writer's own: the UI and the API may save one name at once.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_identity(path: Path | str) -> Identity:
    """Read an identity file written by :func:`save_identity`, validating every field."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        msg = f"The identity file '{path}' does not exist."
        raise ModelFileError(msg)
    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # safetensors raises its own error types
        msg = f"'{path}' is not a readable identity file ({err}). Save the identity again."
        raise ModelFileError(msg) from err
    if metadata.get("format") != FORMAT or "embedding" not in tensors:
        msg = f"'{path}' is not an InstantID identity file."
        raise ModelFileError(msg)
    embedding = np.asarray(tensors["embedding"], dtype=np.float32).reshape(-1)
    if embedding.shape != (EMBEDDING_DIM,):
        msg = f"'{path}' holds a {embedding.shape[0]}-d embedding where InstantID uses {EMBEDDING_DIM}."
        raise ModelFileError(msg)
    kps = tensors.get("kps")
    size = tensors.get("image_size")
    bbox = tensors.get("bbox")
    try:
        extra = json.loads(metadata.get("extra", "{}"))
        count = int(metadata.get("source_count", "1"))
    except ValueError as err:
        msg = f"'{path}' has damaged metadata; save the identity again."
        raise ModelFileError(msg) from err
    return Identity(
        embedding=embedding,
        kps=None if kps is None else np.asarray(kps, dtype=np.float32).reshape(5, 2),
        image_size=None if size is None else (int(size[0]), int(size[1])),
        bbox=None if bbox is None else np.asarray(bbox, dtype=np.float32).reshape(4),
        source_count=count,
        created=metadata.get("created", ""),
        name=metadata.get("name", "") or path.stem,
        extra={str(k): str(v) for k, v in extra.items()},
    )


def check_identity_name(name: str) -> str:
    """Identity names become file names: letters, digits, space, ``-``, ``_``, ``.``; ≤ 64 chars."""
    name = (name or "").strip()
    if name.lower().endswith(SUFFIX):
        name = name[: -len(SUFFIX)]
    if not _NAME.match(name) or ".." in name:
        msg = (
            f"'{name}' is not a valid identity name: use 1–64 letters, digits, spaces, '-', '_' or '.', "
            "starting with a letter or digit."
        )
        raise InvalidInputError(msg)
    return name


class IdentityStore:
    """A folder of identity files, addressed by name (the file name without ``.safetensors``)."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)

    def path_for(self, name: str) -> Path:
        return self.folder / f"{check_identity_name(name)}{SUFFIX}"

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted((p.stem for p in self.folder.glob(f"*{SUFFIX}") if p.is_file()), key=str.lower)

    def save(self, name: str, identity: Identity, overwrite: bool = False) -> Path:
        path = self.path_for(name)
        if path.exists() and not overwrite:
            msg = f"An identity named '{path.stem}' already exists; choose another name or allow overwriting."
            raise InvalidInputError(msg)
        named = Identity(**{**identity.__dict__, "name": path.stem})
        return save_identity(named, path)

    def load(self, name: str) -> Identity:
        path = self.path_for(name)
        if not path.is_file():
            known = ", ".join(self.names()) or "none saved yet"
            msg = f"No saved identity named '{path.stem}' in '{self.folder}' (available: {known})."
            raise ModelFileError(msg)
        return load_identity(path)

    def delete(self, name: str) -> bool:
        """Remove an identity; False if it did not exist."""
        path = self.path_for(name)
        if not path.is_file():
            return False
        path.unlink()
        return True


def save_from_photos(
    store: IdentityStore,
    analyzer: Callable[[], FaceAnalyzer],
    name: str,
    photos: Iterable[tuple[str, ImageLike]],
    *,
    face_choice: ChoiceMode = "largest",
    face_index: int = 0,
    weights: Sequence[float] | None = None,
    overwrite: bool = False,
    overwrite_hint: str = "allow overwriting",
) -> tuple[Path, Identity]:
    """Analyse one person's photos and store their face as identity ``name``: the one way the
    panel, the API and the command line save an identity.

    ``photos`` are ``(label, image)`` pairs, the label naming the photo in error messages; they
    are read, and ``analyzer`` is called for the face analyzer, only after the name is checked:
    a taken or invalid name is reported before the slow part (and before a missing face model,
    when a generator decodes the photos lazily). ``overwrite_hint`` says how the caller's user
    allows replacing an identity ("add --overwrite").
    """
    name = check_identity_name(name)
    if not overwrite and store.path_for(name).exists():
        msg = f"An identity named '{name}' already exists; choose another name or {overwrite_hint}."
        raise InvalidInputError(msg)
    faces, sizes = [], []
    found: FaceAnalyzer | None = None
    for label, image in photos:
        found = found or analyzer()
        faces.append(found.analyze_one(image, face_choice, face_index, label=label))
        sizes.append(image_size(image))
    if not faces:
        msg = "Add one or more reference photos to save as an identity."
        raise InvalidInputError(msg)
    identity = Identity.from_faces(faces, sizes, weights=weights, name=name)
    with STORE_LOCK:
        path = store.save(name, identity, overwrite=overwrite)
    logger.info("Saved identity '%s' from %d photo(s)", path.stem, len(faces))
    return path, identity
