"""File hashes for infotexts: the first 10 hex digits of the SHA-256, as the WebUI shows its own.

Hashing InstantID's ~4 GB of weights takes seconds, so each digest is kept: in memory per file
version (path, size, mtime), and across restarts in a pluggable :class:`HashStore` (the
WebUI's own hash cache in the WebUI, a JSON file the command line is given explicitly).
Nothing is written anywhere unless a store is set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class HashStore(Protocol):
    """Where full SHA-256 digests outlive the process (the WebUI's cache, a JSON file)."""

    def lookup(self, path: Path) -> str | None:
        """The file's full hex SHA-256 if the store has a current one (it may also compute and
        keep it itself, as the WebUI's does); None otherwise."""

    def record(self, path: Path, sha256: str) -> None:
        """Keep a digest computed by the caller."""


class JsonHashStore:
    """Digests in a JSON file the caller names, keyed by absolute path and valid while the
    file's size and mtime are unchanged. Written atomically after each new digest."""

    def __init__(self, file: Path | str) -> None:
        self.file = Path(file)
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def lookup(self, path: Path) -> str | None:
        entry = self._read().get(str(Path(path).resolve()))
        stat = Path(path).stat()
        if (
            isinstance(entry, dict)
            and entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
        ):
            value = entry.get("sha256")
            return value if isinstance(value, str) and len(value) == 64 else None
        return None

    def record(self, path: Path, sha256: str) -> None:
        stat = Path(path).stat()
        with self._lock:
            data = self._read()
            data[str(Path(path).resolve())] = {
                "sha256": sha256,
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
            }
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_name(f".{self.file.name}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            tmp.replace(self.file)


_HASHES: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()
_STORE: HashStore | None = None


def set_hash_store(store: HashStore | None) -> None:
    """Use ``store`` to keep digests across restarts (None: in memory only)."""
    global _STORE
    _STORE = store


def compute_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The file's full SHA-256: from memory, else the hash store, else computed (and stored)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _HASH_LOCK:
        known = _HASHES.get(key)
    if known is not None:
        return known
    store = _STORE
    value = None
    if store is not None:
        try:
            value = store.lookup(path)
        except Exception:  # a broken cache must never stop a generation
            logger.warning("Could not read the hash cache for %s", path, exc_info=True)
    if value is None:
        logger.info("Computing the SHA-256 of %s (once; it is kept)", path)
        value = compute_sha256(path)
        if store is not None:
            try:
                store.record(path, value)
            except Exception:  # not kept: computed again after a restart, nothing worse
                logger.warning("Could not write the hash cache for %s", path, exc_info=True)
    with _HASH_LOCK:
        _HASHES[key] = value
    return value


def short_hash(path: Path) -> str:
    """First 10 hex digits of the file's SHA-256 (the WebUI's style), computed once per file
    version and kept in the hash store when one is set."""
    return file_sha256(path)[:10]
