"""IdentityNet as a ControlNet of a Forge-family host, with the face tokens as its own context.

The host runs a chain of ControlNets per UNet call (``get_control(x, t, cond, batched_number)``
on the newest, which asks its ``previous_controlnet`` first) and gives every one of them the
same ``cond``, whose ``c_crossattn`` is the prompt. IdentityNet's context is the face tokens,
so the node made here (a subclass of the host's own ``ControlNet`` class, made by
:func:`identitynet_node`) hands the earlier nodes the host's ``cond`` untouched, then runs
the host's own ``get_control`` on a copy of ``cond`` whose context is the face tokens, row by
row: the cond tokens for the cond chunks of ``cond_or_uncond``, the uncond tokens (one set
per image with negative noise) for the uncond chunks. Other ControlNets of the user keep
their text context, whatever their order; no unit order or file name matters.

``get_control`` takes four arguments in Forge Classic and Forge, five in reForge (the
transformer options); the override accepts both. The host copies the node when it attaches it
(``apply_controlnet_advanced``); the copy stays a face-context node.

The face mask of "Face region only" is applied here, to IdentityNet's own residuals only, as
Forge Classic's ``compute_controlnet_weighting`` does it (the mask resized bilinearly to each
residual): reForge's ControlNet never applies ``advanced_mask_weighting``, so the host's mask
cannot be relied on. The node then adds the earlier nodes' control as the host's
``control_merge`` does.

A node belongs to one sampling pass of one job (``FaceContext.live``): a host that keeps the
patched UNet from the first pass to the hires pass (Forge Classic does without a LoRA) would
otherwise run the first pass's node again; a node no longer live passes the earlier nodes'
result through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..method.attn2_replace import context_rows


@dataclass(frozen=True)
class FaceContext:
    """IdentityNet's context for one sampling pass: ``cond`` ``(1, T, C)``, ``uncond`` ``(1, T, C)``
    or ``(B, T, C)`` (one set per image), and whether the pass is still the current one."""

    cond: torch.Tensor
    uncond: torch.Tensor
    live: Callable[[], bool] = lambda: True

    def rows(self, chunks: Sequence[int], batch: int, like: torch.Tensor) -> torch.Tensor:
        """The ``[batch, T, C]`` context for a UNet call with these ``cond_or_uncond`` chunks."""
        rows = context_rows(self.cond, self.uncond, chunks, batch)
        return rows.to(device=like.device, dtype=like.dtype)


def masked(control: Any, mask: torch.Tensor | None) -> Any:
    """``control`` (``{"input": [...], "middle": [...], "output": [...]}``) with every residual
    times ``mask`` ``(1, 1, H, W)`` resized bilinearly to its size."""
    if mask is None or control is None:
        return control
    interpolate = torch.nn.functional.interpolate
    for signals in control.values():
        for i, signal in enumerate(signals):
            if isinstance(signal, torch.Tensor):
                weight = interpolate(mask.to(signal), size=signal.shape[-2:], mode="bilinear")
                signals[i] = signal * weight
    return control


def merged(own: Any, earlier: Any) -> Any:
    """``own`` plus the earlier nodes' control, layer by layer, as the host's ``control_merge``
    adds them (a layer only one side has is taken as it is)."""
    if own is None or earlier is None:
        return earlier if own is None else own
    for key, theirs in earlier.items():
        mine = own.setdefault(key, [])
        for i, prev in enumerate(theirs):
            if i >= len(mine):
                mine.append(prev)
            elif prev is not None:
                mine[i] = prev if mine[i] is None else _add(mine[i], prev)
    return own


def _add(mine: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    return prev + mine if mine.shape[0] < prev.shape[0] else mine + prev


_NODE_CLASSES: dict[type, type] = {}


def _node_class(base: type) -> type:
    """The face-context subclass of the host's ControlNet class ``base`` (made once per class)."""
    cls = _NODE_CLASSES.get(base)
    if cls is not None:
        return cls

    class IdentityNetControl(base):  # type: ignore[misc, valid-type]
        """The host's ControlNet whose own pass sees the face tokens as its context."""

        instantid_face: FaceContext
        instantid_mask: torch.Tensor | None

        def copy(self) -> Any:
            twin = base.copy(self)
            twin.__class__ = type(self)
            twin.instantid_face = self.instantid_face
            twin.instantid_mask = self.instantid_mask
            return twin

        def get_control(self, x_noisy: Any, t: Any, cond: Any, batched_number: Any, *rest: Any) -> Any:
            options = rest[0] if rest else getattr(self, "transformer_options", None) or {}
            earlier = self.previous_controlnet
            control_prev = None
            if earlier is not None:
                control_prev = earlier.get_control(x_noisy, t, cond, batched_number, *rest)
            face = self.instantid_face
            if not face.live():
                return control_prev
            own = dict(cond)
            own.pop("crossattn_controlnet", None)  # reForge reads this before c_crossattn
            chunks = options.get("cond_or_uncond") or ()
            own["c_crossattn"] = face.rows(chunks, int(x_noisy.shape[0]), cond["c_crossattn"])
            self.previous_controlnet = None  # our own residuals first: the mask is for them only
            try:
                control = base.get_control(self, x_noisy, t, own, batched_number, *rest)
            finally:
                self.previous_controlnet = earlier
            return merged(masked(control, self.instantid_mask), control_prev)

    IdentityNetControl.__qualname__ = IdentityNetControl.__name__ = f"IdentityNet{base.__name__}"
    _NODE_CLASSES[base] = IdentityNetControl
    return IdentityNetControl


def identitynet_node(loaded: Any, face: FaceContext, mask: torch.Tensor | None = None) -> Any:
    """A face-context copy of the host's loaded ControlNet ``loaded``, its residuals times
    ``mask`` ``(1, 1, H, W)`` if given (the loaded one is kept as it is: the host's cache may
    share it)."""
    node = loaded.copy()
    node.__class__ = _node_class(type(loaded))
    node.instantid_face = face
    node.instantid_mask = mask
    return node
