"""Random-weight checkpoints in the official InstantID key layouts, built in the tests."""

from __future__ import annotations

from pathlib import Path

import torch

from instantid_ext.method.sdxl_layers import sdxl_attn2_layers


def resampler_state_dict(
    dim: int = 1280,
    heads: int = 20,
    depth: int = 4,
    queries: int = 16,
    emb: int = 512,
    out: int = 2048,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """``ip-adapter.bin["image_proj"]`` with random values (``dim_head`` 64, ``ff_mult`` 4)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float | None = None) -> torch.Tensor:
        fan_in = shape[-1]
        return torch.randn(*shape, generator=g) * (scale if scale is not None else fan_in**-0.5)

    inner = heads * 64
    sd = {
        "latents": rnd(1, queries, dim, scale=dim**-0.5),
        "proj_in.weight": rnd(dim, emb),
        "proj_in.bias": rnd(dim, scale=0.1),
        "proj_out.weight": rnd(out, dim),
        "proj_out.bias": rnd(out, scale=0.1),
        "norm_out.weight": 1 + rnd(out, scale=0.1),
        "norm_out.bias": rnd(out, scale=0.1),
    }
    for i in range(depth):
        p = f"layers.{i}."
        sd.update(
            {
                p + "0.norm1.weight": 1 + rnd(dim, scale=0.1),
                p + "0.norm1.bias": rnd(dim, scale=0.1),
                p + "0.norm2.weight": 1 + rnd(dim, scale=0.1),
                p + "0.norm2.bias": rnd(dim, scale=0.1),
                p + "0.to_q.weight": rnd(inner, dim),
                p + "0.to_kv.weight": rnd(2 * inner, dim),
                p + "0.to_out.weight": rnd(dim, inner),
                p + "1.0.weight": 1 + rnd(dim, scale=0.1),
                p + "1.0.bias": rnd(dim, scale=0.1),
                p + "1.1.weight": rnd(4 * dim, dim),
                p + "1.3.weight": rnd(dim, 4 * dim),
            }
        )
    return sd


def ip_layers_state_dict(
    hidden_sizes: list[int], seed: int = 1, context: int = 2048
) -> dict[str, torch.Tensor]:
    """``ip-adapter.bin["ip_adapter"]``: keys ``{2n+1}.to_k_ip.weight`` / ``to_v_ip`` per attn2 layer."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for n, hidden in enumerate(hidden_sizes):
        for kind in ("to_k_ip", "to_v_ip"):
            sd[f"{2 * n + 1}.{kind}.weight"] = torch.randn(hidden, context, generator=g) * context**-0.5
    return sd


def unet_hidden_sizes(unet: torch.nn.Module) -> list[int]:
    return [layer.module.to_k.out_features for layer in sdxl_attn2_layers(unet)]


def adapter_checkpoint(
    unet: torch.nn.Module, resampler_dim: int = 128, heads: int = 2, seed: int = 0
) -> dict:
    """A whole ``ip-adapter.bin`` payload fitting ``unet`` (small Resampler, real key layout)."""
    return {
        "image_proj": resampler_state_dict(dim=resampler_dim, heads=heads, seed=seed),
        "ip_adapter": ip_layers_state_dict(unet_hidden_sizes(unet), seed=seed + 1),
    }


def save_bin(payload: dict, path: Path) -> Path:
    torch.save(payload, path)
    return path


def save_safetensors(payload: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    flat = {f"{group}.{k}": v.contiguous() for group, sd in payload.items() for k, v in sd.items()}
    save_file(flat, str(path))
    return path


def tiny_identitynet(
    cross_attention_dim: int = 2048, projection_dim: int = 2816, conditioning_channels: int = 3
):
    """A diffusers ``ControlNetModel`` with IdentityNet's config but small channels (real key layout)."""
    import json

    from diffusers import ControlNetModel

    config = json.loads(
        (Path(__file__).resolve().parents[2] / "tests" / "data" / "identitynet_config.json").read_text()
    )
    config.update(
        block_out_channels=[32, 64, 64],
        attention_head_dim=[2, 4, 4],
        transformer_layers_per_block=[1, 1, 1],
        norm_num_groups=8,
        cross_attention_dim=cross_attention_dim,
        projection_class_embeddings_input_dim=projection_dim,
        conditioning_channels=conditioning_channels,
        conditioning_embedding_out_channels=[8, 8, 8, 8],
        addition_time_embed_dim=8,
    )
    if projection_dim != 2816:
        config["addition_embed_type"] = None
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    return ControlNetModel.from_config(config).eval()


def save_identitynet_folder(model, folder: Path) -> Path:
    """The layout InstantX publishes: ``config.json`` + ``diffusion_pytorch_model.safetensors``."""
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder
