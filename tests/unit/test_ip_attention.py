"""The attn2 hooks against diffusers' IP-Adapter attention processor, on an sgm-shaped UNet."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0
from torch import nn

from instantid_ext.errors import IncompatibleModelError, InvalidInputError
from instantid_ext.method.attention import IPAttentionPatch
from instantid_ext.method.ip_adapter import IPAdapter, load_ip_adapter
from instantid_ext.method.rows import RowRouter
from instantid_ext.method.sdxl_layers import sdxl_attn2_layers
from tests.fakes.sgm_unet import controlnet_marked, make_unet, unet_inputs
from tests.fakes.weights import adapter_checkpoint, save_bin

SCALE = 0.8
LATENT = 16


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    return make_unet(seed=0)


@pytest.fixture(scope="module")
def checkpoint(unet: nn.Module) -> dict:
    return adapter_checkpoint(unet, seed=5)


@pytest.fixture(scope="module")
def adapter(checkpoint: dict, tmp_path_factory: pytest.TempPathFactory) -> IPAdapter:
    path = save_bin(checkpoint, tmp_path_factory.mktemp("ip") / "ip-adapter.bin")
    return load_ip_adapter(path, dtype=torch.float32)


@pytest.fixture(scope="module")
def diffusers_key_of_ldm_name() -> dict[str, int]:
    """attn2 module path (ldm naming) → IP key id, derived from diffusers' own processor order."""
    model = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=(2, 4, 8),
        norm_num_groups=8,
    )
    mapping = {}
    for index, name in enumerate(model.attn_processors):
        if ".attn2." not in name:
            continue
        m = re.match(r"(down|up|mid)_block[s]?\.?(\d*)\.?attentions\.(\d+)\.transformer_blocks\.(\d+)", name)
        assert m, name
        kind, b, a, j = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
        if kind == "down":
            block = f"input_blocks.{3 * int(b) + a + 1}.1"
        elif kind == "up":
            block = f"output_blocks.{3 * int(b) + a}.1"
        else:
            block = "middle_block.1"
        mapping[f"{block}.transformer_blocks.{j}.attn2"] = index
    return mapping


class OracleAttn2(nn.Module):
    """An sgm attn2 replaced by diffusers' Attention + IPAdapterAttnProcessor2_0 with the same weights."""

    def __init__(self, sgm_attn: nn.Module, to_k_ip: torch.Tensor, to_v_ip: torch.Tensor) -> None:
        super().__init__()
        hidden = sgm_attn.to_q.out_features
        heads = sgm_attn.heads
        self.attn = Attention(
            query_dim=hidden, cross_attention_dim=2048, heads=heads, dim_head=hidden // heads, out_bias=True
        )
        self.attn.set_processor(IPAdapterAttnProcessor2_0(hidden, 2048, num_tokens=(16,), scale=SCALE))
        sd = {
            "to_q.weight": sgm_attn.to_q.weight,
            "to_k.weight": sgm_attn.to_k.weight,
            "to_v.weight": sgm_attn.to_v.weight,
            "to_out.0.weight": sgm_attn.to_out[0].weight,
            "to_out.0.bias": sgm_attn.to_out[0].bias,
            "processor.to_k_ip.0.weight": to_k_ip,
            "processor.to_v_ip.0.weight": to_v_ip,
        }
        self.attn.load_state_dict(sd, strict=True)
        self.ip_tokens: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None

    def forward(self, x, context=None, **kwargs):
        return self.attn(x, encoder_hidden_states=(context, [self.ip_tokens]))


@pytest.fixture(scope="module")
def oracle_unet(unet: nn.Module, checkpoint: dict, diffusers_key_of_ldm_name: dict[str, int]) -> nn.Module:
    oracle = copy.deepcopy(unet)
    ip = checkpoint["ip_adapter"]
    for name, key_id in diffusers_key_of_ldm_name.items():
        parent_name, child = name.rsplit(".", 1)
        parent = oracle.get_submodule(parent_name)
        sgm_attn = getattr(parent, child)
        setattr(
            parent,
            child,
            OracleAttn2(sgm_attn, ip[f"{key_id}.to_k_ip.weight"], ip[f"{key_id}.to_v_ip.weight"]),
        )
    return oracle.eval()


