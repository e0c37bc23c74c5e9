"""IdentityNet for several people in ONE pass: region-bound attention and residual strengths.

In the WebUI, IdentityNet runs inside sd-webui-controlnet as a cldm ``ControlNet`` (the SDXL
UNet's encoder half built from sgm blocks, plus a hint encoder and zero convolutions),
called as ``control_model(x=…, hint=…, timesteps=…, context=…, y=…)`` and returning ten
residuals (nine skips and the middle block). Its cross-attention context is the face tokens
instead of the prompt. With k identities the context is their tokens side by side,
``[B, 16·k, 2048]`` (cond rows: the Resampler of each embedding; uncond rows: the Resampler of
zeros, k times), and the hint holds every person's keypoints (:func:`multi_identity_hint`).

:class:`RegionalIdentityNet` then makes that single pass behave like k region-bound ones:

- every attn2 layer (found by structure: SpatialTransformer → ``transformer_blocks`` →
  ``attn2``; SDXL's IdentityNet has :data:`SDXL_IDENTITYNET_ATTN2` = 34: 2 + 2 at
  ``input_blocks.4/5``, 10 + 10 at ``input_blocks.7/8``, 10 in the middle block) lets a query
  inside region r attend only to identity r's 16 tokens (softmax over that block). A query
  outside every region attends to each identity's block with weight 1/k, i.e. it takes the
  mean of the k per-identity outputs: its residuals are multiplied by 0 below anyway, and a
  convex mix keeps the features there in the range one identity produces;
- the ten residuals are multiplied by ``Σ_r strength_r · mask_r``, bilinearly resized to each
  residual's size, as the reference multiplies IdentityNet's residuals by its face mask.

Only the face tokens are confined: IdentityNet's self-attention and convolutions still mix
features across regions, as in any single pass over one image (k separate passes would keep
each region's residuals free of the other identities, at k times the cost).

How the hooks stay cheap: a forward pre-hook hands the layer's own forward a one-token
context (so its attention is trivial whatever attention implementation the WebUI installed),
the query is captured from ``to_q``'s call, and a pre-hook on ``to_out`` replaces the
attention result it is about to project with the region-bound one: one matmul for the scores
against all 16·k keys, a softmax per 16-block times the region weights, one matmul with the
values. ``to_out`` still runs once. Should an attention implementation call ``to_out`` in
pieces, the layer's forward hook computes the result instead (``to_out`` then runs twice).
With one identity no attention hook is needed.

The residual map multiplies what ControlNet later scales by the unit's weight: give the unit
weight 1 and the per-identity strengths here (or strengths relative to the unit weight).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import IncompatibleModelError, InvalidInputError
from .attention import MAX_IDENTITIES, region_probs, token_grid
from .hooks import HookSet
from .ip_adapter import NUM_FACE_TOKENS
from .keypoints import draw_kps

logger = logging.getLogger(__name__)

SDXL_IDENTITYNET_ATTN2 = 34
"""attn2 layers of SDXL's IdentityNet (transformer depths 2, 2, 10, 10 in the encoder, 10 in the middle)."""

MaskLike = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class ControlAttn2:
    """One cross-attention layer of a ControlNet."""

    name: str
    module: nn.Module
    heads: int


def controlnet_attn2_layers(model: nn.Module) -> list[ControlAttn2]:
    """The attn2 layers of a ControlNet, in module order, found by structure.

    Every module with a ``transformer_blocks`` list (sgm/ldm ``SpatialTransformer``) is
    searched for blocks with an ``attn2`` that has ``to_q``/``to_k``/``to_v``/``to_out`` and
    ``heads``. Raises :class:`IncompatibleModelError` if there is none.
    """
    layers: list[ControlAttn2] = []
    for name, module in model.named_modules():
        blocks = getattr(module, "transformer_blocks", None)
        if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            continue
        for j, block in enumerate(blocks):
            attn = getattr(block, "attn2", None)
            if attn is None or not all(hasattr(attn, a) for a in ("to_q", "to_k", "to_v", "to_out", "heads")):
                continue
            prefix = f"{name}." if name else ""
            layers.append(ControlAttn2(f"{prefix}transformer_blocks.{j}.attn2", attn, int(attn.heads)))
    if not layers:
        msg = (
            f"The IdentityNet model ({type(model).__name__}) has no cross-attention layers "
            "(SpatialTransformer → transformer_blocks → attn2); it is not an SDXL ControlNet."
        )
        raise IncompatibleModelError(msg)
    return layers


