"""Finding InstantID's two weight files, the adapter and the IdentityNet, where users keep them.

Files are recognised by their content (tensor names and shapes), never by their names, so
users keep the names they downloaded (``ip-adapter.bin``, ``diffusion_pytorch_model.safetensors``)
or the ones other tools asked for (``ip-adapter_instant_id_sdxl.bin``,
``control_instant_id_sdxl.safetensors``). What is usable is decided by the one check in
:mod:`.checks`; a file meant for InstantID that fails it is kept in the inventory with
its reason, and "not found" messages give those reasons instead of asking for a file that
is already there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IncompatibleModelError, ModelFileError
from .checks import (
    DIFFUSERS_STEM,
    FIXES,
    INSTANTID_NAME,
    ModelKind,
    Verdict,
    adapter_issue,
    adapter_problem,
    classify,
    identitynet_issue,
    identitynet_problem,
    inspect_file,
    read_torch_file,
    tensor_shapes,
)
from .file_hashes import HashStore, JsonHashStore, file_sha256, set_hash_store, short_hash

__all__ = [
    "AUTO",
    "DIFFUSERS_WEIGHTS",
    "HashStore",
    "JsonHashStore",
    "ModelFile",
    "ModelInventory",
    "ModelKind",
    "RejectedFile",
    "adapter_issue",
    "adapter_problem",
    "check_identitynet",
    "classify",
    "file_sha256",
    "identitynet_issue",
    "identitynet_problem",
    "inspect_file",
    "read_torch_file",
    "resolve_model",
    "scan_models",
    "set_hash_store",
    "short_hash",
    "tensor_shapes",
]

logger = logging.getLogger(__name__)

AUTO = "Auto"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DIFFUSERS_WEIGHTS = (f"{DIFFUSERS_STEM}.safetensors", f"{DIFFUSERS_STEM}.fp16.safetensors")


@dataclass(frozen=True)
class ModelFile:
    """A usable weight file: what it is, where it is, and the name the UI shows."""

    kind: ModelKind
    path: Path
    """The file to load (for a diffusers folder: its ``diffusion_pytorch_model*.safetensors``)."""
    name: str
    details: Mapping[str, str] = field(default_factory=dict, compare=False)
    """Format, dtype, layout and size, for diagnostics."""


@dataclass(frozen=True)
class RejectedFile:
    """A weight file meant for InstantID (by place or name) that cannot be used, and why."""

    path: Path
    kind: ModelKind | None
    """What it was meant to be (by content, else by name); None when neither."""
    name: str
    reason: str
    """A complete sentence naming the file, what it is and what to do."""


@dataclass
class ModelInventory:
    """What a scan found and rejected, plus the folders it looked in (for messages and /status)."""

    adapters: list[ModelFile] = field(default_factory=list)
    identitynets: list[ModelFile] = field(default_factory=list)
    searched: list[Path] = field(default_factory=list)
    rejected: list[RejectedFile] = field(default_factory=list)

    def of_kind(self, kind: ModelKind) -> list[ModelFile]:
        return self.adapters if kind == "ip_adapter" else self.identitynets

    def names(self, kind: ModelKind) -> list[str]:
        return [model.name for model in self.of_kind(kind)]

    def rejected_for(self, kind: ModelKind) -> list[RejectedFile]:
        """Rejections that explain a missing ``kind``: those meant as one, then unidentified ones."""
        return [r for r in self.rejected if r.kind == kind] + [r for r in self.rejected if r.kind is None]


# -- scanning --------------------------------------------------------------------------------
def _diffusers_weights(folder: Path) -> Path | None:
    """The one weights file of a diffusers folder: the first of :data:`DIFFUSERS_WEIGHTS` there."""
    return next((folder / n for n in DIFFUSERS_WEIGHTS if (folder / n).is_file()), None)


def _candidates(root: Path, depth: int = 2) -> Iterable[Path]:
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return
    chosen = _diffusers_weights(root)
    for entry in entries:
        if entry.is_file() and entry.suffix.lower() in WEIGHT_SUFFIXES:
            if chosen is not None and entry.name.startswith(DIFFUSERS_STEM) and entry != chosen:
                continue  # the .bin or other variant next to the diffusers .safetensors
            yield entry
        elif entry.is_dir() and depth > 0 and not entry.name.startswith("."):
            yield from _candidates(entry, depth - 1)


def _display_name(path: Path, root: Path) -> str:
    """A diffusers folder shows as the folder's name; a file as its path below the root."""
    if path.name.startswith(DIFFUSERS_STEM):
        path = path.parent
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _meant_for_instantid(path: Path, root: Path, own: bool, verdict: Verdict) -> bool:
    """Report a rejected file only when it was clearly meant for InstantID: anything in our own
    folder, elsewhere (e.g. ControlNet's folder, full of other models) only with an InstantID name."""
    if own:
        return True
    if verdict.kind is None and verdict.readable:
        return False
    return bool(INSTANTID_NAME.search(_display_name(path, root)))


