"""A small stand-in for the WebUI's sgm SDXL ``UNetModel``.

It keeps what our hooks rely on: the module paths (``input_blocks.N.1.transformer_blocks.J.attn2``,
``middle_block.1``, ``output_blocks.N.1``), the block counts of SDXL (2 and 10 transformer
blocks per level, 70 attn2 layers), ``CrossAttention`` with ``heads``, ``to_q/to_k/to_v``
without bias and ``to_out = [Linear, Dropout]``, the call signatures
(``attn2(x, context=context)``, ``module(h, emb, context)``, ``forward(x, timesteps, context, y)``)
and the skip connections. Channels are small so it runs in milliseconds on a CPU.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x, context=None, mask=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        h = self.heads
        q = self.to_q(x)
        context = x if context is None else context
        k, v = self.to_k(context), self.to_v(context)
        b = q.shape[0]
        q, k, v = (t.view(b, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, -1, h * out.shape[-1])
        return self.to_out(out)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, None, n_heads, d_head)
        self.ff = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        x = self.attn1(self.norm1(x), context=None, additional_tokens=additional_tokens) + x
        x = self.attn2(self.norm2(x), context=context, additional_tokens=additional_tokens) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, n_heads: int, d_head: int, depth: int, context_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, n_heads, d_head, context_dim) for _ in range(depth)
        )
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x, context=None):
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context=context)
        x = self.proj_out(x)
        return x.reshape(b, h, w, c).permute(0, 3, 1, 2) + x_in


class ResBlock(nn.Module):
    def __init__(self, channels: int, out_channels: int, emb_dim: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(8, out_channels), nn.SiLU(), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = (
            nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb, context=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


def skip_channels(widths: tuple[int, int, int]) -> list[int]:
    """The channels of the nine input blocks' outputs: the skip connections (and cldm's zero convs)."""
    c0, c1, c2 = widths
    return [c0, c0, c0, c0, c1, c1, c1, c2, c2]


class UNetModel(nn.Module):
    """SDXL's block structure with small channels (``widths`` per level, 64-wide heads by default)."""

    def __init__(
        self,
        widths: tuple[int, int, int] = (32, 32, 64),
        d_head: int = 16,
        context_dim: int = 2048,
        adm_in_channels: int = 2816,
        depths: tuple[int, int] = (2, 10),
    ) -> None:
        super().__init__()
        self.widths = widths
        c0, c1, c2 = widths
        emb_dim = c0 * 4
        self.model_channels = c0
        self.time_embed = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Sequential(nn.Sequential(nn.Linear(adm_in_channels, emb_dim)))

        def st(ch: int, depth: int) -> SpatialTransformer:
            return SpatialTransformer(ch, ch // d_head, d_head, depth, context_dim)

        T = TimestepEmbedSequential
        self.input_blocks = nn.ModuleList(
            [
                T(nn.Conv2d(4, c0, 3, padding=1)),
                T(ResBlock(c0, c0, emb_dim)),
                T(ResBlock(c0, c0, emb_dim)),
                T(Downsample(c0)),
                T(ResBlock(c0, c1, emb_dim), st(c1, depths[0])),
                T(ResBlock(c1, c1, emb_dim), st(c1, depths[0])),
                T(Downsample(c1)),
                T(ResBlock(c1, c2, emb_dim), st(c2, depths[1])),
                T(ResBlock(c2, c2, emb_dim), st(c2, depths[1])),
            ]
        )
        self.middle_block = T(ResBlock(c2, c2, emb_dim), st(c2, depths[1]), ResBlock(c2, c2, emb_dim))
        skips = skip_channels(widths)
        blocks = []
        ch = c2
        for level, (out_ch, depth) in enumerate(((c2, depths[1]), (c1, depths[0]), (c0, 0))):
            for i in range(3):
                layers: list[nn.Module] = [ResBlock(ch + skips.pop(), out_ch, emb_dim)]
                ch = out_ch
                if depth:
                    layers.append(st(ch, depth))
                if i == 2 and level < 2:
                    layers.append(Upsample(ch))
                blocks.append(T(*layers))
        self.output_blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(nn.GroupNorm(8, c0), nn.SiLU(), nn.Conv2d(c0, 4, 3, padding=1))

    def timestep_embedding(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.model_channels // 2
        freqs = torch.exp(-torch.arange(half, dtype=torch.float32) * (9.210340371976184 / half))
        args = timesteps[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        emb = self.time_embed(self.timestep_embedding(timesteps).to(x.dtype))
        emb = emb + self.label_emb(y)
        hs = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)
            h = module(h, emb, context)
        return self.out(h)


def make_unet(seed: int = 0, **kwargs) -> UNetModel:
    torch.manual_seed(seed)
    return UNetModel(**kwargs).eval().requires_grad_(False)


def unet_inputs(batch: int, latent: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random inputs for one call of the stand-in on a ``latent``×``latent`` latent."""
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, 4, latent, latent, generator=g),
        "timesteps": torch.full((batch,), 500.0),
        "context": torch.randn(batch, 77, 2048, generator=g),
        "y": torch.randn(batch, 2816, generator=g),
    }


@contextlib.contextmanager
def controlnet_marked(unet: nn.Module, inputs: dict, marks: list[float]) -> Iterator[dict]:
    """``inputs`` with ControlNet's cond/uncond marker token in front of each row's context,
    and ``unet`` stripping it again before its own forward, as ControlNet's hooked forward does."""
    marked = dict(inputs)
    rows = torch.tensor(marks)[:, None, None].expand(len(marks), 1, inputs["context"].shape[-1])
    marked["context"] = torch.cat([rows, inputs["context"]], dim=1)
    original_forward = unet.forward

    def strip_marker(self, x, timesteps=None, context=None, y=None, **kwargs):
        return original_forward(x, timesteps=timesteps, context=context[:, 1:], y=y)

    unet.forward = types.MethodType(strip_marker, unet)
    try:
        yield marked
    finally:
        del unet.forward
