"""The Resampler against diffusers' ``IPAdapterPlusImageProjection`` (independent oracle)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.embeddings import IPAdapterPlusImageProjection

from instantid_ext.method.resampler import Resampler
from tests.fakes.weights import resampler_state_dict


def to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key mapping diffusers' own IP-Adapter loader applies to a Resampler checkpoint."""
    out = {}
    for key, value in sd.items():
        if not key.startswith("layers."):
            out[key] = value
            continue
        _, i, sub, *rest = key.split(".")
        name = ".".join(rest)
        p = f"layers.{i}."
        if sub == "0":
            if name == "to_kv.weight":
                k, v = value.chunk(2, dim=0)
                out[p + "attn.to_k.weight"], out[p + "attn.to_v.weight"] = k, v
            elif name == "to_q.weight":
                out[p + "attn.to_q.weight"] = value
            elif name == "to_out.weight":
                out[p + "attn.to_out.0.weight"] = value
            else:  # norm1 -> ln0, norm2 -> ln1
                out[p + name.replace("norm1", "ln0").replace("norm2", "ln1")] = value
        else:
            idx, param = rest
            target = {"0": "ff.0", "1": "ff.1.net.0.proj", "3": "ff.1.net.2"}[idx]
            out[f"{p}{target}.{param}"] = value
    return out


@pytest.fixture(scope="module")
def full_size() -> dict[str, torch.Tensor]:
    return resampler_state_dict(seed=3)


def test_instantid_shapes_from_checkpoint(full_size: dict[str, torch.Tensor]) -> None:
    model = Resampler.from_state_dict(full_size)
    assert len(model.layers) == 4
    assert model.layers[0][0].heads == 20
    assert model.latents.shape == (1, 16, 1280)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(82e6, rel=0.05)
    out = model(torch.randn(2, 1, 512))
    assert out.shape == (2, 16, 2048)


@pytest.mark.parametrize("n_embeddings", [1, 3])
def test_matches_diffusers_ip_adapter_plus_projection(
    full_size: dict[str, torch.Tensor], n_embeddings: int
) -> None:
    ours = Resampler.from_state_dict(full_size)
    oracle = IPAdapterPlusImageProjection(
        embed_dims=512, output_dims=2048, hidden_dims=1280, depth=4, dim_head=64, heads=20, num_queries=16
    ).eval()
    oracle.load_state_dict(to_diffusers(full_size), strict=True)
    g = torch.Generator().manual_seed(7)
    emb = torch.randn(2, n_embeddings, 512, generator=g) * 20  # raw ArcFace embeddings have norm ~20-30
    with torch.no_grad():
        got, want = ours(emb), oracle(emb)
    diff = (got - want).abs().max().item()
    print(f"Resampler vs diffusers IPAdapterPlusImageProjection: max abs diff {diff:.3e}")
    assert diff <= 1e-5


def test_zero_embedding_is_not_zero_tokens(full_size: dict[str, torch.Tensor]) -> None:
    """The negative branch is Resampler(zeros): learned latents and proj_in bias make it non-zero."""
    tokens = Resampler.from_state_dict(full_size)(torch.zeros(1, 1, 512))
    assert tokens.abs().mean() > 0.1
