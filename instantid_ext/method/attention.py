"""Decoupled cross-attention for the WebUI's SDXL UNet, through removable forward hooks.

For every attn2 layer the reference computes
``to_out(softmax(Q K_txtᵀ/√d) V_txt + scale · softmax(Q K_ipᵀ/√d) V_ip)``. We add the IP term
to the input of the layer's output projection, from a forward pre-hook on ``to_out[0]``, so the
projection runs once, exactly as the host runs it: with a LoRA merged into its weight when the
layer first runs, a LoRA added to its output (``lora_functional``), or its weight stored in fp8.
Hooks run in ``Module.__call__``, so the patch works under every attention optimisation the
WebUI installs (they replace ``CrossAttention.forward`` on the class and call ``self.to_out``)
and under ControlNet's per-instance ``forward`` swap, and ``remove()`` leaves the UNet exactly
as it was.

Lean per step: the face tokens do not change during a generation, so each layer's keys (with
the 1/√d scale folded in) and ``scale · V_ip`` per head are computed once. A layer then costs a
small matmul for the 16-key scores, a softmax over 16 values, one matmul against the 16 values
per head and an addition: two hooks per layer. The query is captured from ``to_q``'s own call
(a hook on it), so it is not recomputed.

Which rows of a UNet batch are conditional, and which image of the batch each row belongs to,
is decided per UNet call by a :class:`RowRouter` (a forward pre-hook on the UNet), fed by the
host once per denoiser call. The uncond tokens may differ per image (negative noise drawn from
each image's seed): uncond row j of a call then takes the keys/values of its own image.

Several people (:class:`MultiIPAttentionPatch`): each identity r brings its own 16 tokens,
weight and region mask. The keys of all identities are stacked (``[heads, d, 16·k]``), so one
matmul scores every query against every identity; the softmax runs per 16-token block, each
block is multiplied by its identity's region mask on the layer's token grid, and one matmul
against the stacked values (``scale_r · V_r`` per head) gives the term. A
query inside region r thus attends to identity r's tokens only, with r's weight; a query
outside every region gets no face term. One identity takes exactly the single-person path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .hooks import HookSet
from .ip_adapter import NUM_FACE_TOKENS, IPAdapter
from .rows import COND, RowRouter
from .sdxl_layers import TOKEN_DIM, Attn2Layer, sdxl_attn2_layers

logger = logging.getLogger(__name__)

MAX_IDENTITIES = 4
"""Most people one generation can hold (each adds 16 keys to every attn2 layer)."""


@dataclass
class _LayerCache:
    """Per-layer tensors precomputed once per generation for one (device, dtype)."""

    keys: torch.Tensor  # [n+1, heads, d, 16·k]: K_ipᵀ/√d for the n uncond sets, then cond (n), k identities
    values: torch.Tensor  # [n+1, heads, 16·k, d]: scale_r · V_ip per head


@dataclass
class _LayerHook:
    layer: Attn2Layer
    heads: int
    query: torch.Tensor | None = None


PrecomputedKV = dict[tuple[int, torch.device, torch.dtype], _LayerCache]
"""(layer, device, dtype) → that layer's face keys/values; reusable by patches that share the
adapter, the tokens and the scale (the batches of one job); the UNet's own weights are not in them."""


def _out_projection(attn: nn.Module) -> nn.Module:
    """The linear part of the layer's ``to_out`` (``Sequential(Linear, Dropout)`` in sgm)."""
    to_out = attn.to_out
    return to_out[0] if isinstance(to_out, (nn.Sequential, nn.ModuleList)) else to_out


def region_probs(
    scores: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype, *, heads_first: bool = False
) -> torch.Tensor:
    """Attention weights for k identities, each query confined to its region's tokens.

    ``scores`` ``[B, heads, S, k, 16]``: query·key scores against every identity's 16 keys;
    ``weights`` ``[1, S, 1, k, 1]``: how much each query takes from each identity (its region
    masks on the token grid). A softmax runs per 16-token block (float32); the result times
    the weights is written, in ``dtype`` and in one pass, straight into the layout that
    multiplies the values: ``[B, S, heads·16k]`` for stacked folded values, or with
    ``heads_first`` ``[B, heads, S, 16k]`` for per-head values.
    """
    batch, heads, seq, count, n = scores.shape
    probs = scores.softmax(dim=-1, dtype=torch.float32)
    if heads_first:
        out = torch.empty((batch, heads, seq, count, n), dtype=dtype, device=scores.device)
        torch.mul(probs, weights.transpose(1, 2), out=out)
        return out.view(batch, heads, seq, count * n)
    out = torch.empty((batch, seq, heads, count, n), dtype=dtype, device=scores.device)
    torch.mul(probs.transpose(1, 2), weights, out=out)
    return out.view(batch, seq, heads * count * n)


@dataclass(frozen=True)
class IPIdentity:
    """One person's face tokens and how they apply: weight and (optional) region.

    ``cond`` is ``[16, 2048]`` or ``[1, 16, 2048]`` (Resampler of the embedding); ``uncond``
    the same (Resampler of zeros, or of one noise draw), or ``[B, 16, 2048]``: one set per image
    of the batch, in batch order (negative noise drawn from each image's seed). ``mask`` is
    ``[H, W]`` in [0, 1] at any resolution with the output's aspect ratio; with several
    identities every one needs a mask, and they should not overlap
    (``instantid_ext.method.regions`` builds and checks them).
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    scale: float = 0.8
    mask: torch.Tensor | None = None


def _check_tokens(name: str, tokens: torch.Tensor, *, per_image: bool = False) -> None:
    """[16, 2048] or [1, 16, 2048]; with ``per_image`` also [B, 16, 2048]."""
    shape = tuple(tokens.shape)
    single = tokens.ndim == 2 or (tokens.ndim == 3 and (per_image or shape[0] == 1))
    if shape[-2:] != (NUM_FACE_TOKENS, TOKEN_DIM) or not single or shape[0] == 0:
        what = (
            "[16, 2048] face tokens (or [B, 16, 2048], one set per image)"
            if per_image
            else "[16, 2048] face tokens"
        )
        msg = f"{name} must be {what}, got {shape}."
        raise InvalidInputError(msg)


def _uncond_sets(identity: IPIdentity) -> int:
    return int(identity.uncond.shape[0]) if identity.uncond.ndim == 3 else 1


def _check_identities(identities: Sequence[IPIdentity]) -> None:
    count = len(identities)
    if not 1 <= count <= MAX_IDENTITIES:
        msg = f"InstantID takes 1 to {MAX_IDENTITIES} identities in one image, got {count}."
        raise InvalidInputError(msg)
    for i, identity in enumerate(identities):
        label = "" if count == 1 else f" of identity {i + 1}"
        _check_tokens(f"cond_tokens{label}", identity.cond)
        _check_tokens(f"uncond_tokens{label}", identity.uncond, per_image=True)
        if not math.isfinite(float(identity.scale)):
            msg = f"The ID weight{label} must be a finite number, got {identity.scale!r}."
            raise InvalidInputError(msg)
        if identity.mask is not None and identity.mask.ndim != 2:
            msg = f"The region mask{label} must be a 2-D [H, W] map, got shape {tuple(identity.mask.shape)}."
            raise InvalidInputError(msg)
    sets = {_uncond_sets(identity) for identity in identities} - {1}
    if len(sets) > 1:
        msg = f"The identities' uncond tokens are for batches of different sizes ({sorted(sets)})."
        raise InvalidInputError(msg)
    if count > 1:
        missing = [str(i + 1) for i, identity in enumerate(identities) if identity.mask is None]
        if missing:
            msg = f"With {count} identities each needs a region mask; identity {', '.join(missing)} has none."
            raise InvalidInputError(msg)
        shapes = {tuple(identity.mask.shape) for identity in identities}  # type: ignore[union-attr]
        if len(shapes) > 1:
            msg = (
                f"The region masks of the identities differ in size ({sorted(shapes)}); "
                "give them all one size."
            )
            raise InvalidInputError(msg)


def checked_identities(identities: Sequence[IPIdentity], start: float, end: float) -> list[IPIdentity]:
    """``identities`` as a list, refused with one sentence where they or the ID window do not fit."""
    identities = list(identities)
    _check_identities(identities)
    if not 0.0 <= start <= end <= 1.0:
        msg = f"The ID start/end must satisfy 0 ≤ start ≤ end ≤ 1, got {start}/{end}."
        raise InvalidInputError(msg)
    return identities


def token_sets(identities: Sequence[IPIdentity]) -> torch.Tensor:
    """``[n+1, 16·k, 2048]``: every identity's uncond tokens, one set per image (n = 1: one set
    for all), then their cond tokens (set n); the rows every host's patch picks from."""
    count = max(_uncond_sets(identity) for identity in identities)
    sets = [torch.cat([_uncond_of(identity, image) for identity in identities]) for image in range(count)]
    sets.append(torch.cat([identity.cond.reshape(-1, TOKEN_DIM) for identity in identities]))
    return torch.stack(sets)


