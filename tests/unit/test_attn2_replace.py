"""The attn2 replace patch (Forge-family hosts) against diffusers' IP-Adapter processor and
against the WebUI path (the hooks of ``IPAttentionPatch``) on the stand-in sgm UNet."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from instantid_ext.errors import InvalidInputError
from instantid_ext.method.attention import IPAttentionPatch, IPIdentity, MultiIPAttentionPatch
from instantid_ext.method.attn2_replace import (
    SDXL_ATTN2_KEYS,
    Attn2FacePatch,
    FaceAttention,
    layer_name,
    sdpa,
)
from instantid_ext.method.ip_adapter import IPAdapter
from instantid_ext.method.sdxl_layers import Attn2Layer, sdxl_attn2_layers
from tests.fakes.sgm_unet import unet_inputs
from tests.unit.test_ip_attention import SCALE, OracleAttn2
from tests.unit.test_multi_identity import region_masks

LATENT = 16
SIDE = 8 * LATENT
TOL = 1e-5
ORACLE_LAYERS = (0, 37, 69)  # input_blocks.4 (2 heads), output_blocks.2 and the middle (4 heads)


@pytest.fixture(scope="module")
def layers(unet: nn.Module) -> list[Attn2Layer]:
    return sdxl_attn2_layers(unet)


def face_tokens(adapter: IPAdapter, seed: int = 11) -> torch.Tensor:
    emb = torch.randn(512, generator=torch.Generator().manual_seed(seed)) * 20
    return adapter.face_tokens(emb)


def oracle_for(layer: Attn2Layer, adapter: IPAdapter) -> Attention:
    """diffusers' Attention + IPAdapterAttnProcessor2_0 with the layer's and the adapter's weights."""
    ip = layer.ip_index
    return OracleAttn2(layer.module, adapter.to_k_ip[ip].weight, adapter.to_v_ip[ip].weight).attn.eval()


def layer_inputs(
    layer: Attn2Layer, batch: int, seq: int = 64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, layer.module.to_q.in_features, generator=g), torch.randn(
        batch, 77, 2048, generator=g
    )