def set_oracle_tokens(oracle: nn.Module, tokens: torch.Tensor) -> None:
    for module in oracle.modules():
        if isinstance(module, OracleAttn2):
            module.ip_tokens = tokens


def call(unet: nn.Module, inputs: dict[str, torch.Tensor], rows: slice | None = None) -> torch.Tensor:
    kw = inputs if rows is None else {k: v[rows] for k, v in inputs.items()}
    with torch.no_grad():
        return unet(kw["x"], timesteps=kw["timesteps"], context=kw["context"], y=kw["y"])


def face_tokens(adapter: IPAdapter, seed: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    emb = torch.randn(512, generator=torch.Generator().manual_seed(seed)) * 20
    return adapter.face_tokens(emb), adapter.uncond_tokens()


def oracle_rows(
    oracle: nn.Module, inputs, cond: torch.Tensor, uncond: torch.Tensor, flags: list[int]
) -> torch.Tensor:
    tokens = torch.cat([cond if f else uncond for f in flags])
    set_oracle_tokens(oracle, tokens)
    return call(oracle, inputs)


def test_layer_walk_matches_diffusers_numbering(
    unet: nn.Module, diffusers_key_of_ldm_name: dict[str, int]
) -> None:
    layers = sdxl_attn2_layers(unet)
    assert [layer.key_id for layer in layers] == list(range(1, 140, 2))
    assert {layer.name: layer.key_id for layer in layers} == diffusers_key_of_ldm_name


def test_cond_and_uncond_rows_match_oracle(unet, oracle_unet, adapter) -> None:
    cond, uncond = face_tokens(adapter)
    inputs = unet_inputs(4, LATENT)
    flags = [1, 1, 0, 0]  # the WebUI's layout: cond rows first, then uncond
    want = oracle_rows(oracle_unet, inputs, cond, uncond, flags)
    with IPAttentionPatch(unet, adapter, cond, uncond, scale=SCALE) as patch:
        patch.router.begin_step(n_cond=2, n_total=4, progress=0.5)
        got = call(unet, inputs)
    diff = (got - want).abs().max().item()
    print(f"UNet with IP hooks vs diffusers IPAdapterAttnProcessor2_0: max abs diff {diff:.3e}")
    assert diff <= 1e-5
    plain = call(unet, inputs)
    assert (plain - want).abs().max() > 1e-3  # the face tokens really change the output


@pytest.mark.parametrize(
    ("mode", "n_cond", "calls"),
    [
        ("cond+uncond in one call", 2, [slice(0, 4)]),
        ("chunked by batch size", 2, [slice(0, 2), slice(2, 4)]),
        ("cond and uncond separately", 2, [slice(0, 2), slice(2, 4)]),
        ("odd chunks", 3, [slice(0, 2), slice(2, 4), slice(4, 6)]),
        ("uncond skipped", 2, [slice(0, 2)]),
        ("single row", 1, [slice(0, 1), slice(1, 2)]),
    ],
)
def test_every_batching_mode_picks_the_right_tokens(unet, oracle_unet, adapter, mode, n_cond, calls) -> None:
    n_total = calls[-1].stop
    inputs = unet_inputs(n_total, LATENT, seed=3)
    cond, uncond = face_tokens(adapter)
    flags = [1 if r < n_cond else 0 for r in range(n_total)]
    want = oracle_rows(oracle_unet, inputs, cond, uncond, flags)
    with IPAttentionPatch(unet, adapter, cond, uncond, scale=SCALE) as patch:
        patch.router.begin_step(n_cond=n_cond, n_total=n_total if mode != "uncond skipped" else 4)
        got = torch.cat([call(unet, inputs, rows) for rows in calls])
    assert (got - want[: got.shape[0]]).abs().max() <= 1e-5, mode


def test_controlnet_marker_routes_rows(unet, oracle_unet, adapter) -> None:
    """Without a layout from the host, ControlNet's ±1024 marker token tells the rows apart."""
    cond, uncond = face_tokens(adapter)
    inputs = unet_inputs(3, LATENT, seed=4)
    flags = [0, 1, 0]
    want = oracle_rows(oracle_unet, inputs, cond, uncond, flags)
    with (
        controlnet_marked(unet, inputs, [-1024.0, 1024.0, -1024.0]) as marked,
        IPAttentionPatch(unet, adapter, cond, uncond, scale=SCALE),
    ):
        got = call(unet, marked)
    assert (got - want).abs().max() <= 1e-5


def test_removal_restores_exact_outputs_and_is_idempotent(unet, adapter) -> None:
    inputs = unet_inputs(2, LATENT, seed=5)
    before = call(unet, inputs)
    cond, uncond = face_tokens(adapter)
    patch = IPAttentionPatch(unet, adapter, cond, uncond)
    assert not torch.equal(call(unet, inputs), before)
    patch.remove()
    patch.remove()
    assert torch.equal(call(unet, inputs), before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


def test_nothing_leaks_after_an_exception_inside_the_forward_pass(unet, adapter) -> None:
    inputs = unet_inputs(2, LATENT, seed=6)
    before = call(unet, inputs)

    def explode(module, args):
        raise KeyboardInterrupt  # an interrupted job

    handle = unet.middle_block.register_forward_pre_hook(explode)
    emb = torch.randn(512)
    try:
        patch = IPAttentionPatch(
            unet, adapter, adapter.face_tokens(emb), adapter.uncond_tokens(), scale=SCALE
        )
        with pytest.raises(KeyboardInterrupt), patch:
            call(unet, inputs)
    finally:
        handle.remove()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())
    assert torch.equal(call(unet, inputs), before)


def test_each_patch_removes_only_its_own_hooks(unet, adapter) -> None:
    """Two patches (two jobs) on one UNet: removing one leaves the other working."""
    cond, uncond = face_tokens(adapter)
    inputs = unet_inputs(2, LATENT, seed=5)
    plain = call(unet, inputs)
    first = IPAttentionPatch(unet, adapter, cond, uncond)
    alone = call(unet, inputs)
    second = IPAttentionPatch(unet, adapter, cond, uncond, scale=0.0)
    second.remove()
    assert torch.equal(call(unet, inputs), alone)
    first.remove()
    assert torch.equal(call(unet, inputs), plain)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


@pytest.mark.parametrize(
    ("progress", "applied"), [(0.0, False), (0.19, False), (0.2, True), (0.6, True), (0.61, False)]
)
def test_step_range(unet, adapter, progress: float, applied: bool) -> None:
    inputs = unet_inputs(2, LATENT, seed=7)
    plain = call(unet, inputs)
    cond, uncond = face_tokens(adapter)
    with IPAttentionPatch(unet, adapter, cond, uncond, start=0.2, end=0.6) as patch:
        patch.router.begin_step(n_cond=1, n_total=2, progress=progress)
        got = call(unet, inputs)
    assert torch.equal(got, plain) != applied


def test_zero_scale_is_a_no_op(unet, adapter) -> None:
    inputs = unet_inputs(2, LATENT, seed=8)
    cond, uncond = face_tokens(adapter)
    with IPAttentionPatch(unet, adapter, cond, uncond, scale=0.0):
        got = call(unet, inputs)
    assert torch.equal(got, call(unet, inputs))


def _reference_masked_layer(attn: nn.Module, x, context, ip_k, ip_v, scale, region_mask) -> torch.Tensor:
    """InstantID's ``_full`` IPAttnProcessor in float64, with its nearest-downsampled region mask."""
    x, context = x.double(), context.double()
    heads = attn.heads

    def sdpa(q, k, v):
        b = q.shape[0]
        q, k, v = (t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
        w = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
        return (w @ v).transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1])

    W = {n: p.double() for n, p in attn.named_parameters()}
    q = x @ W["to_q.weight"].T
    h = sdpa(q, context @ W["to_k.weight"].T, context @ W["to_v.weight"].T)
    ip = sdpa(q, ip_k.double(), ip_v.double())
    H, Wd = region_mask.shape
    ratio = (H * Wd / x.shape[1]) ** 0.5
    mask = torch.nn.functional.interpolate(
        region_mask[None, None].double(), scale_factor=1 / ratio, mode="nearest"
    )
    h = h + scale * ip * mask.reshape(1, -1, 1)
    return h @ W["to_out.0.weight"].T + W["to_out.0.bias"]


