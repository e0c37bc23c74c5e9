"""Finding and checking InstantID's two weight files: the adapter and the IdentityNet.

Files are recognised by their content (tensor names and shapes), never by their names, so
users keep the names they downloaded (``ip-adapter.bin``, ``diffusion_pytorch_model.safetensors``)
or the ones other tools asked for (``ip-adapter_instant_id_sdxl.bin``,
``control_instant_id_sdxl.safetensors``).

There is one check per kind (:func:`adapter_issue`, :func:`identitynet_issue`), and the scan,
``/status``, the UI's model lists and loading all use it, so a file is either listed and
loadable, or listed nowhere and reported with the reason. The checks hold everything loading
needs (the Resampler's and the 70 IP layers' shapes; IdentityNet's SDXL shapes and file
format); reading a safetensors header costs a few kilobytes and a ``.bin`` is memory-mapped,
so a scan stays cheap. Results are cached per file (path, size, mtime).

File hashes (for infotexts) go through a pluggable :class:`HashStore`, so the WebUI can keep
them in its own persistent cache; without one they are kept in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from .errors import DependencyError, IncompatibleModelError, ModelFileError

logger = logging.getLogger(__name__)

ModelKind = Literal["ip_adapter", "identitynet"]
AUTO = "Auto"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
_DIFFUSERS_STEM = "diffusion_pytorch_model"

SDXL_CONTEXT = 2048
"""Width of SDXL's text context, of the face tokens and of every IP layer's input."""
SDXL_VECTOR = 2816
"""Width of SDXL base's size/time embedding input (the refiner's is 2560)."""
FACE_EMBEDDING_DIM = 512
NUM_FACE_TOKENS = 16
NUM_IP_LAYERS = 70
RESAMPLER_HEAD_DIM = 64
# Width of each of the 70 IP layers in units of the first one, in IP key order (see
# sdxl_layers): input blocks 4-5 (640), 7-8 (1280), output 0-2 (1280), 3-5 (640), middle (1280).
_IP_LAYER_SCALE = (1,) * 4 + (2,) * 50 + (1,) * 6 + (2,) * 10
_SDXL_IP_BASE_WIDTH = 640

# Tensor names that identify an SDXL ControlNet, in the diffusers layout IdentityNet is
# published in and in the ldm layout some conversions use.
_CONTROLNET_SIGNATURES = {
    "diffusers": {
        "hint": "controlnet_cond_embedding.conv_in.weight",
        "cross": "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        "vector": "add_embedding.linear_1.weight",
        "outputs": ("controlnet_down_blocks.0.weight", "controlnet_mid_block.weight"),
    },
    "ldm": {
        "hint": "input_hint_block.0.weight",
        "cross": "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
        "vector": "label_emb.0.0.weight",
        "outputs": ("zero_convs.0.0.weight", "middle_block_out.0.weight"),
    },
}
_CONTEXT_FAMILIES = {768: "SD1.5", 1024: "SD2.x"}

SOURCE = "InstantX/InstantID on Hugging Face"
_FIXES: dict[ModelKind | None, str] = {
    "ip_adapter": f"download InstantID's ip-adapter.bin from {SOURCE} instead",
    "identitynet": (
        "download InstantID's ControlNetModel/diffusion_pytorch_model.safetensors (with its config.json) "
        f"from {SOURCE} instead"
    ),
    None: "InstantID does not use it",
}
# File names that show a file is meant for InstantID even outside its own folder.
_INSTANTID_NAME = re.compile(r"instant[-_ ]?id|identitynet|controlnetmodel", re.IGNORECASE)
_LFS_POINTER = b"version https://git-lfs"
_IDENTITY_FORMAT = "instantid-identity"  # identity files (.safetensors) live in our folder too


# -- results ---------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class Verdict:
    """What one file is, and why it cannot be used (``problem``, a phrase after the file name)."""

    kind: ModelKind | None
    problem: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)
    readable: bool = True
    identity: bool = False

    @property
    def usable(self) -> bool:
        return self.kind is not None and self.problem is None

    def reason(self, path: Path) -> str:
        """The full sentence for a file that cannot be used."""
        if not self.readable:
            return str(self.problem)
        return f"'{path}' {self.problem}; {_FIXES[self.kind]}."


# -- reading tensor names and shapes ---------------------------------------------------------
@dataclass(frozen=True)
class _Header:
    shapes: dict[str, tuple[int, ...]]
    dtypes: Counter[str]
    metadata: dict[str, str]


_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def _check_not_pointer(path: Path, head: bytes) -> None:
    if head.startswith(_LFS_POINTER):
        msg = (
            f"'{path}' is a Git LFS pointer file, not the model (the repository was cloned without "
            "Git LFS); download the real file again."
        )
        raise ModelFileError(msg)


def _safetensors_header(path: Path) -> _Header:
    """Names, shapes and dtypes from a safetensors header, without reading tensor data."""
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            msg = f"'{path}' is empty or truncated; download it again."
            raise ModelFileError(msg)
        _check_not_pointer(path, head + fh.read(len(_LFS_POINTER)))
        fh.seek(8)
        size = int.from_bytes(head, "little")
        if size <= 0 or size > 100_000_000:
            msg = f"'{path}' is not a valid .safetensors file; download it again."
            raise ModelFileError(msg)
        try:
            header = json.loads(fh.read(size))
        except (ValueError, UnicodeDecodeError) as err:
            msg = f"'{path}' has a damaged .safetensors header; download it again."
            raise ModelFileError(msg) from err
    if not isinstance(header, dict):
        msg = f"'{path}' is not a valid .safetensors file; download it again."
        raise ModelFileError(msg)
    tensors = {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    try:
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
        shapes = {k: tuple(int(d) for d in v["shape"]) for k, v in tensors.items()}
    except (KeyError, TypeError, ValueError, IndexError) as err:
        msg = f"'{path}' has a damaged .safetensors header; download it again."
        raise ModelFileError(msg) from err
    expected = 8 + size + end
    actual = path.stat().st_size
    if actual < expected:
        msg = (
            f"'{path}' is incomplete ({actual:,} of {expected:,} bytes): the download was interrupted; "
            "download it again."
        )
        raise ModelFileError(msg)
    dtypes = Counter(
        _SAFETENSORS_DTYPES.get(str(v.get("dtype")), str(v.get("dtype"))) for v in tensors.values()
    )
    metadata = header.get("__metadata__") or {}
    return _Header(
        shapes, dtypes, {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    )


def read_torch_file(path: Path) -> Any:
    """Load a ``.bin``/``.pt`` file with ``weights_only=True`` (no pickled code can run),
    memory-mapped when the file's format allows.

    ``torch.serialization.load`` is called directly: the WebUI replaces ``torch.load`` with
    a checker that rejects files saved by newer torch versions (extra entries in the zip),
    and ``weights_only`` already gives the safety that checker is there for.
    """
    try:
        import torch
    except ImportError as err:
        msg = f"Reading '{path}' needs PyTorch, which cannot be imported ({err})."
        raise DependencyError(msg) from err
    try:
        with path.open("rb") as fh:
            _check_not_pointer(path, fh.read(len(_LFS_POINTER)))
    except OSError as err:
        msg = f"'{path}' cannot be read ({err.strerror or err}); check its permissions."
        raise ModelFileError(msg) from err
    try:
        try:
            return torch.serialization.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, TypeError):  # legacy (non-zip) file, or torch < 2.1 without mmap
            return torch.serialization.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling fails in many ways; all mean "not a usable file"
        msg = (
            f"Could not read '{path}' as a weights-only PyTorch file ({type(err).__name__}: {err}). "
            "Download it again; it may be incomplete, or not a weights file."
        )
        raise ModelFileError(msg) from err


def _torch_header(path: Path) -> _Header:
    """Flattened ``group.key`` shapes and dtypes of a weights-only torch file."""
    raw = read_torch_file(path)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: Counter[str] = Counter()

    def add(key: str, value: Any) -> None:
        if hasattr(value, "shape"):
            shapes[key] = tuple(int(d) for d in value.shape)
            dtypes[str(getattr(value, "dtype", "?")).replace("torch.", "")] += 1

    if isinstance(raw, Mapping):
        for key, value in raw.items():
            if isinstance(value, Mapping):
                for sub, tensor in value.items():
                    add(f"{key}.{sub}", tensor)
            else:
                add(str(key), value)
    return _Header(shapes, dtypes, {})


def _read_header(path: Path) -> _Header:
    if path.suffix.lower() == ".safetensors":
        return _safetensors_header(path)
    return _torch_header(path)


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a weight file (safetensors header, or a torch file)."""
    return _read_header(path).shapes


