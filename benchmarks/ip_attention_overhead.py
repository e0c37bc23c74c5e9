"""How much the InstantID attention hooks add to one SDXL UNet call.

Builds an SDXL-shaped UNet (the real block structure and attn2 widths: 70 cross-attention
layers of 640/1280 channels, 64-wide heads, 2048-wide context) with random weights, then
times a UNet call without InstantID, with our hooks (AUTOMATIC1111), with our attn2 replace
patches run the way a Forge-family host runs them (``to_out(patch(to_q(x), to_k(c), to_v(c)))``
in each layer), and with a straightforward per-step implementation (keys/values and the query
recomputed in every call, as a naive port does), all on the same inputs. Run on a GPU for
numbers that matter::

    python benchmarks/ip_attention_overhead.py --device cuda --dtype float16 --latent 128

The default (CPU, float32, a 32×32 latent) finishes in about a minute on two cores.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import base_parser, random_ip_layers, synchronize, unet_call_inputs
from instantid_ext.method.attention import IPAttentionPatch, IPIdentity
from instantid_ext.method.attn2_replace import SDXL_ATTN2_KEYS, FaceAttention
from instantid_ext.method.ip_adapter import IPAdapter
from instantid_ext.method.resampler import Resampler
from instantid_ext.method.sdxl_layers import sdxl_attn2_layers
from tests.fakes.sgm_unet import make_unet


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    fn()  # warm-up (and the one-time precompute of the hooks)
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return times


def naive_hooks(unet: torch.nn.Module, adapter: IPAdapter, tokens: torch.Tensor, scale: float) -> list:
    """The textbook version: per call, q = to_q(x), k/v = to_k_ip/to_v_ip(tokens), SDPA, to_out."""
    handles = []
    for layer, to_k, to_v in zip(sdxl_attn2_layers(unet), adapter.to_k_ip, adapter.to_v_ip, strict=True):
        attn = layer.module

        def hook(module, args, output, to_k=to_k, to_v=to_v):
            x = args[0]
            b, s, c = x.shape
            h = module.heads
            q = module.to_q(x).view(b, s, h, -1).transpose(1, 2)
            t = tokens.to(x.dtype).expand(b, -1, -1)
            k = F.linear(t, to_k.weight.to(x.dtype)).view(b, -1, h, c // h).transpose(1, 2)
            v = F.linear(t, to_v.weight.to(x.dtype)).view(b, -1, h, c // h).transpose(1, 2)
            ip = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, c)
            return output + scale * F.linear(ip, module.to_out[0].weight)

        handles.append(attn.register_forward_hook(hook))
    return handles


def as_replace_patches(unet: torch.nn.Module, face: FaceAttention, chunks: list[int]) -> list:
    """Each attn2 layer computes as a Forge-family host's transformer block does when the layer has
    a replace patch: project, patch, ``to_out``. Returns the forwards to put back."""
    patches = face.patches()
    originals = []
    for layer in sdxl_attn2_layers(unet):
        attn = layer.module
        patch = patches[SDXL_ATTN2_KEYS[layer.ip_index]]
        extra = {"n_heads": attn.heads, "cond_or_uncond": chunks}

        def forward(x, context=None, *args, attn=attn, patch=patch, extra=extra, **kwargs):
            return attn.to_out(patch(attn.to_q(x), attn.to_k(context), attn.to_v(context), extra))

        originals.append((attn, attn.forward))
        attn.forward = forward
    return originals


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0], "rows per UNet call (cond + uncond)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    unet = make_unet(widths=(320, 640, 1280), d_head=64).to(device, dtype)
    resampler = Resampler(dim=1280, depth=4, heads=20)
    to_k, to_v = random_ip_layers(unet)
    adapter = IPAdapter(resampler.eval(), to_k, to_v)
    cond = adapter.face_tokens(torch.randn(512) * 20)
    uncond = adapter.uncond_tokens()

    g = torch.Generator(device="cpu").manual_seed(0)
    b, n = args.batch, args.latent
    x, t, ctx, y = unet_call_inputs(g, b, n, device, dtype)

    @torch.no_grad()
    def step() -> None:
        unet(x, timesteps=t, context=ctx, y=y)

    def with_ours():
        patch = IPAttentionPatch(unet, adapter, cond, uncond, scale=0.8)

        def run() -> None:
            patch.router.begin_step(n_cond=max(b // 2, 1), n_total=b)
            step()

        return run, patch.remove

    def with_naive():
        handles = naive_hooks(unet, adapter, cond.to(device), 0.8)
        return step, lambda: [h.remove() for h in handles]

    def with_replace_patch():
        face = FaceAttention(adapter, [IPIdentity(cond, uncond, 0.8)])
        originals = as_replace_patches(unet, face, [0, 1] if b % 2 == 0 else [0])

        def teardown() -> None:
            for attn, forward in originals:
                attn.forward = forward

        return step, teardown

    def without():
        return step, lambda: None

    # Variants are interleaved round by round (in rotating order) so that drift in the
    # machine's speed affects them alike; each round warms up first (the hooks' one-time
    # precompute is per generation, not per step, so it is not timed).
    variants = {
        "UNet alone": without,
        "+ InstantID hooks": with_ours,
        "+ attn2 replace patches": with_replace_patch,
        "+ naive per-step hooks": with_naive,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_index in range(args.repeats):
        turn = round_index % len(names)
        for name in names[turn:] + names[:turn]:
            run, teardown = variants[name]()
            try:
                times[name] += timed(run, device, 2)
            finally:
                teardown()
    plain = times["UNet alone"]
    base = statistics.median(plain)
    print(f"device={device} dtype={args.dtype} latent={n}x{n} batch={b}")
    for name, samples in times.items():
        med = statistics.median(samples)
        print(f"{name:<24} {med:9.2f} ms   (+{med - base:8.2f} ms, {100 * (med - base) / base:5.1f} %)")


if __name__ == "__main__":
    main()
