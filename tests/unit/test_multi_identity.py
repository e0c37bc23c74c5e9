"""Several identities in one image: the UNet's face-token hooks and IdentityNet's region hooks.

Checked against straightforward float64 re-implementations (per-region masked softmax
attention), for leaks (perturbing one identity must leave the other region's attn2 outputs
bit for bit unchanged), and against the single-identity path.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instantid_ext.errors import IncompatibleModelError, InvalidInputError
from instantid_ext.method.attention import IPAttentionPatch, IPIdentity, MultiIPAttentionPatch
from instantid_ext.method.identitynet_regions import (
    SDXL_IDENTITYNET_ATTN2,
    RegionalIdentityNet,
    controlnet_attn2_layers,
    identity_context,
    region_strength_map,
)
from instantid_ext.method.ip_adapter import IPAdapter
from instantid_ext.method.sdxl_layers import sdxl_attn2_layers
from tests.fakes.sgm_controlnet import make_controlnet
from tests.fakes.sgm_unet import unet_inputs

LATENT = 16
SIDE = 8 * LATENT  # output pixels
SCALES = (0.8, 0.5, 1.2)


@pytest.fixture(scope="module")
def control() -> nn.Module:
    return make_controlnet(seed=3)


def region_masks(count: int) -> torch.Tensor:
    """``count`` disjoint regions at output size, leaving a strip (bottom rows) in none."""
    masks = torch.zeros(count, SIDE, SIDE)
    edges = [round(i * SIDE / count) for i in range(count + 1)]
    for r in range(count):
        masks[r, : SIDE - 32, edges[r] : edges[r + 1]] = 1.0
    return masks


def tokens(adapter: IPAdapter, seed: int) -> torch.Tensor:
    emb = torch.randn(512, generator=torch.Generator().manual_seed(seed)) * 20
    return adapter.face_tokens(emb)


def call_unet(unet: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return unet(inputs["x"], timesteps=inputs["timesteps"], context=inputs["context"], y=inputs["y"])


def capture_attn2_inputs(model: nn.Module, modules: list[nn.Module], run) -> dict[int, tuple]:
    """(x, context) each attn2 module received during ``run()``, by position in ``modules``."""
    seen: dict[int, tuple] = {}
    handles = []
    for i, module in enumerate(modules):

        def grab(mod, args, kwargs, i=i):
            seen.setdefault(i, (args[0], kwargs["context"]))

        handles.append(module.register_forward_pre_hook(grab, with_kwargs=True))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def grid_masks(masks: torch.Tensor, seq: int) -> torch.Tensor:
    """``[k, S]``: masks nearest-resized to a square token grid of ``seq`` tokens."""
    side = math.isqrt(seq)
    return F.interpolate(masks[None].double(), size=(side, side), mode="nearest")[0].reshape(len(masks), seq)


def ref_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain softmax attention in float64: [B, S, C] x [B, T, C] → [B, S, C]."""
    b, s, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    w = (q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(-1)
    return (w @ v).transpose(1, 2).reshape(b, s, c)


def ref_unet_layer(attn, x, text, ip_k, ip_v, rows_tokens, scales, masks) -> torch.Tensor:
    """attn2 with k identities, per region, in float64: text attention plus, for each r,
    ``scale_r · mask_r · softmax(Q K_rᵀ/√d) V_r`` with K_r/V_r from r's tokens of each row."""
    W = {n: p.double() for n, p in attn.named_parameters()}
    x, text = x.double(), text.double()
    q = x @ W["to_q.weight"].T
    h = ref_attention(q, text @ W["to_k.weight"].T, text @ W["to_v.weight"].T, attn.heads)
    m = grid_masks(masks, x.shape[1])
    for r, scale in enumerate(scales):
        t = rows_tokens[:, r].double()  # [B, 16, 2048]
        ip = ref_attention(q, t @ ip_k.double().T, t @ ip_v.double().T, attn.heads)
        h = h + scale * m[r][None, :, None] * ip
    return h @ W["to_out.0.weight"].T + W["to_out.0.bias"]


# -- UNet: the face-token term ------------------------------------------------------------
def make_identities(adapter: IPAdapter, count: int, seeds=(11, 12, 13, 14)) -> list[IPIdentity]:
    masks = region_masks(count)
    uncond = adapter.uncond_tokens()
    return [IPIdentity(tokens(adapter, seeds[r]), uncond, SCALES[r % 3], masks[r]) for r in range(count)]


@pytest.mark.parametrize("with_mask", [False, True])
def test_single_identity_through_new_class_equals_the_existing_path(unet, adapter, with_mask) -> None:
    cond, uncond = tokens(adapter, 11), adapter.uncond_tokens()
    mask = region_masks(1)[0] if with_mask else None
    inputs = unet_inputs(3, LATENT, seed=1)
    with IPAttentionPatch(unet, adapter, cond, uncond, scale=0.7, mask=mask) as patch:
        patch.router.begin_step(n_cond=2, n_total=3)
        old = call_unet(unet, inputs)
    with MultiIPAttentionPatch(unet, adapter, [IPIdentity(cond, uncond, 0.7, mask)]) as patch:
        patch.router.begin_step(n_cond=2, n_total=3)
        new = call_unet(unet, inputs)
    assert torch.equal(old, new)


@pytest.mark.parametrize("count", [2, 3])
def test_every_layer_matches_the_float64_per_region_oracle(unet, adapter, count) -> None:
    identities = make_identities(adapter, count)
    layers = sdxl_attn2_layers(unet)
    inputs = unet_inputs(4, LATENT, seed=2)
    flags = [1, 1, 0, 0]
    with MultiIPAttentionPatch(unet, adapter, identities) as patch:
        patch.router.begin_step(n_cond=2, n_total=4)
        seen = capture_attn2_inputs(unet, [layer.module for layer in layers], lambda: call_unet(unet, inputs))
        rows = torch.stack(
            [torch.stack([(i.cond if f else i.uncond).reshape(16, 2048) for i in identities]) for f in flags]
        )  # [B, k, 16, 2048]
        masks = torch.stack([i.mask for i in identities])
        worst = 0.0
        for n, layer in enumerate(layers):
            x, text = seen[n]
            patch.router.begin_step(n_cond=2, n_total=4)
            patch.router.route(4, torch.device("cpu"))
            with torch.no_grad():
                got = layer.module(x, context=text)
            want = ref_unet_layer(
                layer.module,
                x,
                text,
                adapter.to_k_ip[n].weight,
                adapter.to_v_ip[n].weight,
                rows,
                [i.scale for i in identities],
                masks,
            )
            worst = max(worst, ((got.double() - want).abs().max() / want.abs().max()).item())
    print(f"{count} identities, 70 attn2 layers vs float64 oracle: max relative error {worst:.2e}")
    assert worst <= 1e-5


class OracleMultiAttn2(nn.Module):
    """An sgm attn2 replaced by the float64 per-region formula (for a whole-UNet comparison)."""

    def __init__(self, attn, ip_k, ip_v, rows_tokens, scales, masks) -> None:
        super().__init__()
        self.attn, self.ip_k, self.ip_v = attn, ip_k, ip_v
        self.rows_tokens, self.scales, self.masks = rows_tokens, scales, masks

    def forward(self, x, context=None, **kwargs):
        out = ref_unet_layer(
            self.attn, x, context, self.ip_k, self.ip_v, self.rows_tokens, self.scales, self.masks
        )
        return out.float()


def test_whole_unet_matches_the_oracle_unet(unet, adapter) -> None:
    identities = make_identities(adapter, 3)
    inputs = unet_inputs(2, LATENT, seed=3)
    flags = [1, 0]
    rows = torch.stack(
        [torch.stack([(i.cond if f else i.uncond).reshape(16, 2048) for i in identities]) for f in flags]
    )
    masks = torch.stack([i.mask for i in identities])
    scales = [i.scale for i in identities]
    with MultiIPAttentionPatch(unet, adapter, identities) as patch:
        patch.router.begin_step(n_cond=1, n_total=2)
        got = call_unet(unet, inputs)
    originals = []
    try:
        for n, layer in enumerate(sdxl_attn2_layers(unet)):
            parent_name, child = layer.name.rsplit(".", 1)
            parent = unet.get_submodule(parent_name)
            originals.append((parent, child, layer.module))
            oracle = OracleMultiAttn2(
                layer.module, adapter.to_k_ip[n].weight, adapter.to_v_ip[n].weight, rows, scales, masks
            )
            setattr(parent, child, oracle)
        want = call_unet(unet, inputs)
    finally:
        for parent, child, module in originals:
            setattr(parent, child, module)
    relative = ((got - want).abs().max() / want.abs().max()).item()
    print(f"UNet with 3 identities vs oracle UNet: max relative error {relative:.2e}")
    assert relative <= 1e-5
    plain = call_unet(unet, inputs)
    assert (plain - want).abs().max() > 1e-3


def region_index(masks: torch.Tensor, seq: int) -> torch.Tensor:
    """Per token: the region (0…k-1) it lies in, or -1."""
    m = grid_masks(masks, seq)
    inside = m.sum(0) > 0
    return torch.where(inside, m.argmax(0), torch.full_like(inside, -1, dtype=torch.long))


def test_tokens_do_not_leak_across_regions_in_any_unet_layer(unet, adapter) -> None:
    """Perturbing identity B changes the attn2 outputs in B's region only, bit for bit."""
    a, b = make_identities(adapter, 2)
    b_other = IPIdentity(tokens(adapter, 99), b.uncond, b.scale, b.mask)
    layers = sdxl_attn2_layers(unet)
    inputs = unet_inputs(2, LATENT, seed=4)
    seen = capture_attn2_inputs(unet, [layer.module for layer in layers], lambda: call_unet(unet, inputs))
    masks = torch.stack([a.mask, b.mask])

    def outputs(identities) -> list[torch.Tensor]:
        with MultiIPAttentionPatch(unet, adapter, identities) as patch, torch.no_grad():
            result = []
            for n, layer in enumerate(layers):
                patch.router.begin_step(n_cond=1, n_total=2)
                patch.router.latent_size = (LATENT, LATENT)
                patch.router.route(2, torch.device("cpu"))
                x, text = seen[n]
                result.append(layer.module(x, context=text))
            return result

    with torch.no_grad():
        plain = [layer.module(*seen[n][:1], context=seen[n][1]) for n, layer in enumerate(layers)]
    before, after = outputs([a, b]), outputs([a, b_other])
    for n, (p, x, y) in enumerate(zip(plain, before, after, strict=True)):
        where = region_index(masks, x.shape[1])
        in_a, in_b, outside = where == 0, where == 1, where == -1
        assert torch.equal(x[0, in_a], y[0, in_a]), layers[n].name  # cond row: A untouched by B
        assert (x[0, in_b] - y[0, in_b]).abs().amax(-1).min() > 0, layers[n].name
        assert torch.equal(x[1], y[1])  # uncond row: B's zero-face tokens did not change
        assert torch.equal(x[:, outside], p[:, outside])  # outside every region: prompt only
        assert (x[:, in_a] - p[:, in_a]).abs().amax(-1).min() > 0

    # Inside one UNet pass: the first attn2 to run sees the same input either way.
    first = layers[0].module
    got = []
    for identities in ([a, b], [a, b_other]):
        with MultiIPAttentionPatch(unet, adapter, identities) as patch:
            patch.router.begin_step(n_cond=1, n_total=2)
            captured = []
            handle = first.register_forward_hook(lambda m, args, out, c=captured: c.append(out))
            try:
                call_unet(unet, inputs)
            finally:
                handle.remove()
            got.append(captured[0])
    where = region_index(masks, got[0].shape[1])
    assert torch.equal(got[0][:, where == 0], got[1][:, where == 0])
    assert not torch.equal(got[0][0, where == 1], got[1][0, where == 1])


def test_zero_weight_identity_leaves_its_region_to_the_prompt(unet, adapter) -> None:
    a, b = make_identities(adapter, 2)
    silent = IPIdentity(b.cond, b.uncond, 0.0, b.mask)
    layer = sdxl_attn2_layers(unet)[0]
    inputs = unet_inputs(1, LATENT, seed=5)
    ((x, text),) = capture_attn2_inputs(unet, [layer.module], lambda: call_unet(unet, inputs)).values()
    with MultiIPAttentionPatch(unet, adapter, [a, silent]) as patch, torch.no_grad():
        patch.router.latent_size = (LATENT, LATENT)
        patch.router.route(1, torch.device("cpu"))
        got = layer.module(x, context=text)
    with torch.no_grad():
        plain = layer.module(x, context=text)
    where = region_index(torch.stack([a.mask, b.mask]), x.shape[1])
    assert torch.equal(got[:, where == 1], plain[:, where == 1])
    assert not torch.equal(got[:, where == 0], plain[:, where == 0])


def test_rejects_bad_identity_lists(unet, adapter) -> None:
    ids = make_identities(adapter, 2)
    with pytest.raises(InvalidInputError, match="1 to 4 identities in one image, got 5"):
        MultiIPAttentionPatch(unet, adapter, make_identities(adapter, 4) + ids[:1])
    with pytest.raises(InvalidInputError, match="each needs a region mask; identity 2 has none"):
        MultiIPAttentionPatch(unet, adapter, [ids[0], IPIdentity(ids[1].cond, ids[1].uncond)])
    with pytest.raises(InvalidInputError, match="differ in size"):
        MultiIPAttentionPatch(
            unet, adapter, [ids[0], IPIdentity(ids[1].cond, ids[1].uncond, 1.0, torch.ones(8, 8))]
        )
    with pytest.raises(InvalidInputError, match="cond_tokens of identity 2 must be"):
        MultiIPAttentionPatch(
            unet, adapter, [ids[0], IPIdentity(ids[1].cond[:, :8], ids[1].uncond, 1.0, ids[1].mask)]
        )
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


# -- IdentityNet ----------------------------------------------------------------------------
def control_inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, 4, LATENT, LATENT, generator=g),
        "hint": torch.rand(batch, 3, SIDE, SIDE, generator=g),
        "timesteps": torch.full((batch,), 400.0),
        "y": torch.randn(batch, 2816, generator=g),
    }