# -- the adapter check -----------------------------------------------------------------------
def _first_ip_key(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    keys = [k for k in shapes if k.startswith("ip_adapter.") and k.endswith(".to_k_ip.weight")]

    def number(key: str) -> int:
        part = key.split(".")[1]
        return int(part) if part.isdigit() else 1 << 30

    return min(keys, key=number) if keys else None


def _resampler_shapes(dim: int, inner: int, ff: int, depth: int) -> dict[str, tuple[int, ...]]:
    """Every ``image_proj`` tensor of InstantID's Resampler for these sizes (what loading needs)."""
    expected: dict[str, tuple[int, ...]] = {
        "latents": (1, NUM_FACE_TOKENS, dim),
        "proj_in.weight": (dim, FACE_EMBEDDING_DIM),
        "proj_in.bias": (dim,),
        "proj_out.weight": (SDXL_CONTEXT, dim),
        "proj_out.bias": (SDXL_CONTEXT,),
        "norm_out.weight": (SDXL_CONTEXT,),
        "norm_out.bias": (SDXL_CONTEXT,),
    }
    for i in range(depth):
        p = f"layers.{i}."
        expected.update(
            {
                p + "0.norm1.weight": (dim,),
                p + "0.norm1.bias": (dim,),
                p + "0.norm2.weight": (dim,),
                p + "0.norm2.bias": (dim,),
                p + "0.to_q.weight": (inner, dim),
                p + "0.to_kv.weight": (2 * inner, dim),
                p + "0.to_out.weight": (dim, inner),
                p + "1.0.weight": (dim,),
                p + "1.0.bias": (dim,),
                p + "1.1.weight": (ff, dim),
                p + "1.3.weight": (dim, ff),
            }
        )
    return expected


def _resampler_issue(proj: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why ``image_proj`` is not InstantID's Resampler (512-d embedding → 16 tokens of 2048)."""
    latents = proj["latents"]
    if len(latents) != 3 or latents[0] != 1:
        return f"has a damaged Resampler (image_proj.latents is {list(latents)}), so it cannot be loaded"
    queries, dim = latents[1], latents[2]
    if queries != NUM_FACE_TOKENS:
        return (
            f"has a Resampler that makes {queries} tokens where InstantID's makes {NUM_FACE_TOKENS}, "
            "so it is not InstantID's adapter"
        )
    proj_out = proj.get("proj_out.weight")
    if proj_out is not None and len(proj_out) == 2 and proj_out[0] != SDXL_CONTEXT:
        return (
            f"has a Resampler that makes {proj_out[0]}-d tokens where InstantID's makes {SDXL_CONTEXT}-d "
            "ones (SDXL's context width), so it is not InstantID's adapter"
        )
    to_q = proj.get("layers.0.0.to_q.weight")
    ff = proj.get("layers.0.1.1.weight")
    if to_q is None or ff is None or len(to_q) != 2 or len(ff) != 2:
        missing = "layers.0.0.to_q.weight" if to_q is None or len(to_q) != 2 else "layers.0.1.1.weight"
        return (
            f"has a damaged Resampler (image_proj.{missing} is missing or misshapen), so it cannot be loaded"
        )
    if to_q[0] % RESAMPLER_HEAD_DIM:
        return (
            f"has a damaged Resampler (its attention is {to_q[0]} wide, not a multiple of "
            f"{RESAMPLER_HEAD_DIM}-wide heads), so it cannot be loaded"
        )
    indices = {int(k.split(".")[1]) for k in proj if k.startswith("layers.") and k.split(".")[1].isdigit()}
    depth = max(indices) + 1
    expected = _resampler_shapes(dim, to_q[0], ff[0], depth)
    for key, shape in expected.items():
        found = proj.get(key)
        if found is None:
            return f"has a damaged Resampler (image_proj.{key} is missing), so it cannot be loaded"
        if tuple(found) != shape:
            return (
                f"has a damaged Resampler (image_proj.{key} is {list(found)} where the rest of it needs "
                f"{list(shape)}), so it cannot be loaded"
            )
    extra = sorted(set(proj) - set(expected))
    if extra:
        return (
            f"has a Resampler with a tensor InstantID's does not have (image_proj.{extra[0]}), "
            "so it is not InstantID's adapter"
        )
    return None


def _ip_layers_issue(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why the ``ip_adapter`` tensors are not 70 SDXL IP layers of the right widths."""
    expected = {
        f"ip_adapter.{2 * i + 1}.{kind}.weight": i
        for i in range(NUM_IP_LAYERS)
        for kind in ("to_k_ip", "to_v_ip")
    }
    extra = sorted(k for k in shapes if k.startswith("ip_adapter.") and k not in expected)
    if extra:
        return f"has a layer SDXL does not have ({extra[0]}), so it is not InstantID's adapter"
    base = None
    for key in sorted(expected, key=lambda k: (int(k.split(".")[1]), k)):
        shape = shapes.get(key)
        if shape is None:
            return f"lacks {key}, so it does not cover SDXL's {NUM_IP_LAYERS} cross-attention layers"
        if len(shape) != 2 or shape[1] != SDXL_CONTEXT:
            return f"has {key} of shape {list(shape)} where [width, {SDXL_CONTEXT}] is needed"
        scale = _IP_LAYER_SCALE[expected[key]]
        if base is None:
            base = shape[0]
        if shape[0] != base * scale:
            return (
                f"has {key} {shape[0]} wide where SDXL's layout needs {base * scale} (InstantID's adapter "
                f"has {_SDXL_IP_BASE_WIDTH} and {2 * _SDXL_IP_BASE_WIDTH}), so it cannot be used"
            )
    return None


def adapter_issue(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why these tensors are not InstantID's SDXL adapter, as a phrase after the file name
    ("is an SD1.5 IP-Adapter (768-d tokens), …"); None when loading will accept them.

    Checks everything :func:`instantid_ext.ip_adapter.load_ip_adapter` needs: a Resampler
    from the 512-d face embedding to 16 tokens of 2048 whose every tensor fits, and 70 IP
    layers (keys 1, 3, …, 139) taking 2048-d tokens, with SDXL's pattern of widths. The
    widths themselves are matched to the loaded UNet when the adapter is applied.
    """
    first = _first_ip_key(shapes)
    if first is None:
        return "is not an IP-Adapter"
    k1 = shapes[first]
    width = k1[1] if len(k1) == 2 else 0
    if width != SDXL_CONTEXT:
        family = _CONTEXT_FAMILIES.get(width)
        if family:
            return f"is an {family} IP-Adapter ({width}-d tokens), not InstantID's SDXL adapter"
        return f"is an IP-Adapter for {width}-d tokens, not InstantID's SDXL adapter ({SDXL_CONTEXT}-d)"
    proj = {k[len("image_proj.") :]: v for k, v in shapes.items() if k.startswith("image_proj.")}
    proj_0 = proj.get("proj.0.weight")
    if (
        any("lora" in k for k in shapes if k.startswith("ip_adapter."))
        or any(k.startswith("perceiver_resampler.") for k in proj)
        or (proj_0 is not None and len(proj_0) == 2 and proj_0[1] == FACE_EMBEDDING_DIM)
    ):
        return "is an SDXL IP-Adapter FaceID, not InstantID's adapter"
    if "latents" not in proj or "proj_in.weight" not in proj:
        return (
            "is a plain SDXL IP-Adapter without a Resampler (for CLIP image embeddings), "
            "not InstantID's adapter"
        )
    proj_in = proj["proj_in.weight"]
    if len(proj_in) != 2 or proj_in[1] != FACE_EMBEDDING_DIM:
        features = proj_in[1] if len(proj_in) == 2 else "?"
        return (
            f"is an SDXL IP-Adapter Plus (a Resampler over {features}-d CLIP image features), "
            "not InstantID's adapter"
        )
    return _resampler_issue(proj) or _ip_layers_issue(shapes)


def adapter_problem(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """:func:`adapter_issue` as a clause ("it is an SD1.5 IP-Adapter …"), for "cannot be used: …"."""
    issue = adapter_issue(shapes)
    return None if issue is None else f"it {issue}"


# -- the IdentityNet check -------------------------------------------------------------------
def _controlnet_layout(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    for layout, signature in _CONTROLNET_SIGNATURES.items():
        if signature["hint"] in shapes:
            return layout
    return None


def identitynet_issue(shapes: Mapping[str, tuple[int, ...]], suffix: str = ".safetensors") -> str | None:
    """Why these tensors (from a file with ``suffix``) are not a usable IdentityNet, as a
    phrase after the file name; None when the file can be given to ControlNet as IdentityNet.

    IdentityNet is an SDXL ControlNet: SDXL base's 2048-d cross-attention and 2816-d size
    embedding, a 3-channel hint (the keypoint image), complete output layers, stored as
    ``.safetensors`` (the only format InstantID hands to ControlNet).
    """
    if "lora_controlnet" in shapes:
        return "is a ControlNet LoRA, not InstantID's IdentityNet"
    layout = _controlnet_layout(shapes)
    if layout is None:
        if any(k.startswith(("image_proj.", "ip_adapter.")) for k in shapes):
            return "is an IP-Adapter, not a ControlNet like InstantID's IdentityNet"
        return "is not a ControlNet"
    signature = _CONTROLNET_SIGNATURES[layout]
    cross = shapes.get(signature["cross"])
    vector = shapes.get(signature["vector"])
    hint = shapes[signature["hint"]]
    if cross is not None and len(cross) == 2 and cross[1] != SDXL_CONTEXT:
        family = _CONTEXT_FAMILIES.get(cross[1])
        what = f"an {family} ControlNet" if family else "a ControlNet"
        return f"is {what} ({cross[1]}-d cross-attention), not InstantID's SDXL IdentityNet"
    if cross is None or vector is None or len(vector) != 2:
        return "is a ControlNet, but not an SDXL one, so not InstantID's IdentityNet"
    if vector[1] != SDXL_VECTOR:
        return (
            f"is an SDXL ControlNet whose size embedding takes {vector[1]} values where SDXL base uses "
            f"{SDXL_VECTOR} (a refiner ControlNet?), not InstantID's IdentityNet"
        )
    if any(k.startswith(("control_add_embedding.", "task_embedding")) for k in shapes):
        return "is a ControlNet Union (several control types in one), not InstantID's IdentityNet"
    if len(hint) != 4 or hint[1] != 3:
        channels = hint[1] if len(hint) > 1 else "?"
        return (
            f"is an SDXL ControlNet for a {channels}-channel hint where IdentityNet's keypoint image has 3, "
            "not InstantID's IdentityNet"
        )
    missing = next((k for k in signature["outputs"] if k not in shapes), None)
    if missing:
        return f"lacks ControlNet's output layers ({missing}), so it is not a complete ControlNet"
    if suffix.lower() != ".safetensors":
        return (
            f"is an SDXL ControlNet stored as a {suffix} file, but IdentityNet is given to ControlNet "
            "only as a .safetensors file"
        )
    return None


def identitynet_problem(shapes: Mapping[str, tuple[int, ...]], suffix: str = ".safetensors") -> str | None:
    """:func:`identitynet_issue` as a clause ("it is an SD1.5 ControlNet …")."""
    issue = identitynet_issue(shapes, suffix)
    return None if issue is None else f"it {issue}"


# -- one verdict per file --------------------------------------------------------------------
def _other_description(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """What a weight file that is neither an IP-Adapter nor a ControlNet seems to be."""
    if any(k.startswith("model.diffusion_model.") for k in shapes) or "conv_in.weight" in shapes:
        return "is a Stable Diffusion checkpoint or UNet, not one of InstantID's models"
    if any(k.startswith(("lora_unet_", "lora_te")) or ".lora_" in k or "lora_down" in k for k in shapes):
        return "is a LoRA, not one of InstantID's models"
    return "is neither an IP-Adapter nor a ControlNet, so it is not one of InstantID's models"


def _kind_by_name(path: Path) -> ModelKind | None:
    name = path.as_posix().lower()
    if re.search(r"ip[-_]?adapter", name):
        return "ip_adapter"
    if re.search(r"control|identitynet|diffusion_pytorch_model", name):
        return "identitynet"
    return None


def _details(path: Path, header: _Header, layout: str | None) -> dict[str, str]:
    details = {
        "format": "safetensors" if path.suffix.lower() == ".safetensors" else "torch",
        "size_mb": f"{path.stat().st_size / 1e6:.0f}",
    }
    if header.dtypes:
        details["dtype"] = header.dtypes.most_common(1)[0][0]
    if layout:
        details["layout"] = layout
    if path.name.startswith(_DIFFUSERS_STEM) and ".fp16." in path.name:
        details["variant"] = "fp16"
    return details


def judge(path: Path) -> Verdict:
    """The one check: what ``path`` is and why it cannot be used, by content (uncached)."""
    try:
        header = _read_header(path)
    except (ModelFileError, DependencyError) as err:
        return Verdict(_kind_by_name(path), str(err), readable=False)
    except OSError as err:
        return Verdict(
            _kind_by_name(path), f"'{path}' cannot be read ({err.strerror or err}).", readable=False
        )
    shapes = header.shapes
    if header.metadata.get("format") == _IDENTITY_FORMAT:
        return Verdict(None, identity=True)
    if any(k.startswith("ip_adapter.") for k in shapes):
        return Verdict("ip_adapter", adapter_issue(shapes), _details(path, header, None))
    layout = _controlnet_layout(shapes)
    if layout is not None or "lora_controlnet" in shapes:
        return Verdict("identitynet", identitynet_issue(shapes, path.suffix), _details(path, header, layout))
    return Verdict(None, _other_description(shapes), _details(path, header, None))


_CACHE: dict[tuple[str, int, int], Verdict] = {}
_CACHE_LOCK = threading.Lock()


def inspect_file(path: Path) -> Verdict:
    """:func:`judge`, cached per path, size and mtime (a replaced file is checked again)."""
    try:
        stat = path.stat()
    except OSError as err:
        return Verdict(
            _kind_by_name(path),
            f"'{path}' does not exist or cannot be read ({err.strerror}).",
            readable=False,
        )
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    verdict = judge(path)
    with _CACHE_LOCK:
        _CACHE[key] = verdict
    return verdict


def classify(path: Path) -> ModelKind | None:
    """The kind of a usable weight file; None for anything else (see :func:`inspect_file`)."""
    verdict = inspect_file(path)
    return verdict.kind if verdict.usable else None


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
            if chosen is not None and entry.name.startswith(_DIFFUSERS_STEM) and entry != chosen:
                continue  # the .bin or other variant next to the diffusers .safetensors
            yield entry
        elif entry.is_dir() and depth > 0 and not entry.name.startswith("."):
            yield from _candidates(entry, depth - 1)


def _display_name(path: Path, root: Path) -> str:
    """A diffusers folder shows as the folder's name; a file as its path below the root."""
    if path.name.startswith(_DIFFUSERS_STEM):
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
    return bool(_INSTANTID_NAME.search(_display_name(path, root)))


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
            has_bin = (path / f"{_DIFFUSERS_STEM}.bin").is_file()
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
    msg = f"'{path}' {problem}; {_FIXES['identitynet']}."
    raise IncompatibleModelError(msg)


# -- file hashes -----------------------------------------------------------------------------
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