def test_region_mask_matches_reference_formula(unet, adapter) -> None:
    cond, uncond = face_tokens(adapter)
    mask = torch.zeros(128, 128)
    mask[32:96, 16:80] = 1.0  # a face box in output pixels (latent 16 → image 128)
    layer = sdxl_attn2_layers(unet)[0]  # input_blocks.4: an 8×8 token grid
    captured = {}

    def grab(module, args, kwargs, output):
        captured["x"], captured["context"], captured["out"] = args[0], kwargs["context"], output

    inputs = unet_inputs(1, LATENT, seed=9)
    with IPAttentionPatch(unet, adapter, cond, uncond, scale=SCALE, mask=mask) as patch:
        patch.router.begin_step(n_cond=1, n_total=1)
        handle = layer.module.register_forward_hook(grab, with_kwargs=True)
        try:
            call(unet, inputs)
        finally:
            handle.remove()
    # The grab hook ran before ours, so recompute our output from the captured input.
    with IPAttentionPatch(unet, adapter, cond, uncond, scale=SCALE, mask=mask) as patch:
        patch.router.begin_step(n_cond=1, n_total=1)
        patch.router.latent_size = (LATENT, LATENT)
        patch.router.route(1, torch.device("cpu"))
        with torch.no_grad():
            got = layer.module(captured["x"], context=captured["context"])
    ip_k = adapter.to_k_ip[0](cond)
    ip_v = adapter.to_v_ip[0](cond)
    want = _reference_masked_layer(layer.module, captured["x"], captured["context"], ip_k, ip_v, SCALE, mask)
    diff = (got.double() - want).abs().max().item()
    print(f"masked attn2 layer vs float64 reference formula: max abs diff {diff:.3e}")
    assert diff <= 1e-5
    assert torch.allclose(got, captured["out"])  # same as inside the full UNet pass
    with torch.no_grad():
        plain = layer.module(captured["x"], context=captured["context"])
    inside = torch.nn.functional.interpolate(mask[None, None], size=(8, 8), mode="nearest").reshape(-1) > 0
    assert torch.equal(got[0, ~inside], plain[0, ~inside])  # no face tokens outside the face box
    assert (got[0, inside] - plain[0, inside]).abs().min() > 0