def _uncond_of(identity: IPIdentity, image: int) -> torch.Tensor:
    """``[16, 2048]``: the identity's uncond tokens for ``image`` (its only set if it has one)."""
    uncond = identity.uncond
    if uncond.ndim == 2:
        return uncond
    return uncond[min(image, uncond.shape[0] - 1)]


class IPAttentionPatch(HookSet):
    """InstantID's face tokens wired into the 70 attn2 layers of an SDXL UNet.

    Use as a context manager or call :meth:`remove`; removal is idempotent. ``mask`` is an
    optional ``[H, W]`` map in [0, 1] (any resolution with the output's aspect ratio) that
    limits the face tokens to a region, as the reference's "enhance non-face region" does.
    ``start``/``end`` are fractions of sampling during which the face tokens are applied.
    ``precomputed`` lets consecutive patches of one job share the per-layer face keys/values
    (the caller owns it and clears it after the job).
    """

    def __init__(
        self,
        unet: nn.Module,
        adapter: IPAdapter,
        cond_tokens: torch.Tensor,
        uncond_tokens: torch.Tensor,
        scale: float = 0.8,
        start: float = 0.0,
        end: float = 1.0,
        mask: torch.Tensor | None = None,
        router: RowRouter | None = None,
        precomputed: PrecomputedKV | None = None,
    ) -> None:
        identity = IPIdentity(cond_tokens, uncond_tokens, scale, mask)
        self._setup(unet, adapter, [identity], start, end, router, precomputed)

    def _setup(
        self,
        unet: nn.Module,
        adapter: IPAdapter,
        identities: Sequence[IPIdentity],
        start: float,
        end: float,
        router: RowRouter | None,
        precomputed: PrecomputedKV | None,
    ) -> None:
        identities = checked_identities(identities, start, end)
        self.unet = unet
        self.adapter = adapter
        self.identities = tuple(identities)
        self.scale = float(identities[0].scale)
        """The first (for one person: the only) identity's weight."""
        self.start, self.end = float(start), float(end)
        self.router = router or RowRouter()
        masks = [identity.mask for identity in identities]
        self.mask = None if masks[0] is None else masks[0].detach().float()
        self._masks: torch.Tensor | None = None
        """``[k, H, W]`` float32 region masks, or None (one identity without a mask)."""
        if masks[0] is not None:
            self._masks = torch.stack([m.detach().float() for m in masks if m is not None])
        self._scales = [float(identity.scale) for identity in identities]
        self._enabled = any(s != 0.0 for s in self._scales)
        self._tokens = token_sets(identities)
        self._uncond_sets = self._tokens.shape[0] - 1
        """How many uncond token sets: 1 (shared by every uncond row), or one per image."""
        self._mask_cache: dict[tuple, torch.Tensor] = {}
        self._warned_no_query = False
        self._owns_kv = precomputed is None
        self._kv: PrecomputedKV = {} if precomputed is None else precomputed
        HookSet.__init__(self)
        layers = sdxl_attn2_layers(unet)
        for layer, to_k in zip(layers, adapter.to_k_ip, strict=True):
            if to_k.out_features != layer.module.to_k.out_features:
                msg = (
                    f"The adapter's IP layer {layer.key_id} is {to_k.out_features} wide but {layer.name} "
                    f"is {layer.module.to_k.out_features}; the adapter does not fit this UNet."
                )
                raise InvalidInputError(msg)
        self._layers = [_LayerHook(layer, int(layer.module.heads)) for layer in layers]
        self._install()

    # -- life cycle ---------------------------------------------------------------------
    def _install(self) -> None:
        self._handles.append(self.unet.register_forward_pre_hook(self.router.unet_pre_hook, with_kwargs=True))
        for hook in self._layers:
            attn = hook.layer.module
            self._handles.append(attn.to_q.register_forward_hook(self._capture_query(hook)))
            self._handles.append(_out_projection(attn).register_forward_pre_hook(self._add_ip_term(hook)))
        logger.info(
            "InstantID attention hooks installed on %d layers (%d identit%s)",
            len(self._layers),
            len(self.identities),
            "y" if len(self.identities) == 1 else "ies",
        )

    def remove(self) -> None:
        """Detach every hook and drop the cached tensors; safe to call more than once."""
        detached = self._detach()
        for hook in self._layers:
            hook.query = None
        if self._owns_kv:
            self._kv.clear()
        self._mask_cache.clear()
        if detached:
            logger.info("InstantID attention hooks removed")

    def __enter__(self) -> IPAttentionPatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def set_masks(self, masks: Sequence[torch.Tensor | None]) -> None:
        """Use other region masks, one per identity, from the next layer call on (e.g. the hires
        canvas's, whose aspect ratio may differ). All None: no mask (one identity only)."""
        if len(masks) != len(self.identities):
            msg = f"{len(self.identities)} identities but {len(masks)} region masks."
            raise InvalidInputError(msg)
        with self._lock:
            if all(mask is None for mask in masks) and len(masks) == 1:
                self.mask, self._masks = None, None
            else:
                stacked = torch.stack([mask.detach().float() for mask in masks if mask is not None])
                if stacked.shape[0] != len(masks):
                    msg = "With several identities every one needs a region mask."
                    raise InvalidInputError(msg)
                self.mask, self._masks = stacked[0], stacked
            self._mask_cache.clear()

    # -- per-step work ------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether the face tokens apply at the router's current sampling progress."""
        return self._enabled and self.start <= self.router.progress <= self.end

    def _capture_query(self, hook: _LayerHook):
        def capture(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            hook.query = output if self.active else None

        return capture

    def _add_ip_term(self, hook: _LayerHook):
        def add(module: nn.Module, args: tuple) -> tuple | None:
            query, hook.query = hook.query, None
            if not self.active or not args or not isinstance(args[0], torch.Tensor):
                return None
            hidden = args[0]
            if query is None or query.shape[:2] != hidden.shape[:2]:
                self._warn_no_query(hook)
                return None
            return (self._apply(hook, query, hidden), *args[1:])

        return add

    def _warn_no_query(self, hook: _LayerHook) -> None:
        if not self._warned_no_query:
            self._warned_no_query = True
            logger.warning(
                "%s computed its attention without calling to_q, so the face tokens skip it (and any "
                "other such layer); report which attention optimisation or extension is active.",
                hook.layer.name,
            )

    def _apply(self, hook: _LayerHook, query: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` (the text attention, ``[B, S, C]``, before ``to_out``) plus the IP term."""
        batch, seq, width = hidden.shape
        key = (hook.layer.ip_index, hidden.device, hidden.dtype)
        cache = self._kv.get(key)
        if cache is None:
            self._precompute(hidden.device, hidden.dtype)
            cache = self._kv[key]
        keys, values = self._select_rows(cache, batch)
        heads = hook.heads
        count = len(self._scales)
        # [B, S, heads*d] -> [B, heads, S, d] @ [B, heads, d, 16k] -> scores [B, heads, S, 16k]
        q = query.to(hidden.dtype).view(batch, seq, heads, width // heads).transpose(1, 2)
        scores = torch.matmul(q, keys)
        if count == 1:
            probs = scores.softmax(dim=-1, dtype=torch.float32).to(hidden.dtype)
            if self._masks is not None:
                probs = probs * self._token_mask(seq, hidden.device, hidden.dtype).view(1, 1, seq, 1)
        else:
            blocks = scores.view(batch, heads, seq, count, NUM_FACE_TOKENS)
            weights = self._token_mask(seq, hidden.device, hidden.dtype)
            probs = region_probs(blocks, weights, hidden.dtype, heads_first=True)
        face = torch.matmul(probs, values)  # [B, heads, S, 16k] @ [B, heads, 16k, d] -> [B, heads, S, d]
        return hidden + face.transpose(1, 2).reshape(batch, seq, width)

    def _select_rows(self, cache: _LayerCache, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        router = self.router
        flags = router.flags
        sets = self._uncond_sets
        if sets > 1 and flags is not None and flags.shape[0] == batch and router.uniform != COND:
            # One uncond set per image: each uncond row takes its own image's keys/values.
            slots = router.slots(sets, cache.keys.device)
            return cache.keys.index_select(0, slots), cache.values.index_select(0, slots)
        if router.uniform is not None or flags is None or flags.shape[0] != batch:
            kind = COND if flags is None or flags.shape[0] != batch else router.uniform
            kind = sets if kind == COND else kind  # the cond set comes after the uncond sets
            return (
                cache.keys[kind].expand(batch, -1, -1, -1),
                cache.values[kind].expand(batch, -1, -1, -1),
            )
        return cache.keys.index_select(0, flags), cache.values.index_select(0, flags)

    @torch.no_grad()
    def _precompute(self, device: torch.device, dtype: torch.dtype) -> None:
        """Face keys and scaled values of every layer for this generation (float32 math)."""
        with self._lock:
            tokens = self._tokens.to(device=device, dtype=torch.float32)  # [n+1, 16·k, 2048]
            for hook, to_k, to_v in zip(
                self._layers, self.adapter.to_k_ip, self.adapter.to_v_ip, strict=True
            ):
                keys, vals = scaled_face_kv(
                    tokens,
                    to_k.weight.to(device=device, dtype=torch.float32),
                    to_v.weight.to(device=device, dtype=torch.float32),
                    hook.heads,
                    self._scales,
                )
                self._kv[(hook.layer.ip_index, device, dtype)] = _LayerCache(
                    keys=keys.to(dtype).contiguous(), values=vals.to(dtype).contiguous()
                )

    def _token_mask(self, seq: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The region masks resized (nearest) to this layer's token grid.

        ``[1, S, 1]`` for one identity; ``[1, S, 1, k, 1]`` for k identities (one region per
        16-block of :func:`region_probs`).
        """
        key = (seq, self.router.latent_size, device, dtype)
        cached = self._mask_cache.get(key)
        if cached is not None:
            return cached
        assert self._masks is not None
        cached = region_token_mask(self._masks, seq, self.router.latent_size).to(device=device, dtype=dtype)
        self._mask_cache[key] = cached
        return cached


class MultiIPAttentionPatch(IPAttentionPatch):
    """Several people in one image: each identity's face tokens only inside its region.

    In every attn2 layer a query inside region r attends to identity r's 16 tokens alone
    (softmax over those 16), scaled by r's weight; queries outside every region get no face
    term, only the prompt. Regions are each identity's ``mask`` (required when there are
    several; non-overlapping). ``start``/``end``, ``router`` and ``precomputed`` are as for
    :class:`IPAttentionPatch`; one identity behaves exactly like it.
    """

    def __init__(
        self,
        unet: nn.Module,
        adapter: IPAdapter,
        identities: Sequence[IPIdentity],
        start: float = 0.0,
        end: float = 1.0,
        router: RowRouter | None = None,
        precomputed: PrecomputedKV | None = None,
    ) -> None:
        self._setup(unet, adapter, identities, start, end, router, precomputed)


def scaled_face_kv(
    tokens: torch.Tensor, to_k: torch.Tensor, to_v: torch.Tensor, heads: int, scales: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's face keys and values for the token sets ``tokens`` ``[n, 16·k, C]``:
    ``K_ipᵀ/√d`` ``[n, heads, d, 16·k]`` and ``scale · V_ip`` ``[n, heads, 16·k, d]``, identity r's
    16 values scaled by ``scales[r]``. Precomputed once per generation, so a step only scores
    its queries against them (shared by every host's attention patch)."""
    n_sets, n_tokens = tokens.shape[0], tokens.shape[1]
    scale: float | torch.Tensor = scales[0]
    if len(scales) > 1:  # scale_r for each of identity r's 16 tokens
        per_token = torch.tensor(list(scales), device=tokens.device).repeat_interleave(NUM_FACE_TOKENS)
        scale = per_token.view(1, 1, n_tokens, 1)
    keys = F.linear(tokens, to_k)
    vals = F.linear(tokens, to_v)
    d = keys.shape[-1] // heads
    keys = keys.view(n_sets, n_tokens, heads, d).permute(0, 2, 3, 1) / math.sqrt(d)
    vals = vals.view(n_sets, n_tokens, heads, d).transpose(1, 2) * scale
    return keys, vals


def region_token_mask(masks: torch.Tensor, seq: int, latent: tuple[int, int] | None) -> torch.Tensor:
    """The region masks ``[k, H, W]`` resized (nearest) to a layer's grid of ``seq`` tokens:
    ``[1, S, 1]`` for one identity, ``[1, S, 1, k, 1]`` for k (one region per 16-block of
    :func:`region_probs`)."""
    count = masks.shape[0]
    grid = token_grid(seq, latent, tuple(masks.shape[-2:]))
    small = F.interpolate(masks[None], size=grid, mode="nearest")  # [1, k, h, w]
    if count == 1:
        return small.reshape(1, seq, 1)
    return small.reshape(count, seq).t().reshape(1, seq, 1, count, 1)


def token_grid(seq: int, latent: tuple[int, int] | None, mask_hw: tuple[int, ...]) -> tuple[int, int]:
    """(h, w) of a layer's token grid: the latent halved (ceil, like the UNet's stride-2
    convolutions) until it holds ``seq`` tokens; from the mask's aspect if the latent is unknown.

    Shared with the IdentityNet region hooks (same encoder geometry)."""
    if latent is not None:
        h, w = latent
        for _ in range(5):
            if h * w == seq:
                return h, w
            h, w = (h + 1) // 2, (w + 1) // 2
    ratio = math.sqrt(mask_hw[0] * mask_hw[1] / seq)
    h, w = round(mask_hw[0] / ratio), round(mask_hw[1] / ratio)
    if h * w != seq:
        msg = f"Cannot fit the face mask ({mask_hw}) onto a grid of {seq} tokens."
        raise InvalidInputError(msg)
    return h, w
