"""Finding and checking InstantID's two weight files: the adapter and the IdentityNet.

Files are recognised by their content (tensor names and shapes), never by their names, so
users keep the names they downloaded (``ip-adapter.bin``, ``diffusion_pytorch_model.safetensors``)
or the ones other tools asked for (``ip-adapter_instant_id_sdxl.bin``,
``control_instant_id_sdxl.safetensors``). Reading a safetensors header costs a few kilobytes
and a ``.bin`` is memory-mapped, so a scan stays cheap; results are cached per file
(path, size, mtime).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import IncompatibleModelError, ModelFileError

logger = logging.getLogger(__name__)

ModelKind = Literal["ip_adapter", "identitynet"]
AUTO = "Auto"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")

# Tensor names and shapes that identify InstantID's IdentityNet (an SDXL ControlNet whose
# hint is an RGB image): in the diffusers layout it is published in, and the ldm layout
# some conversions use.
_IDENTITYNET_SIGNATURES = {
    "diffusers": {
        "hint": "controlnet_cond_embedding.conv_in.weight",
        "cross": "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        "vector": "add_embedding.linear_1.weight",
    },
    "ldm": {
        "hint": "input_hint_block.0.weight",
        "cross": "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
        "vector": "label_emb.0.0.weight",
    },
}
_SDXL_CONTEXT = 2048
_SDXL_VECTOR = 2816


@dataclass(frozen=True)
class ModelFile:
    """A usable weight file: what it is, where it is, and the name the UI shows."""

    kind: ModelKind
    path: Path
    """The file to load (for a diffusers folder: its ``diffusion_pytorch_model*.safetensors``)."""
    name: str


@dataclass
class ModelInventory:
    """What a scan found, plus the folders it looked in (for error messages and /status)."""

    adapters: list[ModelFile] = field(default_factory=list)
    identitynets: list[ModelFile] = field(default_factory=list)
    searched: list[Path] = field(default_factory=list)

    def of_kind(self, kind: ModelKind) -> list[ModelFile]:
        return self.adapters if kind == "ip_adapter" else self.identitynets

    def names(self, kind: ModelKind) -> list[str]:
        return [model.name for model in self.of_kind(kind)]


# -- reading tensor names and shapes --------------------------------------------------------
def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from a safetensors header without reading any tensor data."""
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            msg = f"{path} is empty or truncated; download it again."
            raise ModelFileError(msg)
        size = int.from_bytes(head, "little")
        if size <= 0 or size > 100_000_000:
            msg = f"{path} is not a valid .safetensors file; download it again."
            raise ModelFileError(msg)
        try:
            header = json.loads(fh.read(size))
        except (ValueError, UnicodeDecodeError) as err:
            msg = f"{path} has a damaged .safetensors header; download it again."
            raise ModelFileError(msg) from err
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def read_torch_file(path: Path) -> Any:
    """Load a ``.bin``/``.pt`` file with ``weights_only=True`` (no pickled code can run),
    memory-mapped when the file's format allows.

    ``torch.serialization.load`` is called directly: the WebUI replaces ``torch.load`` with
    a checker that rejects files saved by newer torch versions (extra entries in the zip),
    and ``weights_only`` already gives the safety that checker is there for.
    """
    import torch

    try:
        try:
            return torch.serialization.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, TypeError):  # legacy (non-zip) file, or torch < 2.1 without mmap
            return torch.serialization.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling fails in many ways; all mean "not a usable file"
        msg = (
            f"Could not read {path} as a weights-only PyTorch file ({type(err).__name__}: {err}). "
            "Download it again; it may be incomplete, or not a weights file."
        )
        raise ModelFileError(msg) from err


def _torch_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Flattened ``group.key`` shapes of a weights-only torch file."""
    raw = read_torch_file(path)
    shapes: dict[str, tuple[int, ...]] = {}
    if isinstance(raw, Mapping):
        for key, value in raw.items():
            if isinstance(value, Mapping):
                shapes.update({f"{key}.{k}": tuple(v.shape) for k, v in value.items() if hasattr(v, "shape")})
            elif hasattr(value, "shape"):
                shapes[str(key)] = tuple(value.shape)
    return shapes


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a weight file (safetensors header, or a torch file)."""
    if path.suffix.lower() == ".safetensors":
        return _safetensors_shapes(path)
    return _torch_shapes(path)