def test_bfloat16_within_tolerance(unet, oracle_unet, adapter) -> None:
    cond, uncond = face_tokens(adapter)
    inputs = unet_inputs(2, LATENT, seed=10)
    want = oracle_rows(oracle_unet, inputs, cond, uncond, [1, 0])
    low = copy.deepcopy(unet).to(torch.bfloat16)
    with IPAttentionPatch(low, adapter, cond, uncond, scale=SCALE) as patch:
        patch.router.begin_step(n_cond=1, n_total=2)
        got = call(low, {k: v.to(torch.bfloat16) for k, v in inputs.items()}).float()
    relative = ((got - want).abs().max() / want.abs().max()).item()
    print(f"bfloat16 UNet with IP hooks vs float32 oracle: max abs diff / max |ref| {relative:.3e}")
    assert relative <= 3e-2


def test_rejects_non_sdxl_unets(adapter) -> None:
    cond, uncond = face_tokens(adapter)
    with pytest.raises(IncompatibleModelError, match="refiner"):
        IPAttentionPatch(make_unet(context_dim=1280), adapter, cond, uncond)
    with pytest.raises(IncompatibleModelError, match="cross-attention layers"):
        IPAttentionPatch(make_unet(depths=(1, 4)), adapter, cond, uncond)


def test_rejects_bad_ranges_and_tokens(unet, adapter) -> None:
    cond, uncond = face_tokens(adapter)
    with pytest.raises(InvalidInputError, match="start/end"):
        IPAttentionPatch(unet, adapter, cond, uncond, start=0.7, end=0.2)
    with pytest.raises(InvalidInputError, match="face tokens"):
        IPAttentionPatch(unet, adapter, cond[:, :8], uncond)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