def scan_models(roots: Sequence[Path | str | None]) -> ModelInventory:
    """Every InstantID adapter and IdentityNet below ``roots`` (two folder levels deep).

    The first root is InstantID's own folder: every weight file there that cannot be used is
    recorded in :attr:`ModelInventory.rejected` with its reason; in the other roots only files
    whose name says they are meant for InstantID are.
    """
    inventory = ModelInventory()
    seen: set[Path] = set()
    for raw in roots:
        if raw is None:
            continue
        root = Path(raw)
        if root in inventory.searched:
            continue
        own = not inventory.searched
        inventory.searched.append(root)
        for path in _candidates(root):
            resolved = path.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            verdict = inspect_file(path)
            name = _display_name(path, root)
            if verdict.usable and verdict.kind is not None:
                inventory.of_kind(verdict.kind).append(ModelFile(verdict.kind, path, name, verdict.details))
            elif verdict.identity:
                continue
            elif _meant_for_instantid(path, root, own, verdict):
                inventory.rejected.append(RejectedFile(path, verdict.kind, name, verdict.reason(path)))
            else:
                logger.debug("Not an InstantID model: %s %s", path, verdict.problem)
    return inventory


_WHAT = {
    "ip_adapter": ("adapter", "ip-adapter.bin"),
    "identitynet": (
        "IdentityNet",
        "ControlNetModel/diffusion_pytorch_model.safetensors (with its config.json)",
    ),
}


def resolve_model(kind: ModelKind, name: str, inventory: ModelInventory) -> ModelFile:
    """The file a UI/API name refers to ("Auto" = the first found), or a clear error.

    When nothing usable was found, the error gives the reason each candidate file was
    rejected instead of asking for a file that is already there.
    """
    models = inventory.of_kind(kind)
    label, expected = _WHAT[kind]
    searched = ", ".join(f"'{p}'" for p in inventory.searched) or "nowhere"
    if name and name != AUTO:
        for model in models:
            if name in (model.name, model.path.name, str(model.path)):
                return model
        for rejected in inventory.rejected:
            if name in (rejected.name, rejected.path.name, str(rejected.path)):
                msg = f"The InstantID {label} '{name}' cannot be used: {rejected.reason}"
                raise IncompatibleModelError(msg)
        if models:
            available = ", ".join(m.name for m in models)
            msg = f"The InstantID {label} '{name}' was not found. Available: {available}."
            raise ModelFileError(msg)
    if models:
        return models[0]
    rejected = inventory.rejected_for(kind)
    if rejected:
        reasons = " ".join(r.reason for r in rejected)
        msg = f"No usable InstantID {label} found (searched {searched}). {reasons}"
        raise ModelFileError(msg)
    where = inventory.searched[0] if inventory.searched else Path("models/instantid")
    msg = (
        f"No InstantID {label} found (searched {searched}). Download {expected} from the "
        f"InstantID release and put it in '{where}', then press the refresh button."
    )
    raise ModelFileError(msg)


def check_identitynet(path: Path | str) -> Path:
    """Validate a user-given IdentityNet file or diffusers folder; return the weights file.

    Raises :class:`ModelFileError` (missing or unreadable files, with the path to create) or
    :class:`IncompatibleModelError` (a file of another kind), with the scan's reason.
    """
    path = Path(path)
    if path.is_dir():
        weights = _diffusers_weights(path)
        if weights is None:
            has_bin = (path / f"{DIFFUSERS_STEM}.bin").is_file()
            hint = " (only the .bin is there: download the .safetensors version)" if has_bin else ""
            msg = (
                f"The IdentityNet folder '{path}' has no {DIFFUSERS_WEIGHTS[0]}{hint}. "
                f"Put the file from the InstantID release at '{path / DIFFUSERS_WEIGHTS[0]}'."
            )
            raise ModelFileError(msg)
        path = weights
    if not path.is_file():
        msg = (
            f"The IdentityNet '{path}' does not exist. Download ControlNetModel/"
            "diffusion_pytorch_model.safetensors and config.json from the InstantID release."
        )
        raise ModelFileError(msg)
    verdict = inspect_file(path)
    if not verdict.readable:
        raise ModelFileError(verdict.reason(path))
    if verdict.kind == "identitynet" and verdict.problem is None:
        return path
    if verdict.kind == "identitynet":
        problem = verdict.problem
    elif verdict.kind == "ip_adapter":
        problem = "is an IP-Adapter, not a ControlNet like InstantID's IdentityNet"
    elif verdict.identity:
        problem = "is a saved InstantID identity, not a ControlNet like InstantID's IdentityNet"
    else:
        problem = verdict.problem
    msg = f"'{path}' {problem}; {FIXES['identitynet']}."
    raise IncompatibleModelError(msg)
