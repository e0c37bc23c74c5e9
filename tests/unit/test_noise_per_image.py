"""Negative noise drawn per image: each uncond row of a UNet call takes its own image's tokens.

The UNet hooks are checked against diffusers' ``IPAdapterAttnProcessor2_0`` given the tokens of
each row (one image) and against a float64 per-region formula for several people, in every
batching mode of the WebUI's denoiser; the tokens of a batch against those of each seed alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instantid_ext.errors import InvalidInputError
from instantid_ext.job.conditioning import FaceTokens
from instantid_ext.method.attention import IPAttentionPatch, IPIdentity, MultiIPAttentionPatch
from instantid_ext.method.ip_adapter import IPAdapter
from instantid_ext.method.rows import RowRouter
from instantid_ext.method.sdxl_layers import sdxl_attn2_layers
from tests.fakes.sgm_unet import controlnet_marked
from tests.fakes.sgm_unet import unet_inputs as sgm_unet_inputs
from tests.unit import test_ip_attention as ip
from tests.unit.test_ip_attention import LATENT, SCALE, call, set_oracle_tokens
from tests.unit.test_multi_identity import capture_attn2_inputs, ref_unet_layer, region_masks


def unet_inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The oracle tests' inputs, on their latent size."""
    return sgm_unet_inputs(batch, LATENT, seed=seed)


# The UNet, adapter and diffusers oracle of the single-person tests.
unet, checkpoint, adapter = ip.unet, ip.checkpoint, ip.adapter
diffusers_key_of_ldm_name, oracle_unet = ip.diffusers_key_of_ldm_name, ip.oracle_unet

SEEDS = (1234, 1235, 1236)
NOISE = 0.3


def noise_tokens(adapter: IPAdapter, seeds=SEEDS) -> FaceTokens:
    embedding = (np.random.default_rng(7).standard_normal(512) * 20).astype(np.float32)
    return FaceTokens.from_embedding(adapter, embedding, noise=NOISE, seed=list(seeds))


def rows_tokens(cond: torch.Tensor, uncond: torch.Tensor, layout: list[tuple[int, int]]) -> torch.Tensor:
    """The tokens each row should see: ``layout`` is (cond flag, image) per row."""
    return torch.cat([cond if flag else uncond[image : image + 1] for flag, image in layout])


# -- the tokens --------------------------------------------------------------------------------
def test_a_batch_of_seeds_gives_each_seed_its_own_tokens(adapter) -> None:
    batch = noise_tokens(adapter)
    assert batch.cond.shape == (1, 16, 2048)
    assert batch.uncond.shape == (len(SEEDS), 16, 2048)
    for i, seed in enumerate(SEEDS):
        alone = noise_tokens(adapter, [seed])
        single = FaceTokens.from_embedding(adapter, np.zeros(512, np.float32), noise=NOISE, seed=seed)
        assert torch.equal(batch.uncond[i : i + 1], alone.uncond)
        assert torch.equal(alone.uncond, single.uncond)
        assert torch.equal(batch.cond, alone.cond)
    assert not torch.equal(batch.uncond[0], batch.uncond[1])


def test_noise_off_keeps_one_zero_set_whatever_the_seeds(adapter) -> None:
    embedding = np.ones(512, np.float32)
    tokens = FaceTokens.from_embedding(adapter, embedding, noise=0.0, seed=list(SEEDS))
    assert torch.equal(tokens.uncond, adapter.uncond_tokens())


# -- one person: against diffusers' processor, row by row --------------------------------------------
LAYOUTS = {
    # mode: (n_cond, n_total, calls, (flag, image) per row of the denoiser's layout)
    "cond+uncond in one call": (3, 6, [slice(0, 6)], None),
    "chunked by batch size": (3, 6, [slice(0, 3), slice(3, 6)], None),
    "uncond alone, then cond": (3, 6, [slice(0, 3), slice(3, 6)], None),
    "odd chunks (two prompts for image 0)": (
        4,
        7,
        [slice(0, 3), slice(3, 6), slice(6, 7)],
        [(1, 0), (1, 0), (1, 1), (1, 2), (0, 0), (0, 1), (0, 2)],
    ),
    "uncond skipped": (3, 6, [slice(0, 3)], None),
    "row by row": (3, 6, [slice(r, r + 1) for r in range(6)], None),
}