def extra_options(layer: Attn2Layer, chunks: list[int], batch: int, sigma: float = 5.0) -> dict:
    key = SDXL_ATTN2_KEYS[layer.ip_index]
    heads = layer.module.heads
    return {
        "n_heads": heads,
        "dim_head": layer.module.to_q.out_features // heads,
        "cond_or_uncond": chunks,
        "sigmas": torch.full((batch // len(chunks),), sigma),
        "block": key[:2],
        "block_index": key[2],
        "original_shape": [batch, 4, LATENT, LATENT],
    }


def as_host(layer: Attn2Layer, patch, x: torch.Tensor, context: torch.Tensor, extra: dict) -> torch.Tensor:
    """What the host's transformer block does with a replace patch: project, patch, to_out."""
    attn = layer.module
    with torch.no_grad():
        out = patch(attn.to_q(x), attn.to_k(context), attn.to_v(context), extra)
        return attn.to_out(out)


def rows_tokens(chunks: list[int], per_chunk: int, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    return torch.cat([(cond, uncond)[c] for c in chunks for _ in range(per_chunk)])


# -- keys -----------------------------------------------------------------------------------
def forge_ip_adapter_keys() -> list[tuple[str, int, int]]:
    """The order Forge's built-in IP-Adapter numbers SDXL's layers (its ``number`` counter)."""
    keys = [("input", i, j) for i in (4, 5, 7, 8) for j in range(2 if i in (4, 5) else 10)]
    keys += [("output", i, j) for i in range(6) for j in range(2 if i in (3, 4, 5) else 10)]
    return keys + [("middle", 0, j) for j in range(10)]


def test_keys_follow_the_adapter_layer_order(layers) -> None:
    assert len(SDXL_ATTN2_KEYS) == 70 == len(set(SDXL_ATTN2_KEYS))
    assert [layer_name(key) for key in SDXL_ATTN2_KEYS] == [layer.name for layer in layers]
    assert list(SDXL_ATTN2_KEYS) == forge_ip_adapter_keys()


# -- against diffusers ----------------------------------------------------------------------
@pytest.mark.parametrize("chunks", [[0], [1], [1, 0], [0, 1]])
@pytest.mark.parametrize("per_chunk", [1, 2])
def test_rows_match_oracle(layers, adapter, chunks, per_chunk) -> None:
    cond, uncond = face_tokens(adapter), adapter.uncond_tokens()
    face = FaceAttention(adapter, [IPIdentity(cond, uncond, SCALE)])
    batch = per_chunk * len(chunks)
    worst = 0.0
    for index in ORACLE_LAYERS:
        layer = layers[index]
        x, context = layer_inputs(layer, batch, seed=index)
        oracle = oracle_for(layer, adapter)
        with torch.no_grad():
            want = oracle(x, encoder_hidden_states=(context, [rows_tokens(chunks, per_chunk, cond, uncond)]))
            plain = oracle(x, encoder_hidden_states=(context, [torch.zeros_like(cond).expand(batch, -1, -1)]))
        got = as_host(layer, face.patch(index), x, context, extra_options(layer, chunks, batch))
        worst = max(worst, (got - want).abs().max().item())
        assert (plain - want).abs().max() > 1e-3  # the face tokens change the output
    print(
        f"replace patch vs diffusers IPAdapterAttnProcessor2_0 {chunks}×{per_chunk}: max abs diff {worst:.3e}"
    )
    assert worst <= TOL


def test_window_follows_the_progress_hook(layers, adapter) -> None:
    cond, uncond = face_tokens(adapter), adapter.uncond_tokens()
    calls = []

    def progress(extra: dict) -> float:
        calls.append(1)
        return 1.0 - float(extra["sigmas"][0]) / 10.0

    face = FaceAttention(adapter, [IPIdentity(cond, uncond, SCALE)], start=0.2, end=0.6, progress=progress)
    layer = layers[69]
    x, context = layer_inputs(layer, 2)
    oracle = oracle_for(layer, adapter)
    with torch.no_grad():
        want = oracle(x, encoder_hidden_states=(context, [rows_tokens([1, 0], 1, cond, uncond)]))
        q, k, v = (layer.module.to_q(x), layer.module.to_k(context), layer.module.to_v(context))
        plain = layer.module.to_out(sdpa(q, k, v, layer.module.heads))
    for sigma, inside in ((9.0, False), (5.0, True), (2.0, False)):
        extra = extra_options(layer, [1, 0], 2, sigma)
        for index in (69, 69, 68):  # one UNet call: the host hands every layer the same sigmas
            got = as_host(layers[index], face.patch(index), *layer_inputs(layers[index], 2), extra)
            if index == 69:
                assert (got - (want if inside else plain)).abs().max() <= TOL, sigma
    assert len(calls) == 3  # once per UNet call, not once per layer


def test_chains_after_an_earlier_patch(layers, adapter) -> None:
    cond, uncond = face_tokens(adapter), adapter.uncond_tokens()
    face = FaceAttention(adapter, [IPIdentity(cond, uncond, SCALE)])
    seen = []

    def other(q, k, v, extra):
        seen.append(extra["block"])
        return 0.5 * sdpa(q, k, v, extra["n_heads"]) + 0.25

    layer = layers[0]
    key = SDXL_ATTN2_KEYS[0]
    patches = face.patches({key: other, ("input", 1, 0): other})
    assert set(patches) == set(SDXL_ATTN2_KEYS)
    assert patches[key].prior is other and patches[SDXL_ATTN2_KEYS[1]].prior is None
    x, context = layer_inputs(layer, 2)
    extra = extra_options(layer, [1, 0], 2)
    alone = FaceAttention(
        adapter, [IPIdentity(cond, uncond, SCALE)], text_attention=lambda q, k, v, h: other(q, k, v, extra)
    )
    got = as_host(layer, patches[key], x, context, extra)
    attn = layer.module
    with torch.no_grad():
        q = attn.to_q(x)
        want = attn.to_out(
            other(q, attn.to_k(context), attn.to_v(context), extra) + face.face_term(0, q, extra)
        )
    assert torch.equal(got, want)
    assert torch.equal(got, as_host(layer, alone.patch(0), x, context, extra))
    assert seen[0] == key[:2]


def test_deepcopy_keeps_the_patches_and_their_cache(layers, adapter) -> None:
    face = FaceAttention(adapter, [IPIdentity(face_tokens(adapter), adapter.uncond_tokens(), SCALE)])
    options = {"transformer_options": {"patches_replace": {"attn2": face.patches()}}}
    layer = layers[0]
    x, context = layer_inputs(layer, 2)
    extra = extra_options(layer, [1, 0], 2)
    first = as_host(
        layer,
        options["transformer_options"]["patches_replace"]["attn2"][SDXL_ATTN2_KEYS[0]],
        x,
        context,
        extra,
    )
    cached = dict(face._kv)
    copied = copy.deepcopy(options)
    patch = copied["transformer_options"]["patches_replace"]["attn2"][SDXL_ATTN2_KEYS[0]]
    assert (
        isinstance(patch, Attn2FacePatch)
        and patch is options["transformer_options"]["patches_replace"]["attn2"][SDXL_ATTN2_KEYS[0]]
    )
    assert patch.face is face and copy.copy(face) is face
    assert torch.equal(as_host(layer, patch, x, context, extra), first)
    assert len(face._kv) == len(cached) == 1
    assert all(face._kv[key][0] is cached[key][0] for key in cached)  # computed once, not per call
    face.clear()
    assert not face._kv


def test_refuses_a_bad_window_or_layer(adapter) -> None:
    identity = IPIdentity(face_tokens(adapter), adapter.uncond_tokens(), SCALE)
    with pytest.raises(InvalidInputError):
        FaceAttention(adapter, [identity], start=0.7, end=0.2)
    with pytest.raises(InvalidInputError):
        FaceAttention(adapter, [identity]).patch(70)


# -- against the WebUI path -----------------------------------------------------------------
def capture_webui(unet: nn.Module, layers: list[Attn2Layer], run) -> dict[int, tuple]:
    """(x, context, to_out input) of every attn2 layer during ``run()``; registered after the
    patch's hooks, so the to_out input already holds the face term."""
    seen: dict[int, list] = {}
    handles = []
    for layer in layers:
        i = layer.ip_index

        def grab_in(mod, args, kwargs, i=i):
            seen[i] = [args[0], kwargs["context"]]

        def grab_out(mod, args, i=i):
            seen[i].append(args[0])

        handles.append(layer.module.register_forward_pre_hook(grab_in, with_kwargs=True))
        handles.append(layer.module.to_out[0].register_forward_pre_hook(grab_out))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return {i: tuple(v) for i, v in seen.items()}


def identity_cases(adapter: IPAdapter) -> dict[str, list[IPIdentity]]:
    uncond = adapter.uncond_tokens()
    noisy = adapter.face_tokens(torch.randn(2, 1, 512, generator=torch.Generator().manual_seed(3)))
    masks = region_masks(2)
    return {
        "one": [IPIdentity(face_tokens(adapter), uncond, SCALE)],
        "one, masked": [IPIdentity(face_tokens(adapter), uncond, 0.6, masks[0])],
        "uncond per image": [IPIdentity(face_tokens(adapter), noisy, SCALE)],
        "two people": [
            IPIdentity(face_tokens(adapter, 11), uncond, 0.8, masks[0]),
            IPIdentity(face_tokens(adapter, 12), uncond, 1.2, masks[1]),
        ],
    }


@pytest.mark.parametrize("case", ["one", "one, masked", "uncond per image", "two people"])
def test_equals_the_webui_path(unet, layers, adapter, case) -> None:
    identities = identity_cases(adapter)[case]
    inputs = unet_inputs(4, LATENT, seed=2)
    patch_cls = IPAttentionPatch if len(identities) == 1 else MultiIPAttentionPatch

    if patch_cls is IPAttentionPatch:
        i = identities[0]
        hooks = IPAttentionPatch(unet, adapter, i.cond, i.uncond, scale=i.scale, mask=i.mask)
    else:
        hooks = MultiIPAttentionPatch(unet, adapter, identities)

    def run() -> None:
        hooks.router.begin_step(n_cond=2, n_total=4)  # the WebUI's layout: cond rows, then uncond
        unet(inputs["x"], timesteps=inputs["timesteps"], context=inputs["context"], y=inputs["y"])

    with hooks:
        seen = capture_webui(unet, layers, run)
    face = FaceAttention(adapter, identities)
    worst = 0.0
    for layer in layers:
        x, context, webui = seen[layer.ip_index]
        attn = layer.module
        extra = extra_options(layer, [0, 1], 4)  # the same rows in the host's terms
        with torch.no_grad():
            got = face.patch(layer.ip_index)(attn.to_q(x), attn.to_k(context), attn.to_v(context), extra)
        worst = max(worst, (got - webui).abs().max().item())
    print(f"replace patch vs WebUI hooks ({case}), 70 layers: max abs diff {worst:.3e}")
    assert worst <= 1e-6


def test_uncond_rows_take_their_own_images_tokens(layers, adapter) -> None:
    """Negative noise per image: row i of an uncond chunk uses image i's uncond set, in either chunk order."""
    cond = face_tokens(adapter)
    noisy = adapter.face_tokens(torch.randn(2, 1, 512, generator=torch.Generator().manual_seed(3)))
    face = FaceAttention(adapter, [IPIdentity(cond, noisy, SCALE)])
    layer = layers[37]
    x, context = layer_inputs(layer, 4)
    oracle = oracle_for(layer, adapter)
    for chunks in ([1, 0], [0, 1], [1]):
        batch = 2 * len(chunks)
        tokens = torch.cat([cond.expand(2, -1, -1) if c == 0 else noisy for c in chunks])
        with torch.no_grad():
            want = oracle(x[:batch], encoder_hidden_states=(context[:batch], [tokens]))
        got = as_host(layer, face.patch(37), x[:batch], context[:batch], extra_options(layer, chunks, batch))
        assert (got - want).abs().max() <= TOL, chunks
