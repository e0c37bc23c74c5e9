"""The one check of InstantID's weight files: what a file is, and why it cannot be used.

The scan, ``/status``, the UI's model lists and loading all call this module, so a file is
either listed and loadable, or listed nowhere and reported with the reason. The checks hold
everything loading needs (the Resampler's and the 70 IP layers' shapes; IdentityNet's SDXL
shapes and file format) and read only tensor names, shapes and dtypes: a safetensors header
costs a few kilobytes and a ``.bin`` is memory-mapped. Verdicts are cached per file (path,
size, mtime), so a replaced file is checked again.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import DependencyError, ModelFileError

ModelKind = Literal["ip_adapter", "identitynet"]
DIFFUSERS_STEM = "diffusion_pytorch_model"

# The shapes loading needs (ip_adapter, resampler, sdxl_layers hold the same numbers; they
# import torch, which this module must not, so that a check runs where torch is missing).
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
FIXES: dict[ModelKind | None, str] = {
    "ip_adapter": f"download InstantID's ip-adapter.bin from {SOURCE} instead",
    "identitynet": (
        "download InstantID's ControlNetModel/diffusion_pytorch_model.safetensors (with its config.json) "
        f"from {SOURCE} instead"
    ),
    None: "InstantID does not use it",
}
# File names that show a file is meant for InstantID even outside its own folder.
INSTANTID_NAME = re.compile(r"instant[-_ ]?id|identitynet|controlnetmodel", re.IGNORECASE)
_LFS_POINTER = b"version https://git-lfs"
_IDENTITY_FORMAT = "instantid-identity"  # identity files (.safetensors) live in our folder too


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
        return f"'{path}' {self.problem}; {FIXES[self.kind]}."


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

    Checks everything :func:`instantid_ext.method.ip_adapter.load_ip_adapter` needs: a Resampler
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
    if path.name.startswith(DIFFUSERS_STEM) and ".fp16." in path.name:
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