def _as_masks(masks: Sequence[MaskLike] | torch.Tensor) -> torch.Tensor:
    """``[k, H, W]`` float32 on the CPU from a list of H×W masks (numpy or torch) or a tensor."""
    if isinstance(masks, torch.Tensor):
        stacked = masks.detach().float().cpu()
    else:
        if len(masks) == 0:
            msg = "No region masks were given; IdentityNet needs one per identity."
            raise InvalidInputError(msg)
        tensors = [torch.as_tensor(m if isinstance(m, torch.Tensor) else np.asarray(m)) for m in masks]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) != 1:
            msg = f"The region masks differ in size ({sorted(shapes)}); give them all the output size."
            raise InvalidInputError(msg)
        stacked = torch.stack(tensors).detach().float().cpu()
    if stacked.ndim != 3:
        msg = f"Region masks must be H×W maps, one per identity; got a stack of shape {tuple(stacked.shape)}."
        raise InvalidInputError(msg)
    if not 1 <= stacked.shape[0] <= MAX_IDENTITIES:
        msg = f"IdentityNet takes 1 to {MAX_IDENTITIES} identities in one pass, got {stacked.shape[0]}."
        raise InvalidInputError(msg)
    return stacked


def region_strength_map(masks: Sequence[MaskLike] | torch.Tensor, strengths: Sequence[float]) -> torch.Tensor:
    """``Σ_r strength_r · mask_r`` as an ``[H, W]`` float32 map (the residual multiplier)."""
    stacked = _as_masks(masks)
    if len(strengths) != stacked.shape[0]:
        msg = (
            f"Got {len(strengths)} IdentityNet strengths for {stacked.shape[0]} regions; "
            "give one per identity."
        )
        raise InvalidInputError(msg)
    values = [float(s) for s in strengths]
    if not all(map(math.isfinite, values)):
        msg = f"IdentityNet strengths must be finite numbers, got {list(strengths)}."
        raise InvalidInputError(msg)
    weights = torch.tensor(values, dtype=torch.float32).view(-1, 1, 1)
    return (stacked * weights).sum(dim=0)


class ResidualScaler:
    """Multiplies ControlNet residuals by a map resized (bilinear) to each residual's size."""

    def __init__(self, strength_map: torch.Tensor) -> None:
        if strength_map.ndim != 2:
            msg = f"The IdentityNet strength map must be H×W, got shape {tuple(strength_map.shape)}."
            raise InvalidInputError(msg)
        self.map = strength_map.detach().float()[None, None]
        self._resized: dict[tuple, torch.Tensor] = {}

    def scale(self, residual: Any) -> Any:
        if not isinstance(residual, torch.Tensor) or residual.ndim != 4:
            return residual
        key = (tuple(residual.shape[-2:]), residual.device, residual.dtype)
        factor = self._resized.get(key)
        if factor is None:
            small = F.interpolate(self.map, size=residual.shape[-2:], mode="bilinear", align_corners=False)
            factor = self._resized[key] = small.to(device=residual.device, dtype=residual.dtype)
        return residual * factor

    def __call__(self, residuals: Any) -> Any:
        if isinstance(residuals, (list, tuple)):
            return type(residuals)(self.scale(r) for r in residuals)
        return self.scale(residuals)


def multi_identity_hint(size: tuple[int, int], kps_list: Sequence[Any]) -> np.ndarray:
    """The IdentityNet hint for several people: each face's keypoints drawn as IdentityNet was
    trained (:func:`keypoints.draw_kps`, already in output pixels), merged by the per-pixel
    maximum; RGB uint8 H×W×3. With one face this is exactly ``draw_kps``. Faces sit in
    disjoint regions, so drawings meet only where a 10 px circle reaches a neighbour."""
    if len(kps_list) == 0:
        width, height = size
        return np.zeros((height, width, 3), dtype=np.uint8)
    hint = np.asarray(draw_kps(size, kps_list[0]))
    for kps in kps_list[1:]:
        hint = np.maximum(hint, np.asarray(draw_kps(size, kps)))
    return hint


