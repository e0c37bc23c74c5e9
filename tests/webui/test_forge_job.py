"""The real script's hooks on a stand-in Forge Classic: the job patches a clone of the host's
UNet patcher per sampling pass (70 attn2 patches, IdentityNet at the head of the ControlNet
chain), hooks no module, and a job that failed stops its sampling with its sentence."""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from instantid_ext.errors import InstantIDError
from instantid_ext.method.attn2_replace import SDXL_ATTN2_KEYS, Attn2FacePatch, sdpa
from tests.fakes import forge_classes
from tests.webui import fake_host
from tests.webui.test_script import enabled, no_hooks

FORGE_MODULES = (
    "modules_forge",
    "modules_forge.forge_version",
    "modules_forge.controlnet",
    "modules_forge.shared",
    "modules_forge.unet_patcher",
    "ldm_patched",
    "ldm_patched.ldm",
    "ldm_patched.ldm.modules",
    "ldm_patched.ldm.modules.attention",
)


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []
    module.__dict__.update(attrs)
    return module


@pytest.fixture
def forge(host, monkeypatch):
    """Forge Classic's modules InstantID uses, with the semantics of tests/fakes/forge_classes.py."""
    loads: list[str] = []

    def load_control_model(path: str):
        loads.append(path)
        return types.SimpleNamespace(
            model_patcher=forge_classes.HostControlNet(control_model=torch.nn.Identity())
        )

    fakes = {
        "modules_forge": _module("modules_forge"),
        "modules_forge.forge_version": _module("modules_forge.forge_version", version="classic"),
        "modules_forge.controlnet": _module(
            "modules_forge.controlnet", apply_controlnet_advanced=forge_classes.apply_controlnet_advanced
        ),
        "modules_forge.shared": _module(
            "modules_forge.shared", try_load_supported_control_model=load_control_model
        ),
        "modules_forge.unet_patcher": _module(
            "modules_forge.unet_patcher", UnetPatcher=forge_classes.UnetPatcher
        ),
        "ldm_patched": _module("ldm_patched"),
        "ldm_patched.ldm": _module("ldm_patched.ldm"),
        "ldm_patched.ldm.modules": _module("ldm_patched.ldm.modules"),
        "ldm_patched.ldm.modules.attention": _module(
            "ldm_patched.ldm.modules.attention", optimized_attention=sdpa
        ),
    }
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    fakes["ldm_patched.ldm.modules"].attention = fakes["ldm_patched.ldm.modules.attention"]
    backend = importlib.import_module("instantid_ext.forge.backend")
    backend.backend.cache_clear()
    yield types.SimpleNamespace(script=host, loads=loads)
    backend.backend.cache_clear()


@dataclass
class ForgeProcessing(fake_host.Processing):
    """The stand-in txt2img with Forge's per-pass hook: each sampling pass first runs the scripts'
    ``process_before_every_sampling`` and samples with the UNet patcher it leaves."""

    passes: list | None = None

    def _sample_pass(self, x: torch.Tensor) -> torch.Tensor:
        self.scripts._each("process_before_every_sampling", self, x=x, noise=x, c=None, uc=None)
        self.passes.append(self.sd_model.forge_objects.unet)
        return super()._sample_pass(x)


def forge_job(forge, unet, args: tuple, **kwargs) -> ForgeProcessing:
    script = forge.script.InstantIDScript()
    script.args_from, script.args_to = 0, len(args)
    model = fake_host.fake_sd_model(unet)
    model.forge_objects = types.SimpleNamespace(unet=forge_classes.UnetPatcher())
    runner = fake_host.ScriptRunner([script])
    return ForgeProcessing(sd_model=model, script_args=tuple(args), scripts=runner, passes=[], **kwargs)


def test_each_pass_samples_with_a_patched_clone_and_no_module_hooks(forge, unet) -> None:
    p = forge_job(forge, unet, (enabled(id_weight=0.6),), enable_hr=True, hr_scale=1.5)
    host_unet = p.sd_model.forge_objects.unet
    seen_hooks = []
    real = fake_host.Processing.sample

    def spy(self, **kwargs):
        seen_hooks.append(no_hooks(unet))
        return real(self, **kwargs)

    p.sample = spy.__get__(p)
    result = fake_host.run_job(p)
    assert fake_host.HOOK_ERRORS == []
    assert seen_hooks == [True] and no_hooks(unet)  # Forge: nothing hooked into modules
    assert host_unet.attn2() == {}  # the host's own patcher is untouched
    first, hires = p.passes
    assert first is not host_unet and hires is not first
    for patched in (first, hires):
        patches = patched.attn2()
        assert set(patches) == set(SDXL_ATTN2_KEYS)
        assert all(isinstance(patch, Attn2FacePatch) and patch.prior is None for patch in patches.values())
    face = first.attn2()[SDXL_ATTN2_KEYS[0]].face
    assert face._scales == [0.6]
    assert hires.attn2()[SDXL_ATTN2_KEYS[0]].face is not face  # the hires pass has its own
    assert face._kv == {}  # dropped when the job closed
    assert first.controlnet_linked_list is None  # IdentityNet weight 0: no ControlNet
    assert "InstantID" in result.extra_generation_params


def test_identitynet_goes_to_the_head_of_the_pass_chain_loaded_once(
    forge, unet, with_identitynet: Path
) -> None:
    args = (enabled(control_weight=0.7, control_start=0.1, control_end=0.9),)
    for _ in range(2):
        p = forge_job(forge, unet, args)
        fake_host.run_job(p)
        assert fake_host.HOOK_ERRORS == []
        head = p.passes[0].controlnet_linked_list
        assert type(head).__name__ == "IdentityNetHostControlNet"
        assert head.strength == 0.7 and head.timestep_percent_range == (0.1, 0.9)
        assert head.cond_hint_original.shape == (1, 3, p.height, p.width)
        assert head.previous_controlnet is None
    assert forge.loads == [str(with_identitynet / "diffusion_pytorch_model.safetensors")]  # once


def test_a_failed_job_stops_its_sampling_with_its_sentence(forge, unet) -> None:
    p = forge_job(forge, unet, (enabled(),))
    p.scripts.before_process(p)
    run = importlib.import_module("instantid_ext.webui.run").run_of(p)
    assert type(run).__name__ == "ForgeRun"
    run.fail(InstantIDError("The face went missing."))
    p.scripts._each("process_before_every_sampling", p)
    wrapper = p.sd_model.forge_objects.unet.model_options["model_function_wrapper"]
    with pytest.raises(InstantIDError, match="The face went missing."):
        wrapper(None, {})
    run.close()
