"""What the benchmarks share: their common options, the GPU wait, random IP-Adapter layers and
one UNet call's inputs."""

from __future__ import annotations

import argparse

import torch

from instantid_ext.method.sdxl_layers import sdxl_attn2_layers


def base_parser(description: str, batch_help: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: device, dtype, latent side and batch rows."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--latent", type=int, default=32, help="latent side (image side / 8)")
    parser.add_argument("--batch", type=int, default=2, help=batch_help)
    return parser


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_ip_layers(unet: torch.nn.Module) -> tuple[list[torch.nn.Linear], list[torch.nn.Linear]]:
    """Random ``to_k_ip`` and ``to_v_ip`` projections (2048-wide face tokens) for each attn2 layer."""
    layers = sdxl_attn2_layers(unet)
    to_k = [torch.nn.Linear(2048, layer.module.to_k.out_features, bias=False) for layer in layers]
    to_v = [torch.nn.Linear(2048, layer.module.to_k.out_features, bias=False) for layer in layers]
    return to_k, to_v


def unet_call_inputs(
    g: torch.Generator, batch: int, latent: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random latent, timesteps, text context and SDXL ``y`` for one UNet call, drawn from ``g``."""
    x = torch.randn(batch, 4, latent, latent, generator=g).to(device, dtype)
    t = torch.full((batch,), 500.0, device=device)
    context = torch.randn(batch, 77, 2048, generator=g).to(device, dtype)
    y = torch.randn(batch, 2816, generator=g).to(device, dtype)
    return x, t, context, y