def test_router_defaults_to_cond_outside_layout() -> None:
    router = RowRouter()
    router.route(3, torch.device("cpu"))
    assert router.flags.tolist() == [1, 1, 1]
    router.begin_step(n_cond=1, n_total=2)
    router.route(2, torch.device("cpu"))
    assert router.flags.tolist() == [1, 0]
    router.route(2, torch.device("cpu"))  # an extra call beyond the declared rows
    assert router.flags.tolist() == [1, 1]


# -- the output projection as the host runs it (LoRA) --------------------------------------------------
def lora_deltas(unet: nn.Module, seed: int = 21) -> dict[nn.Linear, torch.Tensor]:
    """A random low-rank delta for every attn2 output projection (a LoRA on ``to_out``)."""
    g = torch.Generator().manual_seed(seed)
    deltas = {}
    for layer in sdxl_attn2_layers(unet):
        linear = layer.module.to_out[0]
        down = torch.randn(4, linear.in_features, generator=g) * 0.05
        up = torch.randn(linear.out_features, 4, generator=g) * 0.05
        deltas[linear] = up @ down
    return deltas


def merged_at_first_forward(monkeypatch, deltas: dict[nn.Linear, torch.Tensor]) -> None:
    """The WebUI's Lora extension: ``Linear.forward`` merges the delta into the weight, in place,
    the first time each layer runs (``network_apply_weights``)."""
    forward = nn.Linear.forward
    pending = dict(deltas)

    def network_linear_forward(self, x):
        delta = pending.pop(self, None)
        if delta is not None:
            with torch.no_grad():
                self.weight += delta
        return forward(self, x)

    monkeypatch.setattr(nn.Linear, "forward", network_linear_forward)


def functional(monkeypatch, deltas: dict[nn.Linear, torch.Tensor]) -> None:
    """``lora_functional``: the weight stays; the delta's output is added to the layer's."""
    forward = nn.Linear.forward

    def network_linear_forward(self, x):
        out = forward(self, x)
        delta = deltas.get(self)
        return out if delta is None else out + x @ delta.T

    monkeypatch.setattr(nn.Linear, "forward", network_linear_forward)


@pytest.mark.parametrize("mode", ["merged at first forward", "functional"])
def test_the_face_term_goes_through_the_output_projection_as_it_runs(
    unet, adapter, monkeypatch, mode
) -> None:
    """With a LoRA on the output projections, the face attention passes through each projection
    as the layer runs it; the same as the UNet with the LoRA merged beforehand."""
    cond, uncond = face_tokens(adapter)
    inputs = unet_inputs(2, LATENT, seed=12)
    reference = copy.deepcopy(unet)
    with torch.no_grad():
        for linear, delta in lora_deltas(reference).items():
            linear.weight += delta
    with IPAttentionPatch(reference, adapter, cond, uncond, scale=SCALE) as patch:
        patch.router.begin_step(n_cond=1, n_total=2)
        expected = call(reference, inputs)
    hosted = copy.deepcopy(unet)
    deltas = lora_deltas(hosted)
    (merged_at_first_forward if mode != "functional" else functional)(monkeypatch, deltas)
    with IPAttentionPatch(hosted, adapter, cond, uncond, scale=SCALE) as patch:
        patch.router.begin_step(n_cond=1, n_total=2)
        got = call(hosted, inputs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