@pytest.mark.parametrize("mode", list(LAYOUTS))
def test_each_uncond_row_takes_its_images_tokens(unet, oracle_unet, adapter, mode) -> None:
    n_cond, n_total, calls, layout = LAYOUTS[mode]
    layout = layout or [(1, r) for r in range(n_cond)] + [(0, r) for r in range(n_total - n_cond)]
    tokens = noise_tokens(adapter)
    inputs = unet_inputs(n_total, seed=3)
    set_oracle_tokens(oracle_unet, rows_tokens(tokens.cond, tokens.uncond, layout))
    want = call(oracle_unet, inputs)
    with IPAttentionPatch(unet, adapter, tokens.cond, tokens.uncond, scale=SCALE) as patch:
        patch.router.begin_step(n_cond=n_cond, n_total=n_total)
        got = torch.cat([call(unet, inputs, rows) for rows in calls])
    assert (got - want[: got.shape[0]]).abs().max() <= 1e-5, mode
    # The same rows with the first image's tokens for every uncond row (one draw for the whole batch) differ.
    set_oracle_tokens(oracle_unet, rows_tokens(tokens.cond, tokens.uncond[:1].expand(3, -1, -1), layout))
    shared = call(oracle_unet, inputs)
    if mode != "uncond skipped":
        assert (shared - want).abs().max() > 1e-4


def test_controlnet_marker_alone_numbers_the_uncond_rows_in_order(unet, oracle_unet, adapter) -> None:
    """Without the denoiser's layout, a call's uncond rows (by ControlNet's marker) are the
    batch's images in order, as in a call on the whole batch."""
    tokens = noise_tokens(adapter, SEEDS[:2])
    inputs = unet_inputs(4, seed=4)
    layout = [(1, 0), (1, 1), (0, 0), (0, 1)]
    set_oracle_tokens(oracle_unet, rows_tokens(tokens.cond, tokens.uncond, layout))
    want = call(oracle_unet, inputs)
    with (
        controlnet_marked(unet, inputs, [1024.0, 1024.0, -1024.0, -1024.0]) as marked,
        IPAttentionPatch(unet, adapter, tokens.cond, tokens.uncond, scale=SCALE),
    ):
        got = call(unet, marked)
    assert (got - want).abs().max() <= 1e-5


def test_an_image_of_a_batch_equals_that_image_alone(unet, adapter) -> None:
    """Image 1 of a batch of 3 (its cond and uncond rows) gets what it gets in a batch of 1."""
    tokens = noise_tokens(adapter)
    inputs = unet_inputs(6, seed=6)
    with IPAttentionPatch(unet, adapter, tokens.cond, tokens.uncond, scale=SCALE) as patch:
        patch.router.begin_step(n_cond=3, n_total=6)
        batch = call(unet, inputs)
    alone_inputs = {k: v[[1, 4]] for k, v in inputs.items()}
    with IPAttentionPatch(unet, adapter, tokens.cond, tokens.uncond[1:2], scale=SCALE) as patch:
        patch.router.begin_step(n_cond=1, n_total=2)
        alone = call(unet, alone_inputs)
    assert (batch[[1, 4]] - alone).abs().max() <= 1e-5


