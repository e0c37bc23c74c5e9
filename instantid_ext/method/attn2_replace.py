"""Decoupled cross-attention as an attn2 *replace* patch, for hosts with a ComfyUI-style patcher.

The Forge family (Forge Classic, reForge, Forge) does not let us hook ``to_out``: its UNet
patcher calls, for every attn2 layer that has a replace patch under the key
``(block, number, transformer_index)``, ``patch(q, k, v, extra_options)`` with ``q = to_q(x)``,
``k = to_k(context)``, ``v = to_v(context)`` already projected (``[B, tokens, heads·d]``), and
applies ``to_out`` to what the patch returns. The patch therefore returns the same tensor that
:class:`~instantid_ext.method.attention.IPAttentionPatch` hands to ``to_out`` in the WebUI:
``SDPA(q, k, v) + scale · SDPA(q, K_ip, V_ip)`` per head, with the same cached keys and values
and the same several-people regions, so both hosts share one formula.

Rows: ``extra_options["cond_or_uncond"]`` lists the batch's equal chunks, 0 for cond and 1 for
uncond (the host's convention, the reverse of :mod:`.rows`); row i of a chunk is image i.
Sampling progress comes from a caller's hook on ``extra_options`` (the adapter turns sigmas into
progress). A replace patch another extension put on the layer is kept and computes the text
part; the face term is added to its result.

The host deep-copies its model options on every clone, so a patch copies as itself (its face
keys and values are computed once per layer, not per copy) and holds no host object.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from .attention import (
    IPIdentity,
    checked_identities,
    region_probs,
    region_token_mask,
    scaled_face_kv,
    token_sets,
)
from .ip_adapter import NUM_FACE_TOKENS, IPAdapter
from .sdxl_layers import NUM_IP_LAYERS, SDXL_ATTN2_BLOCKS

logger = logging.getLogger(__name__)

PatchKey = tuple[str, int, int]
"""``(block, number, transformer_index)``, e.g. ``("input", 4, 0)``: the host's attn2 key."""
ReplacePatch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]
TextAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

HOST_COND, HOST_UNCOND = 0, 1
"""The values of ``extra_options["cond_or_uncond"]``."""

_BLOCK_NAMES = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}
_SDXL_DEPTHS = (2, 2, 10, 10, 10, 10, 10, 2, 2, 2, 10)
"""Transformer blocks of each entry of :data:`SDXL_ATTN2_BLOCKS`."""


def _sdxl_keys() -> tuple[PatchKey, ...]:
    keys = []
    for (attr, index), depth in zip(SDXL_ATTN2_BLOCKS, _SDXL_DEPTHS, strict=True):
        number = max(index, 0)  # the middle block is ("middle", 0)
        keys += [(_BLOCK_NAMES[attr], number, j) for j in range(depth)]
    return tuple(keys)


SDXL_ATTN2_KEYS: tuple[PatchKey, ...] = _sdxl_keys()
"""The 70 attn2 patch keys in IP-Adapter order: key i uses ``to_k_ip[i]``/``to_v_ip[i]``."""
assert len(SDXL_ATTN2_KEYS) == NUM_IP_LAYERS


