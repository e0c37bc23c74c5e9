"""Per-step cost of several identities in one image, relative to one identity.

One sampling step = one UNet call (cond + uncond rows) with the face-token attention hooks,
plus IdentityNet. Two IdentityNet designs for k identities are compared:

- **one masked pass**: one IdentityNet call whose context holds all k identities' tokens
  (``[B, 16·k, 2048]``), :class:`RegionalIdentityNet` confining each region's attention to
  its identity and scaling the residuals by ``Σ strength_r · mask_r``;
- **one pass per identity**: k IdentityNet calls (as k ControlNet units would make), each
  with one identity's 16 tokens and its residuals scaled by its own ``strength_r · mask_r``,
  the k residual sets summed.

The models are SDXL-shaped stand-ins with random weights and the real attention widths
(70 UNet attn2 layers of 640/1280 channels, 64-wide heads, 2048-wide context; IdentityNet =
the UNet's encoder half + hint encoder + 1×1 convolutions, 34 attn2 layers). Variants run in
the same process, interleaved round by round in rotating order; each round installs the
variant's hooks, warms up once and times ``--steps`` steps. Defaults (CPU, float32, 32×32
latent) take several minutes on two cores and about 12 GB of memory. On a shared, busy CPU,
``--threads 1 --clock cpu`` (this process's CPU time) gives steadier ratios. On a GPU::

    python benchmarks/multi_identity.py --device cuda --dtype float16 --latent 128
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import base_parser, random_ip_layers, synchronize, unet_call_inputs
from instantid_ext.method.attention import IPAttentionPatch, IPIdentity, MultiIPAttentionPatch
from instantid_ext.method.identitynet_regions import RegionalIdentityNet, ResidualScaler, region_strength_map
from instantid_ext.method.ip_adapter import IPAdapter
from instantid_ext.method.resampler import Resampler
from tests.fakes.sgm_controlnet import make_controlnet
from tests.fakes.sgm_unet import make_unet

WIDTHS = (320, 640, 1280)
ID_WEIGHT, IDNET_STRENGTH = 0.8, 0.8


def band_masks(count: int, height: int, width: int) -> torch.Tensor:
    """``count`` side-by-side vertical bands (the ``left``/``right`` split), as [k, H, W]."""
    masks = torch.zeros(count, height, width)
    edges = [round(i * width / count) for i in range(count + 1)]
    for r in range(count):
        masks[r, :, edges[r] : edges[r + 1]] = 1.0
    return masks


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0], "rows per call (cond + uncond)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: its default)")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="cpu: this process's CPU time (single-threaded CPU runs on a shared, busy machine)",
    )
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    unet = make_unet(widths=WIDTHS, d_head=64).to(device, dtype)
    control = make_controlnet(seed=1, widths=WIDTHS, d_head=64).to(device, dtype)
    to_k, to_v = random_ip_layers(unet)
    adapter = IPAdapter(Resampler(dim=128, depth=1, heads=2).eval(), to_k, to_v)
    g = torch.Generator(device="cpu").manual_seed(0)
    uncond = adapter.uncond_tokens()
    conds = [adapter.face_tokens(torch.randn(512, generator=g) * 20) for _ in range(4)]

    b, n = args.batch, args.latent
    x, t, text, y = unet_call_inputs(g, b, n, device, dtype)
    hint = torch.rand(b, 3, 8 * n, 8 * n, generator=g).to(device, dtype)
    n_cond = max(b // 2, 1)

    def context(identities: list[int]) -> torch.Tensor:
        """IdentityNet context: cond rows first (the WebUI's layout), then uncond rows."""
        cond = torch.cat([conds[i][0] for i in identities])
        zero = torch.cat([uncond[0] for _ in identities])
        rows = [cond if r < n_cond else zero for r in range(b)]
        return torch.stack(rows).to(device, dtype)

    timings: dict[str, dict[str, list[float]]] = {}

    def variant(count: int, design: str) -> tuple[Callable[[], tuple[float, float]], Callable[[], None]]:
        masks = band_masks(count, 8 * n, 8 * n)
        if count == 1:
            # Today's single-identity path: one patch with the face mask, one IdentityNet pass
            # whose residuals are multiplied by the mask (the "face region only" option).
            masks = torch.zeros(1, 8 * n, 8 * n)
            masks[0, 2 * n : 6 * n, 2 * n : 6 * n] = 1.0
            patch = IPAttentionPatch(unet, adapter, conds[0], uncond, scale=ID_WEIGHT, mask=masks[0])
        else:
            identities = [IPIdentity(conds[r], uncond, ID_WEIGHT, masks[r]) for r in range(count)]
            patch = MultiIPAttentionPatch(unet, adapter, identities)
        hooks: list[RegionalIdentityNet] = []
        if design == "one masked pass":
            hooks.append(RegionalIdentityNet(control, masks, [IDNET_STRENGTH] * count))
            contexts = [context(list(range(count)))]
            scalers: list[ResidualScaler | None] = [None]
        else:
            contexts = [context([r]) for r in range(count)]
            scalers = [
                ResidualScaler(region_strength_map(masks[r : r + 1], [IDNET_STRENGTH])) for r in range(count)
            ]

        @torch.no_grad()
        def step() -> tuple[float, float]:
            patch.router.begin_step(n_cond=n_cond, n_total=b, progress=0.5)
            start = clock()
            total = None
            for ctx, scaler in zip(contexts, scalers, strict=True):
                residuals = control(x=x, hint=hint, timesteps=t, context=ctx, y=y)
                if scaler is not None:
                    residuals = scaler(residuals)
                total = residuals if total is None else [a + c for a, c in zip(total, residuals, strict=True)]
            synchronize(device)
            middle = clock()
            unet(x, timesteps=t, context=text, y=y)
            synchronize(device)
            return middle - start, clock() - middle

        def teardown() -> None:
            patch.remove()
            for hook in hooks:
                hook.remove()

        return step, teardown

    designs = ("one masked pass", "one pass per identity")
    names = [(1, "one masked pass")] + [(k, d) for k in (2, 4) for d in designs]
    for count, design in names:
        timings[f"{count}|{design}"] = {"idnet": [], "unet": []}
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for count, design in names[shift:] + names[:shift]:
            step, teardown = variant(count, design)
            try:
                step()  # warm-up: the hooks' one-time precompute is per generation
                for _ in range(args.steps):
                    idnet, unet_time = step()
                    timings[f"{count}|{design}"]["idnet"].append(idnet * 1000)
                    timings[f"{count}|{design}"]["unet"].append(unet_time * 1000)
            finally:
                teardown()
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)

    base_key = "1|one masked pass"
    base = statistics.median(a + c for a, c in zip(*timings[base_key].values(), strict=True))
    print(f"device={device} dtype={args.dtype} latent={n}x{n} batch={b}", end=" ")
    print(f"rounds={args.rounds} steps={args.steps} threads={torch.get_num_threads()} clock={args.clock}")
    header = f"{'identities':<11}{'IdentityNet design':<24}{'UNet ms':>10}{'IdNet ms':>10}"
    print(f"{header}{'step ms':>10}{'vs 1':>8}")
    for count, design in names:
        samples = timings[f"{count}|{design}"]
        steps = [a + c for a, c in zip(samples["idnet"], samples["unet"], strict=True)]
        med = statistics.median(steps)
        label = "(single identity)" if count == 1 else design
        print(
            f"{count:<11}{label:<24}{statistics.median(samples['unet']):>10.1f}"
            f"{statistics.median(samples['idnet']):>10.1f}{med:>10.1f}{med / base:>7.2f}×"
        )


if __name__ == "__main__":
    main()
