"""The live suite's probe (``tests/live/probe``) on the stand-in host.

The probe recomputes one attn2 layer's decoupled cross-attention unfolded, with the layer's
projections as they run, and compares it with what the layer returned under InstantID's patch.
Here it runs on the stand-in UNet with a LoRA that, like the WebUI's Lora extension, is merged
into each to_q/to_out weight in place the first time that Linear runs: the reference must match
the patch within 1e-4, a patch with a known fault must be caught, and the probe must leave the
generation and the UNet as they were.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instantid_ext.method.attention import IPAttentionPatch, _LayerCache
from instantid_ext.method.sdxl_layers import sdxl_attn2_layers
from tests.webui import fake_host
from tests.webui.test_job import enabled, job, no_hooks

PROBE_SCRIPT = Path(__file__).resolve().parents[1] / "live" / "probe" / "scripts" / "live_probe.py"
LORA = "stand-in-attn2"
TOLERANCE = 1e-4


@pytest.fixture
def probe(host) -> ModuleType:
    """The probe's script module, loaded as the WebUI loads an extension's script."""
    spec = importlib.util.spec_from_file_location("instantid_live_probe", PROBE_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def own_unet(unet) -> nn.Module:
    """A copy of the stand-in UNet that the LoRA may change."""
    return copy.deepcopy(unet)


def lora_merged_at_first_forward(
    monkeypatch, unet: nn.Module, seed: int = 8
) -> dict[nn.Linear, torch.Tensor]:
    """A rank-4 LoRA on every attn2's to_q and to_out.0, merged as the WebUI's Lora extension
    merges it: into the weight, in place, the first time each Linear runs, keeping a backup and
    the names of what is merged (``network_weights_backup``, ``network_current_names``)."""
    g = torch.Generator().manual_seed(seed)
    deltas: dict[nn.Linear, torch.Tensor] = {}
    for layer in sdxl_attn2_layers(unet):
        for linear in (layer.module.to_q, layer.module.to_out[0]):
            down = torch.randn(4, linear.in_features, generator=g) * linear.in_features**-0.5
            up = torch.randn(linear.out_features, 4, generator=g) * 0.25
            deltas[linear] = up @ down
    forward = nn.Linear.forward

    def network_linear_forward(self, x):
        delta = deltas.get(self)
        if delta is not None and not getattr(self, "network_current_names", ()):
            with torch.no_grad():
                self.network_weights_backup = self.weight.detach().clone()
                self.weight += delta
            self.network_current_names = ((LORA, 1.0, 1.0, None),)
        return forward(self, x)

    monkeypatch.setattr(nn.Linear, "forward", network_linear_forward)
    return deltas


def probed_job(host, probe: ModuleType, unet: nn.Module, layer: int | None, **settings: Any):
    """An InstantID job with the probe's script first (its folder sorts before InstantID's)."""
    p = job(host, unet, enabled(), **settings)
    script = probe.LiveProbe()
    script.args_from = len(p.script_args)
    p.script_args = (*p.script_args, layer is not None, layer or 0)
    script.args_to = len(p.script_args)
    p.scripts.alwayson_scripts.insert(0, script)
    return p


def report(result: fake_host.Processed) -> dict[str, Any]:
    return {
        k.removeprefix("Live probe "): v
        for k, v in result.extra_generation_params.items()
        if k.startswith("Live probe")
    }


@pytest.mark.parametrize("layer", [0, 37, 69])
def test_the_unfolded_reference_equals_the_patch_with_a_lora_merged_at_first_forward(
    host, probe, own_unet, monkeypatch, layer
) -> None:
    deltas = lora_merged_at_first_forward(monkeypatch, own_unet)
    result = fake_host.run_job(probed_job(host, probe, own_unet, layer))
    assert fake_host.HOOK_ERRORS == []
    found = report(result)
    assert "error" not in found, found
    name = sdxl_attn2_layers(own_unet)[layer].name
    assert found["layer"] == f"{layer} {name}"
    assert found["rows"] == "cond,uncond"
    assert found["scale"] == pytest.approx(0.8)
    assert found["LoRA"] == LORA
    assert found["rel err"] <= TOLERANCE, found
    # The comparison is sharp: the face term and the LoRA each move the output far more.
    assert found["face share"] > 100 * TOLERANCE, found
    assert found["LoRA share"] > 100 * TOLERANCE, found
    assert all(getattr(linear, "network_current_names", ()) for linear in deltas)
    assert no_hooks(own_unet)


@pytest.mark.parametrize(
    ("cfg_mode", "rows"), [("together", "cond,uncond"), ("chunked", "cond"), ("skip_uncond", "cond")]
)
def test_each_rows_kind_comes_from_the_denoisers_layout(host, probe, own_unet, cfg_mode, rows) -> None:
    found = report(fake_host.run_job(probed_job(host, probe, own_unet, 12, cfg_mode=cfg_mode)))
    assert found["rows"] == rows
    assert found["LoRA"] == "none"
    assert "LoRA share" not in found
    assert found["rel err"] <= TOLERANCE, found


def _swapped_rows(original):
    def select(self, cache, batch):
        flipped = _LayerCache(keys=cache.keys.flip(0), values=cache.values.flip(0))
        return original(self, flipped, batch)

    return select


def _no_face_term(self, hook, query, hidden):
    return hidden


def _weights_kept_at_install(original):
    def install(self):
        self.stale = {id(hook): hook.layer.module.to_q.weight.detach().clone() for hook in self._layers}
        original(self)

    return install


def _stale_query(self, hook):
    """A query recomputed from to_q's weight as it was when the patch was installed."""

    def capture(module, args, output):
        hook.query = F.linear(args[0], self.stale[id(hook)]) if self.active else None

    return capture