def identity_context(tokens: Sequence[torch.Tensor]) -> torch.Tensor:
    """The identities' ``[1, 16, 2048]`` (or ``[16, 2048]``) tokens side by side: ``[1, 16·k, 2048]``.

    Use it for the cond and the uncond half alike (uncond: the Resampler of zeros, k times),
    in the same order as the region masks."""
    if not 1 <= len(tokens) <= MAX_IDENTITIES:
        msg = f"IdentityNet takes 1 to {MAX_IDENTITIES} identities in one pass, got {len(tokens)}."
        raise InvalidInputError(msg)
    flat = [t.reshape(-1, t.shape[-1]) for t in tokens]
    if any(f.shape[0] != NUM_FACE_TOKENS for f in flat):
        msg = f"Each identity needs 16 face tokens, got {[f.shape[0] for f in flat]}."
        raise InvalidInputError(msg)
    return torch.cat(flat)[None]


@dataclass
class _AttnState:
    layer: ControlAttn2
    context: torch.Tensor | None = None
    query: torch.Tensor | None = None


class RegionalIdentityNet(HookSet):
    """Removable hooks making one IdentityNet pass serve k identities in k regions.

    ``control_model`` is the module ControlNet calls (any wrapper works: layers are found
    inside it). ``masks``: k region masks (H×W in [0, 1] at the output size, disjoint), in
    the order of the identities' token blocks in the context. ``strengths``: IdentityNet
    strength per identity (None: no residual scaling). ``attention=False`` leaves attention
    alone. Use as a context manager or call :meth:`remove` (idempotent).
    """

    def __init__(
        self,
        control_model: nn.Module,
        masks: Sequence[MaskLike] | torch.Tensor,
        strengths: Sequence[float] | None = None,
        *,
        attention: bool = True,
    ) -> None:
        self.control_model = control_model
        self.masks = _as_masks(masks)
        self.count = int(self.masks.shape[0])
        self.layers = controlnet_attn2_layers(control_model)
        self.scaler = (
            None if strengths is None else ResidualScaler(region_strength_map(self.masks, strengths))
        )
        self.latent_size: tuple[int, int] | None = None
        self.expected = NUM_FACE_TOKENS * self.count
        """Context length of our calls: the people's tokens side by side."""
        self.call_is_ours = True
        self._weights_cache: dict[tuple, torch.Tensor] = {}
        HookSet.__init__(self)
        self._states = [_AttnState(layer) for layer in self.layers]
        self._install(attention and self.count > 1)

    # -- life cycle ---------------------------------------------------------------------
    def _install(self, attention: bool) -> None:
        model = self.control_model
        self._handles.append(model.register_forward_pre_hook(self._capture_latent, with_kwargs=True))
        if self.scaler is not None:
            self._handles.append(model.register_forward_hook(self._scale_residuals))
        if attention:
            for state in self._states:
                attn = state.layer.module
                self._handles.append(
                    attn.register_forward_pre_hook(self._swap_context(state), with_kwargs=True)
                )
                self._handles.append(attn.to_q.register_forward_hook(self._capture_query(state)))
                self._handles.append(attn.to_out.register_forward_pre_hook(self._replace_attention(state)))
                self._handles.append(attn.register_forward_hook(self._fallback(state)))
        logger.info(
            "IdentityNet region hooks: %d identit%s, %d attn2 layers%s",
            self.count,
            "y" if self.count == 1 else "ies",
            len(self.layers),
            "" if attention else " (attention unchanged)",
        )

    def remove(self) -> None:
        """Detach every hook and drop cached tensors; safe to call more than once."""
        self._detach()
        for state in self._states:
            state.context = state.query = None
        self._weights_cache.clear()

    def __enter__(self) -> RegionalIdentityNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- hooks ----------------------------------------------------------------------------
    def _ours(self, context: Any) -> bool:
        """Whether a call carries our people's tokens: ControlNet may run the same network for a
        user's own unit (with the text as context), and that call must pass untouched."""
        return isinstance(context, torch.Tensor) and context.ndim == 3 and context.shape[1] == self.expected

    def _capture_latent(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = kwargs.get("x", args[0] if args else None)
        self.call_is_ours = self._ours(kwargs.get("context", args[3] if len(args) > 3 else None))
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            self.latent_size = (int(x.shape[-2]), int(x.shape[-1]))

    def _scale_residuals(self, module: nn.Module, args: tuple, output: Any) -> Any:
        assert self.scaler is not None
        return self.scaler(output) if self.call_is_ours else None

    def _swap_context(self, state: _AttnState):
        def pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            in_kwargs = "context" in kwargs
            context = kwargs["context"] if in_kwargs else (args[1] if len(args) > 1 else None)
            if context is None:
                state.context = None
                return None
            if not self._ours(context):
                state.context = None  # another unit's call on the shared network: untouched
                return None
            state.context = context
            # The layer's own attention runs on one token (cheap); our hook replaces its result.
            short = context[:, :1]
            if in_kwargs:
                return args, {**kwargs, "context": short}
            return (args[0], short, *args[2:]), kwargs

        return pre

    def _capture_query(self, state: _AttnState):
        def capture(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            state.query = output if state.context is not None else None

        return capture

    def _replace_attention(self, state: _AttnState):
        def pre(module: nn.Module, args: tuple) -> tuple | None:
            query, context = state.query, state.context
            if query is None or context is None or not args or args[0].shape != query.shape:
                return None  # not the single whole-batch call we expect: the fallback handles it
            state.context = state.query = None
            return (self._attend(state.layer, query, context, args[0].dtype), *args[1:])

        return pre

    def _fallback(self, state: _AttnState):
        def hook(module: nn.Module, args: tuple, output: Any) -> torch.Tensor | None:
            context, state.context = state.context, None
            query, state.query = state.query, None
            if context is None or not isinstance(output, torch.Tensor):
                return None  # handled in to_out (or nothing to do)
            x = args[0]
            if query is None or query.shape[:2] != x.shape[:2]:
                query = module.to_q(x)
            return module.to_out(self._attend(state.layer, query, context, output.dtype))

        return hook

    def _attend(
        self, layer: ControlAttn2, query: torch.Tensor, context: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """Region-bound attention before ``to_out``: ``[B, S, heads·d]``."""
        attn = layer.module
        batch, seq, inner = query.shape
        heads, count = layer.heads, self.count
        d = inner // heads
        n_tokens = context.shape[1]
        ctx = context.to(dtype)
        keys = attn.to_k(ctx).view(batch, n_tokens, heads, d).permute(0, 2, 3, 1) * (1.0 / math.sqrt(d))
        vals = attn.to_v(ctx).view(batch, n_tokens, heads, d).transpose(1, 2)  # [B, heads, 16k, d]
        q = query.to(dtype).view(batch, seq, heads, d).transpose(1, 2)
        scores = torch.matmul(q, keys).view(batch, heads, seq, count, NUM_FACE_TOKENS)
        weights = self._token_weights(seq, query.device, dtype)
        probs = region_probs(scores, weights, dtype, heads_first=True)  # [B, heads, S, 16k]
        return torch.matmul(probs, vals).transpose(1, 2).reshape(batch, seq, inner)

    def _token_weights(self, seq: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``[1, S, 1, k, 1]``: per query, the weight of each identity's block.

        Inside region r: 1 for r, 0 for the others; outside every region: 1/k each (masks
        are nearest-resized to the token grid; soft masks mix the two).
        """
        key = (seq, self.latent_size, device, dtype)
        cached = self._weights_cache.get(key)
        if cached is None:
            grid = token_grid(seq, self.latent_size, tuple(self.masks.shape[-2:]))
            small = F.interpolate(self.masks[None], size=grid, mode="nearest")[0].reshape(self.count, seq)
            rest = (1.0 - small.sum(dim=0)).clamp(min=0.0) / self.count
            weights = (small + rest).t().reshape(1, seq, 1, self.count, 1)
            cached = self._weights_cache[key] = weights.to(device=device, dtype=dtype)
        return cached