# -- classification --------------------------------------------------------------------------
def identitynet_problem(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why these tensors are not an SDXL IdentityNet, or None if they are."""
    for signature in _IDENTITYNET_SIGNATURES.values():
        if signature["hint"] not in shapes:
            continue
        cross = shapes.get(signature["cross"])
        vector = shapes.get(signature["vector"])
        hint = shapes[signature["hint"]]
        if cross is not None and cross[1] != _SDXL_CONTEXT:
            family = {768: "an SD1.5", 1024: "an SD2.x"}.get(cross[1], f"a {cross[1]}-wide-context")
            return f"it is {family} ControlNet; InstantID's IdentityNet is an SDXL ControlNet"
        if cross is None or vector is None:
            return "it is a ControlNet, but not an SDXL one"
        if vector[1] != _SDXL_VECTOR:
            return f"its time/size embedding takes {vector[1]} values where SDXL base uses {_SDXL_VECTOR}"
        if len(hint) != 4 or hint[1] != 3:
            channels = hint[1] if len(hint) > 1 else "?"
            return f"its hint input has {channels} channels where the keypoint image has 3"
        return None
    if any(k.startswith(("image_proj.", "ip_adapter.")) for k in shapes):
        return "it is an IP-Adapter, not a ControlNet"
    return "it is not a ControlNet"


def adapter_problem(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why these tensors are not InstantID's ip-adapter, or None if they are."""
    proj_in = shapes.get("image_proj.proj_in.weight")
    latents = shapes.get("image_proj.latents")
    k1 = shapes.get("ip_adapter.1.to_k_ip.weight")
    if not any(k.startswith("ip_adapter.") for k in shapes):
        return "it is not an IP-Adapter"
    if k1 is None or k1[1] != _SDXL_CONTEXT:
        family = {768: "SD1.5", 1024: "SD2.x"}.get(k1[1] if k1 else 0, "non-SDXL")
        return f"it is an {family} IP-Adapter"
    if proj_in is None or latents is None:
        return "it is an SDXL IP-Adapter without a Resampler (plain or FaceID), not InstantID's"
    if proj_in[1] != 512:
        return f"it is an SDXL IP-Adapter Plus for {proj_in[1]}-wide CLIP image features, not InstantID's"
    if "ip_adapter.139.to_k_ip.weight" not in shapes:
        return "it does not cover SDXL's 70 cross-attention layers"
    return None


_CACHE: dict[tuple[str, int, int], ModelKind | None] = {}
_CACHE_LOCK = threading.Lock()


def classify(path: Path) -> ModelKind | None:
    """What a weight file is, by content; None for anything else (cached per size and mtime)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    kind: ModelKind | None = None
    try:
        shapes = tensor_shapes(path)
    except ModelFileError as err:
        logger.debug("Skipping %s: %s", path, err)
        shapes = {}
    if shapes:
        if adapter_problem(shapes) is None:
            kind = "ip_adapter"
        elif identitynet_problem(shapes) is None:
            kind = "identitynet"
    with _CACHE_LOCK:
        _CACHE[key] = kind
    return kind


# -- scanning --------------------------------------------------------------------------------
def _candidates(root: Path, depth: int = 2) -> Iterable[Path]:
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.is_file() and entry.suffix.lower() in WEIGHT_SUFFIXES:
            yield entry
        elif entry.is_dir() and depth > 0 and not entry.name.startswith("."):
            yield from _candidates(entry, depth - 1)


def _display_name(path: Path, root: Path) -> str:
    """A diffusers folder shows as the folder's name; a file as its path below the root."""
    if path.name in DIFFUSERS_WEIGHTS:
        path = path.parent
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def scan_models(roots: Sequence[Path | str | None]) -> ModelInventory:
    """Every InstantID adapter and IdentityNet below ``roots`` (two folder levels deep)."""
    inventory = ModelInventory()
    seen: set[Path] = set()
    for raw in roots:
        if raw is None:
            continue
        root = Path(raw)
        if root in inventory.searched:
            continue
        inventory.searched.append(root)
        for path in _candidates(root):
            resolved = path.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            kind = classify(path)
            if kind is not None:
                inventory.of_kind(kind).append(ModelFile(kind, path, _display_name(path, root)))
    return inventory


_WHAT = {
    "ip_adapter": ("adapter", "ip-adapter.bin"),
    "identitynet": (
        "IdentityNet",
        "ControlNetModel/diffusion_pytorch_model.safetensors (with its config.json)",
    ),
}


def resolve_model(kind: ModelKind, name: str, inventory: ModelInventory) -> ModelFile:
    """The file a UI/API name refers to ("Auto" = the first found), or a clear error."""
    models = inventory.of_kind(kind)
    label, expected = _WHAT[kind]
    if not models:
        where = inventory.searched[0] if inventory.searched else Path("models/instantid")
        searched = ", ".join(f"'{p}'" for p in inventory.searched) or "nowhere"
        msg = (
            f"No InstantID {label} found (searched {searched}). Download {expected} from the "
            f"InstantID release and put it in '{where}', then press the refresh button."
        )
        raise ModelFileError(msg)
    if not name or name == AUTO:
        return models[0]
    for model in models:
        if name in (model.name, model.path.name, str(model.path)):
            return model
    msg = f"The InstantID {label} '{name}' was not found. Available: {', '.join(m.name for m in models)}."
    raise ModelFileError(msg)


def check_identitynet(path: Path | str) -> Path:
    """Validate a user-given IdentityNet file or diffusers folder; return the weights file.

    Raises :class:`ModelFileError` (missing files, with the path to create) or
    :class:`IncompatibleModelError` (a file of another kind).
    """
    path = Path(path)
    if path.is_dir():
        weights = next((path / n for n in DIFFUSERS_WEIGHTS if (path / n).is_file()), None)
        if weights is None:
            has_bin = (path / "diffusion_pytorch_model.bin").is_file()
            hint = " (only the .bin is there: download the .safetensors version)" if has_bin else ""
            msg = (
                f"The IdentityNet folder '{path}' has no diffusion_pytorch_model.safetensors{hint}. "
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
    problem = identitynet_problem(tensor_shapes(path))
    if problem:
        msg = f"'{path}' cannot be used as InstantID's IdentityNet: {problem}."
        raise IncompatibleModelError(msg)
    return path


_HASHES: dict[tuple[str, int, int], str] = {}


def short_hash(path: Path) -> str:
    """First 10 hex digits of the file's SHA-256 (the WebUI's style), cached per size and mtime."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()[:10]
    return _HASHES[key]