def test_one_set_per_image_keeps_one_precompute_per_batch(unet, adapter, monkeypatch) -> None:
    tokens = noise_tokens(adapter)
    inputs = unet_inputs(6, seed=7)
    calls = []
    precompute = IPAttentionPatch._precompute

    def counted(self, device, dtype):
        calls.append(device)
        return precompute(self, device, dtype)

    monkeypatch.setattr(IPAttentionPatch, "_precompute", counted)
    shared: dict = {}
    for _ in range(2):  # e.g. the first pass and the hires pass of one batch
        with IPAttentionPatch(unet, adapter, tokens.cond, tokens.uncond, precomputed=shared) as patch:
            for _step in range(2):
                patch.router.begin_step(n_cond=3, n_total=6)
                call(unet, inputs, slice(0, 3))
                call(unet, inputs, slice(3, 6))
    assert len(calls) == 1
    cache = next(iter(shared.values()))
    assert cache.keys.shape[0] == len(SEEDS) + 1  # one uncond set per image, then the cond set


# -- several people: against the float64 per-region formula ---------------------------------------
def test_several_people_each_row_takes_its_images_uncond_tokens(unet, adapter) -> None:
    masks = region_masks(2)
    people = [noise_tokens(adapter, SEEDS[:2]), noise_tokens(adapter, (77, 78))]
    identities = [
        IPIdentity(t.cond, t.uncond, s, m) for t, s, m in zip(people, (0.8, 0.5), masks, strict=True)
    ]
    layout = [(1, 0), (1, 1), (0, 0), (0, 1)]
    rows = torch.stack(
        [torch.stack([(t.cond[0] if flag else t.uncond[image]) for t in people]) for flag, image in layout]
    )  # [B, k, 16, 2048]
    layers = sdxl_attn2_layers(unet)
    inputs = unet_inputs(4, seed=2)
    with MultiIPAttentionPatch(unet, adapter, identities) as patch:
        patch.router.begin_step(n_cond=2, n_total=4)
        seen = capture_attn2_inputs(unet, [layer.module for layer in layers], lambda: call(unet, inputs))
        worst = 0.0
        for n, layer in enumerate(layers):
            x, text = seen[n]
            patch.router.begin_step(n_cond=2, n_total=4)
            patch.router.route(2, torch.device("cpu"))  # the cond half first: the layer gets the uncond half
            patch.router.route(2, torch.device("cpu"))
            with torch.no_grad():
                got = layer.module(x[2:], context=text[2:])
            want = ref_unet_layer(
                layer.module,
                x[2:],
                text[2:],
                adapter.to_k_ip[n].weight,
                adapter.to_v_ip[n].weight,
                rows[2:],
                [0.8, 0.5],
                masks,
            )
            worst = max(worst, ((got.double() - want).abs().max() / want.abs().max()).item())
    assert worst <= 1e-5


def test_rejects_token_sets_for_different_batches(unet, adapter) -> None:
    masks = region_masks(2)
    two, three = noise_tokens(adapter, SEEDS[:2]), noise_tokens(adapter, SEEDS)
    with pytest.raises(InvalidInputError, match="batches of different sizes"):
        MultiIPAttentionPatch(
            unet,
            adapter,
            [
                IPIdentity(two.cond, two.uncond, 0.8, masks[0]),
                IPIdentity(three.cond, three.uncond, 0.8, masks[1]),
            ],
        )
    with pytest.raises(InvalidInputError, match="cond_tokens"):
        IPAttentionPatch(unet, adapter, three.uncond, three.uncond)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


def test_router_says_which_image_each_row_is() -> None:
    router = RowRouter()
    cpu = torch.device("cpu")
    router.begin_step(n_cond=3, n_total=6)
    router.route(4, cpu)
    assert router.images == (0, 1, 2, 0) and router.flags.tolist() == [1, 1, 1, 0]
    assert router.slots(3, cpu).tolist() == [3, 3, 3, 0]
    router.route(2, cpu)
    assert router.images == (1, 2) and router.slots(3, cpu).tolist() == [1, 2]
    assert router.images_for(2) == (1, 2) and router.images_for(3) is None