def run_control(control: nn.Module, inputs: dict, context: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return control(context=context, **inputs)


def cn_context(adapter: IPAdapter, seeds: list[int], flags: list[int]) -> torch.Tensor:
    cond = identity_context([tokens(adapter, s) for s in seeds])
    uncond = identity_context([adapter.uncond_tokens() for _ in seeds])
    return torch.cat([cond if f else uncond for f in flags])


def ref_control_layer(attn, x, context, masks, count) -> torch.Tensor:
    """Region-bound attn2 in float64: inside region r softmax over r's 16 tokens only,
    outside every region the mean of the k per-identity results."""
    W = {n: p.double() for n, p in attn.named_parameters()}
    x, context = x.double(), context.double()
    q = x @ W["to_q.weight"].T
    k, v = context @ W["to_k.weight"].T, context @ W["to_v.weight"].T
    per_identity = [
        ref_attention(q, k[:, 16 * r : 16 * r + 16], v[:, 16 * r : 16 * r + 16], attn.heads)
        for r in range(count)
    ]
    m = grid_masks(masks, x.shape[1])
    outside = (m.sum(0) == 0).double()
    h = sum((m[r] + outside / count)[None, :, None] * per_identity[r] for r in range(count))
    return h @ W["to_out.0.weight"].T + W["to_out.0.bias"]


def test_identitynet_attn2_layers_are_found_by_structure(control, unet) -> None:
    layers = controlnet_attn2_layers(control)
    assert len(layers) == SDXL_IDENTITYNET_ATTN2 == 34
    assert layers[0].name == "input_blocks.4.1.transformer_blocks.0.attn2"
    assert layers[-1].name == "middle_block.1.transformer_blocks.9.attn2"
    assert len(controlnet_attn2_layers(nn.Sequential(control))) == 34  # inside a wrapper too
    assert len(controlnet_attn2_layers(unet)) == 70
    with pytest.raises(IncompatibleModelError, match="no cross-attention layers"):
        controlnet_attn2_layers(nn.Conv2d(3, 3, 1))


@pytest.mark.parametrize("count", [2, 4])
def test_identitynet_layers_match_the_float64_oracle(control, adapter, count) -> None:
    masks = region_masks(count)
    layers = controlnet_attn2_layers(control)
    inputs = control_inputs(2, seed=1)
    context = cn_context(adapter, [21, 22, 23, 24][:count], [1, 0])
    with RegionalIdentityNet(control, masks, [0.8] * count) as hooks:
        seen = capture_attn2_inputs(
            control, [layer.module for layer in layers], lambda: run_control(control, inputs, context)
        )
        worst = 0.0
        for n, layer in enumerate(layers):
            x, _ = seen[n]  # the hooks handed the layer a one-token context; use the full one
            with torch.no_grad():
                got = layer.module(x, context=context)
            want = ref_control_layer(layer.module, x, context, masks, count)
            worst = max(worst, ((got.double() - want).abs().max() / want.abs().max()).item())
        assert hooks.latent_size == (LATENT, LATENT)
    print(
        f"IdentityNet, {count} identities, 34 attn2 layers vs float64 oracle: max relative error {worst:.2e}"
    )
    assert worst <= 1e-5


def test_identitynet_tokens_do_not_leak_across_regions(control, adapter) -> None:
    masks = region_masks(2)
    layers = controlnet_attn2_layers(control)
    inputs = control_inputs(2, seed=2)
    context = cn_context(adapter, [21, 22], [1, 1])
    perturbed = cn_context(adapter, [21, 77], [1, 1])
    assert torch.equal(context[:, :16], perturbed[:, :16])
    seen = capture_attn2_inputs(
        control, [layer.module for layer in layers], lambda: run_control(control, inputs, context)
    )
    with RegionalIdentityNet(control, masks, [1.0, 1.0]) as hooks, torch.no_grad():
        hooks.latent_size = (LATENT, LATENT)
        for n, layer in enumerate(layers):
            x = seen[n][0]
            before = layer.module(x, context=context)
            after = layer.module(x, context=perturbed)
            where = region_index(masks, x.shape[1])
            assert torch.equal(before[:, where == 0], after[:, where == 0]), layer.name
            assert (before[:, where == 1] - after[:, where == 1]).abs().amax(-1).min() > 0, layer.name
        # Inside one pass the first attn2 sees the same input both times.
        first, outs = layers[0].module, []
        handle = first.register_forward_hook(lambda m, args, out: outs.append(out))
        try:
            run_control(control, inputs, context)
            run_control(control, inputs, perturbed)
        finally:
            handle.remove()
    where = region_index(masks, outs[0].shape[1])
    assert torch.equal(outs[0][:, where == 0], outs[1][:, where == 0])
    assert not torch.equal(outs[0][:, where == 1], outs[1][:, where == 1])


def test_identitynet_residuals_are_scaled_by_region_strengths(control, adapter) -> None:
    masks = region_masks(2)
    inputs = control_inputs(2, seed=3)
    context = cn_context(adapter, [21, 22], [1, 0])
    plain = run_control(control, inputs, context)
    with RegionalIdentityNet(control, masks, [0.9, 0.3], attention=False):
        scaled = run_control(control, inputs, context)
    strength = region_strength_map(masks, [0.9, 0.3])
    assert (
        strength[0, 0] == pytest.approx(0.9)
        and strength[0, -1] == pytest.approx(0.3)
        and strength[-1, 0] == 0
    )
    assert len(scaled) == 10
    for p, s in zip(plain, scaled, strict=True):
        factor = F.interpolate(strength[None, None], size=p.shape[-2:], mode="bilinear", align_corners=False)
        assert torch.equal(s, p * factor)


def test_one_identity_needs_no_attention_hooks(control, adapter) -> None:
    inputs = control_inputs(2, seed=4)
    context = cn_context(adapter, [21], [1, 0])
    plain = run_control(control, inputs, context)
    mask = torch.ones(1, SIDE, SIDE)
    with RegionalIdentityNet(control, mask, [1.0]):
        assert not any(layer.module._forward_hooks for layer in controlnet_attn2_layers(control))
        same = run_control(control, inputs, context)
    assert all(torch.equal(a, b) for a, b in zip(plain, same, strict=True))


def test_identitynet_hooks_remove_cleanly_and_leave_other_calls_alone(control, adapter) -> None:
    inputs = control_inputs(1, seed=5)
    context = cn_context(adapter, [21, 22], [1])
    before = run_control(control, inputs, context)
    other_before = run_control(control, inputs, context[:, :16])
    hooks = RegionalIdentityNet(control, region_masks(2), [1.0, 1.0])
    assert hooks.installed
    assert any(
        not torch.equal(a, b) for a, b in zip(before, run_control(control, inputs, context), strict=True)
    )
    # A call with another context (a user's unit on the same network) passes untouched.
    other = run_control(control, inputs, context[:, :16])
    assert all(torch.equal(a, b) for a, b in zip(other_before, other, strict=True))
    hooks.remove()
    hooks.remove()
    assert not hooks.installed
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in control.modules())
    after = run_control(control, inputs, context)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_identitynet_hook_takes_a_positional_context(control, adapter) -> None:
    layer = controlnet_attn2_layers(control)[0]
    context = cn_context(adapter, [21, 22], [1])
    x = torch.randn(1, (LATENT // 2) ** 2, layer.module.to_q.in_features)
    with RegionalIdentityNet(control, region_masks(2), None) as hooks, torch.no_grad():
        hooks.latent_size = (LATENT, LATENT)
        by_keyword = layer.module(x, context=context)
        by_position = layer.module(x, context)
    assert torch.equal(by_keyword, by_position)


def test_identity_context_and_strength_checks(adapter) -> None:
    a, b = tokens(adapter, 1), tokens(adapter, 2)
    ctx = identity_context([a, b])
    assert ctx.shape == (1, 32, 2048)
    assert torch.equal(ctx[0, :16], a[0]) and torch.equal(ctx[0, 16:], b[0])
    with pytest.raises(InvalidInputError, match="1 to 4 identities"):
        identity_context([a] * 5)
    with pytest.raises(InvalidInputError, match="Got 1 IdentityNet strengths for 2 regions"):
        region_strength_map(region_masks(2), [1.0])
    with pytest.raises(InvalidInputError, match="differ in size"):
        region_strength_map([torch.ones(4, 4), torch.ones(8, 8)], [1.0, 1.0])


def test_low_precision_within_tolerance(unet, control, adapter) -> None:
    """bfloat16 models: the multi-identity paths stay within the bf16 tolerance of float32."""
    identities = make_identities(adapter, 2)
    inputs = unet_inputs(2, LATENT, seed=6)
    with MultiIPAttentionPatch(unet, adapter, identities) as patch:
        patch.router.begin_step(n_cond=1, n_total=2)
        want = call_unet(unet, inputs)
    low = copy.deepcopy(unet).to(torch.bfloat16)
    with MultiIPAttentionPatch(low, adapter, identities) as patch:
        patch.router.begin_step(n_cond=1, n_total=2)
        got = call_unet(low, {k: v.to(torch.bfloat16) for k, v in inputs.items()}).float()
    assert ((got - want).abs().max() / want.abs().max()).item() <= 3e-2

    masks = region_masks(2)
    cinputs = control_inputs(2, seed=7)
    context = cn_context(adapter, [21, 22], [1, 0])
    with RegionalIdentityNet(control, masks, [0.8, 0.8]):
        want_res = run_control(control, cinputs, context)
    low_cn = copy.deepcopy(control).to(torch.bfloat16)
    with RegionalIdentityNet(low_cn, masks, [0.8, 0.8]):
        got_res = run_control(
            low_cn, {k: v.to(torch.bfloat16) for k, v in cinputs.items()}, context.to(torch.bfloat16)
        )
    for w, g in zip(want_res, got_res, strict=True):
        assert g.dtype == torch.bfloat16
        assert ((g.float() - w).abs().max() / w.abs().max()).item() <= 3e-2


def test_identitynet_fallback_when_to_out_runs_in_slices(control, adapter) -> None:
    """An attention implementation that projects its result in pieces still gets region-bound
    attention (the layer's forward hook recomputes it)."""
    attn = controlnet_attn2_layers(control)[0].module
    context = cn_context(adapter, [21, 22], [1, 0])
    x = torch.randn(2, (LATENT // 2) ** 2, attn.to_q.in_features, generator=torch.Generator().manual_seed(8))
    masks = region_masks(2)

    def sliced_forward(x, context=None, **kwargs):
        b, heads = x.shape[0], attn.heads
        q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
        q, k, v = (t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, x.shape[1], -1)
        half = x.shape[1] // 2
        return torch.cat([attn.to_out(out[:, :half]), attn.to_out(out[:, half:])], dim=1)

    calls: list[int] = []
    counter = attn.to_out.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[1]))
    with RegionalIdentityNet(control, masks, None) as hooks, torch.no_grad():
        hooks.latent_size = (LATENT, LATENT)
        whole = attn(x, context=context)
        assert calls == [x.shape[1]]  # replaced inside the layer's own to_out call: one projection
        attn.forward = sliced_forward
        try:
            pieces = attn(x, context=context)
        finally:
            del attn.forward
            counter.remove()
    assert len(calls) == 4  # two pieces, then the fallback's whole projection
    want = ref_control_layer(attn, x, context, masks, 2)
    for got in (whole, pieces):
        assert ((got.double() - want).abs().max() / want.abs().max()).item() <= 1e-5