FAULTS = ["cond and uncond tokens swapped", "face term dropped", "query from the weights before the merge"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_faulty_patch_is_caught(host, probe, own_unet, monkeypatch, fault) -> None:
    lora_merged_at_first_forward(monkeypatch, own_unet)
    if fault == FAULTS[0]:
        monkeypatch.setattr(IPAttentionPatch, "_select_rows", _swapped_rows(IPAttentionPatch._select_rows))
    elif fault == FAULTS[1]:
        monkeypatch.setattr(IPAttentionPatch, "_apply", _no_face_term)
    else:
        monkeypatch.setattr(IPAttentionPatch, "_install", _weights_kept_at_install(IPAttentionPatch._install))
        monkeypatch.setattr(IPAttentionPatch, "_capture_query", _stale_query)
    found = report(fake_host.run_job(probed_job(host, probe, own_unet, 5)))
    assert found["rel err"] > 100 * TOLERANCE, found


def test_the_probe_changes_nothing_and_is_inert_unless_asked(host, probe, own_unet) -> None:
    plain = fake_host.run_job(probed_job(host, probe, own_unet, None))
    assert report(plain) == {}
    watched = fake_host.run_job(probed_job(host, probe, own_unet, 20))
    assert "rel err" in report(watched)
    assert torch.equal(watched.latents, plain.latents)
    assert no_hooks(own_unet)
    assert probe.ARMED is None


def test_the_hooks_go_when_sampling_raises(host, probe, own_unet) -> None:
    p = probed_job(host, probe, own_unet, 3)
    sample = p.sample

    def failing(*args: Any, **kwargs: Any) -> Any:
        sample(*args, **kwargs)
        raise RuntimeError("sampling failed (simulated)")

    p.sample = failing
    with pytest.raises(RuntimeError, match="simulated"):
        fake_host.run_job(p)
    assert report_of(p)["rel err"] <= TOLERANCE
    assert no_hooks(own_unet)
    assert probe.ARMED is None


def test_a_layer_out_of_range_is_reported_not_raised(host, probe, own_unet) -> None:
    result = fake_host.run_job(probed_job(host, probe, own_unet, 70))
    assert fake_host.HOOK_ERRORS == []
    assert "70" in report(result)["error"]
    assert no_hooks(own_unet)


def report_of(p: Any) -> dict[str, Any]:
    return {
        k.removeprefix("Live probe "): v
        for k, v in p.extra_generation_params.items()
        if k.startswith("Live probe")
    }
