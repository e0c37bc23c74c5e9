"""The expensive things a generation needs, found where the user keeps them and loaded once.

Locations come from the host (the WebUI's models folder, command-line flags, settings) via
a callable, so a changed setting takes effect without a restart. The adapter is kept
loaded between generations (one at a time, keyed by path and mtime, so a replaced file is
reloaded); face models are cached by :mod:`instantid_ext.faces.analysis` itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InstantIDError
from ..faces.analysis import FaceAnalyzer, resolve_providers
from ..faces.antelopev2 import find_root, pack_status
from ..faces.identity import IdentityStore
from ..faces.likeness import LikenessScorer
from ..method.ip_adapter import IPAdapter, load_ip_adapter
from ..models.discovery import AUTO, ModelFile, ModelInventory, check_identitynet, resolve_model, scan_models

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Locations:
    """Where to look; the first model folder is where users are told to put files."""

    model_dirs: tuple[Path, ...]
    insightface_roots: tuple[Path, ...]
    identity_dir: Path
    providers: str = "cpu"
    extra: dict[str, str] = field(default_factory=dict, compare=False)


class Resources:
    """Lazily scanned models, the cached adapter, the face analyzer and the identity store."""

    def __init__(self, locations: Callable[[], Locations]) -> None:
        self._locations = locations
        self._lock = threading.RLock()
        self._inventory: tuple[Locations, ModelInventory] | None = None
        self._adapter: tuple[tuple[str, int], IPAdapter] | None = None
        self._scorer: tuple[tuple, LikenessScorer] | None = None

    @property
    def locations(self) -> Locations:
        return self._locations()

    def inventory(self, refresh: bool = False) -> ModelInventory:
        """The adapters and IdentityNets found (rescanned on ``refresh`` or when folders change)."""
        locations = self.locations
        with self._lock:
            if refresh or self._inventory is None or self._inventory[0] != locations:
                self._inventory = (locations, scan_models(list(locations.model_dirs)))
            return self._inventory[1]

    def adapter_file(self, name: str = AUTO) -> ModelFile:
        return resolve_model("ip_adapter", name, self.inventory())

    def adapter(self, name: str = AUTO) -> tuple[ModelFile, IPAdapter]:
        """The loaded adapter for a UI/API name; loads it once and keeps it until another is asked for."""
        model = self.adapter_file(name)
        key = (str(model.path), model.path.stat().st_mtime_ns)
        with self._lock:
            if self._adapter is None or self._adapter[0] != key:
                self._adapter = None  # release the previous one before loading the next
                self._adapter = (key, load_ip_adapter(model.path))
            return model, self._adapter[1]

    def identitynet(self, name: str = AUTO) -> ModelFile:
        model = resolve_model("identitynet", name, self.inventory())
        check_identitynet(model.path)
        return model

    def analyzer(self) -> FaceAnalyzer:
        """The face analyzer for the first usable antelopev2 pack (models load on first use)."""
        locations = self.locations
        return FaceAnalyzer(find_root(locations.insightface_roots), providers=locations.providers)

    def likeness_scorer(self) -> LikenessScorer:
        """The scorer for output likeness: buffalo_l when installed, else antelopev2 (cached)."""
        locations = self.locations
        key = (locations.insightface_roots, locations.providers)
        with self._lock:
            if self._scorer is None or self._scorer[0] != key:
                self._scorer = (
                    key,
                    LikenessScorer.from_roots(locations.insightface_roots, locations.providers),
                )
            return self._scorer[1]

    def identities(self) -> IdentityStore:
        return IdentityStore(self.locations.identity_dir)

    def status(self) -> dict[str, object]:
        """What is found, what was rejected and why, and what is missing (JSON-ready)."""
        locations = self.locations
        inventory = self.inventory(refresh=True)
        try:
            providers: list[str] | str = list(resolve_providers(locations.providers))
        except InstantIDError as err:
            providers = str(err)
        return {
            "model_dirs": [str(p) for p in locations.model_dirs],
            "adapters": [_model_json(m) for m in inventory.adapters],
            "identitynets": [_model_json(m) for m in inventory.identitynets],
            "rejected": [
                {"name": r.name, "path": str(r.path), "kind": r.kind, "reason": r.reason}
                for r in inventory.rejected
            ],
            "antelopev2": pack_status(locations.insightface_roots),
            "providers_requested": locations.providers,
            "providers_used": providers,
            "identity_dir": str(locations.identity_dir),
            "identities": self.identities().names(),
        }


def _model_json(model: ModelFile) -> dict[str, object]:
    return {"name": model.name, "path": str(model.path), **dict(model.details)}
