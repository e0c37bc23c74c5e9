"""A small stand-in for sd-webui-controlnet's cldm ``ControlNet`` as it is built for SDXL.

It is the sgm UNet stand-in's encoder half (``input_blocks`` and ``middle_block``, so the same
SpatialTransformer → ``transformer_blocks`` → ``attn2`` layers: 2 + 2 + 10 + 10 + 10 = 34),
plus cldm's hint encoder (eight 3×3 convolutions, three of stride 2, from the RGB hint to the
first block's channels), one 1×1 "zero" convolution per input block and one after the middle
block. ``forward(x, hint, timesteps, context, y)`` returns the ten residuals, as cldm does.
The 1×1 convolutions keep their random initialisation (trained ones are not zero either).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tests.fakes.sgm_unet import TimestepEmbedSequential, UNetModel, skip_channels


class ControlNet(nn.Module):
    def __init__(self, hint_channels: int = 3, **layout: Any) -> None:
        """``layout``: the UNet stand-in's arguments (``widths``, ``d_head``, ``context_dim``, ...)."""
        super().__init__()
        unet = UNetModel(**layout)
        c0, _, c2 = unet.widths
        self.model_channels = unet.model_channels
        self.time_embed = unet.time_embed
        self.label_emb = unet.label_emb
        self.input_blocks = unet.input_blocks
        self.middle_block = unet.middle_block

        def conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 3, padding=1, stride=stride)

        self.input_hint_block = TimestepEmbedSequential(
            conv(hint_channels, 16),
            nn.SiLU(),
            conv(16, 16),
            nn.SiLU(),
            conv(16, 32, 2),
            nn.SiLU(),
            conv(32, 32),
            nn.SiLU(),
            conv(32, 96, 2),
            nn.SiLU(),
            conv(96, 96),
            nn.SiLU(),
            conv(96, 256, 2),
            nn.SiLU(),
            conv(256, c0),
        )
        self.zero_convs = nn.ModuleList(
            TimestepEmbedSequential(nn.Conv2d(ch, ch, 1)) for ch in skip_channels(unet.widths)
        )
        self.middle_block_out = TimestepEmbedSequential(nn.Conv2d(c2, c2, 1))

    timestep_embedding = UNetModel.timestep_embedding

    def forward(self, x, hint, timesteps, context, y=None, **kwargs):
        emb = self.time_embed(self.timestep_embedding(timesteps).to(x.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        guided_hint = self.input_hint_block(hint, emb, context)
        outs = []
        h = x
        for module, zero_conv in zip(self.input_blocks, self.zero_convs, strict=True):
            h = module(h, emb, context)
            if guided_hint is not None:
                h = h + guided_hint
                guided_hint = None
            outs.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h, emb, context))
        return outs


def make_controlnet(seed: int = 0, **kwargs) -> ControlNet:
    torch.manual_seed(seed)
    return ControlNet(**kwargs).eval().requires_grad_(False)
