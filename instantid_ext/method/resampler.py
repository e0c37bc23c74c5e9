"""The Perceiver Resampler that turns a face embedding into InstantID's 16 face tokens.

A faithful port of the reference ``Resampler`` (InstantID's ``ip_adapter/resampler.py``,
itself modified from open_flamingo). Attribute names equal the checkpoint keys of
``ip-adapter.bin["image_proj"]`` so the weights load with ``strict=True`` and no renaming,
and the dimensions are read from the weights rather than assumed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import IncompatibleModelError

DIM_HEAD = 64
"""Head width of every InstantID/IP-Adapter Resampler (the head count is derived from it)."""


def feed_forward(dim: int, mult: float = 4) -> nn.Sequential:
    """LN → Linear(no bias) → GELU → Linear(no bias); keys ``0``, ``1``, ``3`` as in the checkpoint."""
    inner_dim = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner_dim, bias=False),
        nn.GELU(),
        nn.Linear(inner_dim, dim, bias=False),
    )


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    # [B, L, heads*d] -> [B, heads, L, d]
    batch, length, _ = x.shape
    return x.view(batch, length, heads, -1).transpose(1, 2)


class PerceiverAttention(nn.Module):
    """Latents attend to ``cat[inputs, latents]`` (the Flamingo perceiver block)."""

    def __init__(self, *, dim: int, dim_head: int = DIM_HEAD, heads: int = 8) -> None:
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner_dim = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x: [B, N, dim] image features; latents: [B, Q, dim] -> [B, Q, dim]."""
        x = self.norm1(x)
        latents = self.norm2(latents)
        batch, n_latents, _ = latents.shape

        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))  # [B, heads, L, d]

        # The reference scales q and k by d^-1/4 each (more stable in fp16 than d^-1/2 on
        # one side) and takes the softmax in float32.
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        out = weight @ v  # [B, heads, Q, d]
        out = out.permute(0, 2, 1, 3).reshape(batch, n_latents, -1)
        return self.to_out(out)


class Resampler(nn.Module):
    """Embedding ``[B, N, embedding_dim]`` → ``[B, num_queries, output_dim]`` tokens.

    InstantID uses ``Resampler(dim=1280, depth=4, dim_head=64, heads=20, num_queries=16,
    embedding_dim=512, output_dim=2048, ff_mult=4)``.
    """

    def __init__(
        self,
        dim: int = 1280,
        depth: int = 4,
        dim_head: int = DIM_HEAD,
        heads: int = 20,
        num_queries: int = 16,
        embedding_dim: int = 512,
        output_dim: int = 2048,
        ff_mult: float = 4,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.output_dim = output_dim
        self.num_queries = num_queries
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads), feed_forward(dim, ff_mult)]
            )
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, embedding_dim] (N embeddings per row) -> [B, num_queries, output_dim]."""
        latents = self.latents.repeat(x.size(0), 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        latents = self.proj_out(latents)
        return self.norm_out(latents)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> Resampler:
        """Size a Resampler from checkpoint shapes, then load the weights strictly."""
        try:
            _, num_queries, dim = state_dict["latents"].shape
            embedding_dim = state_dict["proj_in.weight"].shape[1]
            output_dim = state_dict["proj_out.weight"].shape[0]
            inner_dim = state_dict["layers.0.0.to_q.weight"].shape[0]
            ff_inner = state_dict["layers.0.1.1.weight"].shape[0]
        except (KeyError, ValueError, IndexError) as err:
            msg = (
                "The adapter's image projection is not a Perceiver Resampler (missing or misshapen "
                f"key: {err}). InstantID needs the ip-adapter.bin published with InstantID."
            )
            raise IncompatibleModelError(msg) from err
        depth = 1 + max(int(key.split(".")[1]) for key in state_dict if key.startswith("layers."))
        model = _construct_without_init(
            cls,
            dim=dim,
            depth=depth,
            dim_head=DIM_HEAD,
            heads=inner_dim // DIM_HEAD,
            num_queries=num_queries,
            embedding_dim=embedding_dim,
            output_dim=output_dim,
            ff_mult=ff_inner / dim,
        )
        try:
            _load_strict(model, state_dict)
        except RuntimeError as err:
            msg = f"The adapter's Resampler weights do not fit its own shapes: {err}"
            raise IncompatibleModelError(msg) from err
        return model.eval().requires_grad_(False)


def _supports_assign() -> bool:
    """``load_state_dict(assign=True)`` arrived in torch 2.1 (A1111 1.6 ships 2.0.1)."""
    import inspect

    return "assign" in inspect.signature(nn.Module.load_state_dict).parameters


def _construct_without_init(factory, **kwargs) -> nn.Module:  # type: ignore[no-untyped-def]
    """Build on the meta device when the weights will be assigned anyway (skips a random init)."""
    if _supports_assign():
        with torch.device("meta"):
            return factory(**kwargs)
    return factory(**kwargs)


def _load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load every key exactly; a meta-built module takes the tensors as they are."""
    on_meta = any(p.is_meta for p in module.parameters())
    if on_meta:
        module.load_state_dict(dict(state_dict), strict=True, assign=True)
    else:
        module.load_state_dict(dict(state_dict), strict=True)