def layer_name(key: PatchKey) -> str:
    """The WebUI (sgm) module path of the attn2 layer under ``key``."""
    block, number, j = key
    prefix = "middle_block.1" if block == "middle" else f"{block}_blocks.{number}.1"
    return f"{prefix}.transformer_blocks.{j}.attn2"


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain multi-head attention on projected ``[B, T, heads·d]`` tensors, as the host's own."""
    batch = q.shape[0]
    q, k, v = (t.view(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[-1])


def context_rows(cond: torch.Tensor, uncond: torch.Tensor, chunks: Sequence[int], batch: int) -> torch.Tensor:
    """A ``[batch, T, C]`` context for a call with these ``cond_or_uncond`` chunks: ``cond`` (one
    set, ``[1, T, C]``) in the cond chunks; in the uncond chunks ``uncond``'s one set, or row i
    of ``uncond`` (one set per image, ``[B, T, C]``) for row i of the chunk. Without usable chunks
    every row is cond (as :meth:`FaceAttention._select_rows` counts them)."""
    chunks = tuple(int(c) for c in chunks or ())
    if not chunks or batch % len(chunks):
        chunks = (HOST_COND,)
    per_chunk = batch // len(chunks)
    last = uncond.shape[0] - 1
    parts = []
    for chunk in chunks:
        if chunk == HOST_COND:
            parts.append(cond[:1].expand(per_chunk, -1, -1))
        elif last == 0:
            parts.append(uncond.expand(per_chunk, -1, -1))
        else:
            index = torch.tensor([min(row, last) for row in range(per_chunk)], device=uncond.device)
            parts.append(uncond.index_select(0, index))
    return torch.cat(parts)


class CopiesAsItself:
    """The host deep-copies its model options at every clone of its UNet patcher; a patch that
    copies as itself keeps one set of cached keys/values and holds no copies of the tensors."""

    __slots__ = ()

    def __deepcopy__(self, memo: dict) -> CopiesAsItself:
        return self

    def __copy__(self) -> CopiesAsItself:
        return self


class FaceAttention(CopiesAsItself):
    """The face tokens of one generation, shared by the 70 per-layer patches it hands out.

    ``identities`` are as for :class:`~instantid_ext.method.attention.MultiIPAttentionPatch`
    (one: the single-person path; several: each inside its region mask). ``progress`` maps a
    layer call's ``extra_options`` to the fraction of sampling done (None: always active); the
    face term applies while ``start ≤ progress ≤ end``. ``text_attention(q, k, v, heads)`` computes
    the text part where no earlier patch does (the host's optimised attention; SDPA by default).
    """

    def __init__(
        self,
        adapter: IPAdapter,
        identities: Sequence[IPIdentity],
        start: float = 0.0,
        end: float = 1.0,
        progress: Callable[[Mapping[str, Any]], float] | None = None,
        text_attention: TextAttention | None = None,
    ) -> None:
        identities = checked_identities(identities, start, end)
        if len(adapter.to_k_ip) != NUM_IP_LAYERS:
            msg = f"The adapter has {len(adapter.to_k_ip)} IP layers where SDXL has {NUM_IP_LAYERS}."
            raise InvalidInputError(msg)
        self.start, self.end = float(start), float(end)
        self.progress = progress
        self.text_attention: TextAttention = text_attention or sdpa
        self._to_k = [layer.weight for layer in adapter.to_k_ip]
        self._to_v = [layer.weight for layer in adapter.to_v_ip]
        self._scales = [float(identity.scale) for identity in identities]
        self._enabled = any(s != 0.0 for s in self._scales)
        masks = [identity.mask for identity in identities]
        self._masks = None if masks[0] is None else torch.stack([m.detach().float() for m in masks])
        self._tokens = token_sets(identities).detach()
        self._sets = self._tokens.shape[0] - 1
        self._kv: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self._slots: dict[tuple, torch.Tensor] = {}
        self._mask_cache: dict[tuple, torch.Tensor] = {}
        self._lock = threading.Lock()
        self._last_sigmas: object = None
        self._last_active = True
        self._warned_rows = False

    # -- the patches ----------------------------------------------------------------------
    def patch(self, index: int, prior: ReplacePatch | None = None) -> Attn2FacePatch:
        """The replace patch of IP layer ``index`` (key ``SDXL_ATTN2_KEYS[index]``), chained
        after ``prior`` (a patch already on that key) when there is one."""
        if not 0 <= index < NUM_IP_LAYERS:
            msg = f"IP layer index {index} is outside 0…{NUM_IP_LAYERS - 1}."
            raise InvalidInputError(msg)
        return Attn2FacePatch(self, index, prior)

    def patches(self, existing: Mapping[Any, ReplacePatch] | None = None) -> dict[PatchKey, Attn2FacePatch]:
        """One patch per SDXL attn2 key, each chained after ``existing[key]`` if present (the
        host's ``transformer_options["patches_replace"]["attn2"]``)."""
        existing = existing or {}
        return {key: self.patch(i, existing.get(key)) for i, key in enumerate(SDXL_ATTN2_KEYS)}

    def clear(self) -> None:
        """Drop the cached keys, values and masks (after the generation)."""
        with self._lock:
            self._kv.clear()
            self._slots.clear()
            self._mask_cache.clear()
            self._last_sigmas = None

    # -- per layer call -------------------------------------------------------------------
    def active(self, extra_options: Mapping[str, Any]) -> bool:
        """Whether the face term applies to this UNet call; asked once per call (the host
        passes one ``sigmas`` tensor to all its layers), not once per layer."""
        if not self._enabled:
            return False
        if self.progress is None:
            return True
        sigmas = extra_options.get("sigmas")
        if sigmas is None or sigmas is not self._last_sigmas:
            self._last_active = self.start <= float(self.progress(extra_options)) <= self.end
            self._last_sigmas = sigmas
        return self._last_active

    def face_term(self, index: int, q: torch.Tensor, extra_options: Mapping[str, Any]) -> torch.Tensor:
        """``scale · SDPA(q, K_ip, V_ip)`` per head (in regions for several people), ``[B, S, C]``."""
        batch, seq, width = q.shape
        heads = int(extra_options["n_heads"])
        keys, values = self._layer_kv(index, heads, width, q.device, q.dtype)
        keys, values = self._select_rows(keys, values, extra_options, batch)
        qh = q.view(batch, seq, heads, width // heads).transpose(1, 2)
        scores = torch.matmul(qh, keys)  # [B, heads, S, 16k]
        count = len(self._scales)
        if count == 1:
            probs = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
            if self._masks is not None:
                probs = probs * self._token_mask(seq, extra_options, q.device, q.dtype).view(1, 1, seq, 1)
        else:
            blocks = scores.view(batch, heads, seq, count, NUM_FACE_TOKENS)
            weights = self._token_mask(seq, extra_options, q.device, q.dtype)
            probs = region_probs(blocks, weights, q.dtype, heads_first=True)
        face = torch.matmul(probs, values)  # [B, heads, S, d]
        return face.transpose(1, 2).reshape(batch, seq, width)

    @torch.no_grad()
    def _layer_kv(
        self, index: int, heads: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``K_ipᵀ/√d`` ``[n+1, heads, d, 16k]`` and ``scale · V_ip`` ``[n+1, heads, 16k, d]``,
        computed in float32 once per layer, device and dtype."""
        key = (index, device, dtype)
        cached = self._kv.get(key)
        if cached is not None:
            return cached
        to_k, to_v = self._to_k[index], self._to_v[index]
        if to_k.shape[0] != width:
            msg = (
                f"The adapter's IP layer {2 * index + 1} is {to_k.shape[0]} wide but the UNet's "
                f"{layer_name(SDXL_ATTN2_KEYS[index])} is {width}; the adapter does not fit this UNet."
            )
            raise InvalidInputError(msg)
        with self._lock:
            tokens = self._tokens.to(device=device, dtype=torch.float32)
            keys, vals = scaled_face_kv(
                tokens,
                to_k.to(device=device, dtype=torch.float32),
                to_v.to(device=device, dtype=torch.float32),
                heads,
                self._scales,
            )
            cached = (keys.to(dtype).contiguous(), vals.to(dtype).contiguous())
            self._kv[key] = cached
        return cached

    def _select_rows(
        self, keys: torch.Tensor, values: torch.Tensor, extra_options: Mapping[str, Any], batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's keys/values: the cond set for cond chunks; for uncond chunks the shared
        uncond set, or image i's own set for row i of the chunk."""
        chunks = tuple(int(c) for c in extra_options.get("cond_or_uncond") or ())
        if not chunks or batch % len(chunks):
            if not self._warned_rows:
                self._warned_rows = True
                logger.warning(
                    "attn2 call without a usable cond_or_uncond (%r for %d rows); its rows count as cond",
                    chunks,
                    batch,
                )
            chunks = (HOST_COND,)
        sets = self._sets
        if len(set(chunks)) == 1 and (sets == 1 or chunks[0] == HOST_COND):
            kind = sets if chunks[0] == HOST_COND else 0
            return keys[kind].expand(batch, -1, -1, -1), values[kind].expand(batch, -1, -1, -1)
        slots = self._row_slots(chunks, batch // len(chunks), keys.device)
        return keys.index_select(0, slots), values.index_select(0, slots)

    def _row_slots(self, chunks: tuple[int, ...], per_chunk: int, device: torch.device) -> torch.Tensor:
        key = (chunks, per_chunk, device)
        slots = self._slots.get(key)
        if slots is None:
            sets = self._sets
            values = [
                sets if chunk == HOST_COND else min(row, sets - 1)
                for chunk in chunks
                for row in range(per_chunk)
            ]
            slots = self._slots[key] = torch.tensor(values, dtype=torch.long, device=device)
        return slots

    def _token_mask(
        self, seq: int, extra_options: Mapping[str, Any], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """The region masks on this layer's token grid (latent from ``original_shape``):
        ``[1, S, 1]`` for one identity, ``[1, S, 1, k, 1]`` for k (as in the WebUI path)."""
        shape = extra_options.get("original_shape")
        latent = (int(shape[-2]), int(shape[-1])) if shape is not None and len(shape) == 4 else None
        key = (seq, latent, device, dtype)
        cached = self._mask_cache.get(key)
        if cached is not None:
            return cached
        assert self._masks is not None
        cached = region_token_mask(self._masks, seq, latent).to(device=device, dtype=dtype)
        self._mask_cache[key] = cached
        return cached


class Attn2FacePatch(CopiesAsItself):
    """The replace patch of one attn2 layer: text attention (or the earlier patch), plus the
    face term. Copies as itself, so the host's deep copy of its options keeps one cache."""

    __slots__ = ("face", "index", "prior")

    def __init__(self, face: FaceAttention, index: int, prior: ReplacePatch | None = None) -> None:
        self.face = face
        self.index = index
        self.prior = prior

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict
    ) -> torch.Tensor:
        if self.prior is not None:
            out = self.prior(q, k, v, extra_options)
        else:
            out = self.face.text_attention(q, k, v, int(extra_options["n_heads"]))
        if not self.face.active(extra_options):
            return out
        return out + self.face.face_term(self.index, q, extra_options).to(out.dtype)
