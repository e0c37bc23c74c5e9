"""InstantID next to the extensions a real WebUI has: their calls on copies of ``p`` and re-runs.

ADetailer (24.x, ``postprocess_image``) calls every script's ``postprocess`` on ``copy(p)`` for the
first image of each batch, so that ControlNet unhooks the UNet before its own inpainting passes,
and ``before_process`` and ``process`` on another copy after the last image, so that ControlNet
hooks it again for the next batch. Its folder, ``!adetailer``, sorts first: its hooks run before
ControlNet's and ours.
"""

from __future__ import annotations

from copy import copy
from typing import Any

import pytest
import torch
from PIL import Image

from tests.fakes import antelopev2_pack as fp
from tests.webui import fake_controlnet, fake_host
from tests.webui.test_job import enabled, job, no_hooks


@pytest.fixture
def cn(monkeypatch, host) -> fake_controlnet.FakeControlNet:
    return fake_controlnet.install(monkeypatch)


class ADetailerCalls:
    """What ADetailer's ``postprocess_image`` does around its passes (the passes themselves left out,
    as when it finds no face to fix)."""

    args_from = args_to = 0

    def title(self) -> str:
        return "ADetailer"

    def postprocess_image(self, p: Any, pp: Any) -> None:
        if p.batch_index == 0:
            p.scripts.postprocess(copy(p), fake_host.Processed([], {}))
        if p.batch_index == p.batch_size - 1:
            copy_p = copy(p)
            p.scripts.before_process(copy_p)
            p.scripts.process(copy_p)


def generate(host, unet, cn, *, adetailer: bool) -> tuple[list[torch.Tensor], fake_host.Processed]:
    p = job(
        host,
        unet,
        enabled(control_weight=0.8, likeness=True),
        cn=cn,
        batch_size=2,
        n_iter=2,
        width=128,
        height=128,
    )
    if adetailer:
        p.scripts.alwayson_scripts.insert(0, ADetailerCalls())
    batches: list[torch.Tensor] = []
    inner = p.sample

    def sample(*args: Any, **kwargs: Any) -> torch.Tensor:
        batches.append(inner(*args, **kwargs))
        return batches[-1]

    p.sample = sample
    return batches, fake_host.run_job(p)


def test_adetailers_calls_on_copies_of_p_leave_instantid_as_it_is_alone(
    host, unet, cn, with_identitynet
) -> None:
    alone, plain_result = generate(host, unet, cn, adetailer=False)
    build = type(cn.Script()).__dict__["build_control_model"]
    with_ad, result = generate(host, unet, cn, adetailer=True)
    assert fake_host.HOOK_ERRORS == []
    assert len(with_ad) == len(alone) == 2
    for ours, reference in zip(with_ad, alone, strict=True):
        assert torch.equal(ours, reference)
    assert result.infotexts == plain_result.infotexts  # the likeness line of every image included
    assert all("InstantID likeness" in text for text in result.infotexts)
    # Every job opened was closed, and nothing of it stays on ControlNet's class or the UNet.
    from instantid_ext.job.lifecycle import _OPEN

    assert list(_OPEN) == []
    assert type(cn.Script()).__dict__["build_control_model"] is build
    assert "_original_forward" not in vars(unet)


# -- Loopback: several generations on one p -----------------------------------------------------------
def loopback_job(host, unet, cn, init: Image.Image) -> fake_host.ProcessingImg2Img:
    return job(
        host,
        unet,
        enabled(control_weight=0.8, noise=0.3),  # negative noise: drawn from each loop's seed
        cn=cn,
        img2img=True,
        init_images=[init],
        width=64,
        height=64,
        denoising_strength=0.5,
    )


def test_loopback_applies_instantid_in_every_loop_as_a_fresh_job_would(
    host, unet, cn, with_identitynet
) -> None:
    """Loopback (and SD upscale) call ``process_images`` on the same ``p`` for each loop, changing
    only the init image and the seed; each loop must equal a fresh job with that image and seed."""
    init = Image.fromarray(fp.background(64, 64))
    p = loopback_job(host, unet, cn, init)
    loops = []
    try:
        for _ in range(3):
            result = fake_host.process_images(p)
            loops.append((result.latents, p.init_images[0], p.seed))
            p.init_images = [result.images[0]]
            p.seed += 1
    finally:
        p.close()
    assert fake_host.HOOK_ERRORS == []
    for n, (latents, image, seed) in enumerate(loops):
        fresh = loopback_job(host, unet, cn, image)
        fresh.seed = seed
        assert torch.equal(fake_host.run_job(fresh).latents, latents), f"loop {n + 1}"
    from instantid_ext.job.lifecycle import _OPEN

    assert list(_OPEN) == []
    assert no_hooks(unet)


# -- X/Y/Z plot: a cell that fails ------------------------------------------------------------------
def test_a_failing_xyz_cell_leaves_nothing(host, unet, cn, with_identitynet, monkeypatch) -> None:
    """X/Y/Z runs each cell as ``process_images(copy(p))`` and never closes the copy; when a cell
    raises, the whole plot stops, and only the outer ``p`` (which ran no job) is closed."""
    outer = job(host, unet, enabled(control_weight=0.8), cn=cn, width=64, height=64)
    build = type(cn.Script()).__dict__["build_control_model"]
    models = dict(cn.global_state.cn_models)

    def out_of_memory(self, x):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(fake_host.Processing, "_sample_pass", out_of_memory)
    cell = copy(outer)
    with pytest.raises(RuntimeError, match="simulated"):
        fake_host.process_images(cell)
    outer.close()
    from instantid_ext.job.lifecycle import _OPEN

    assert list(_OPEN) == []
    assert type(cn.Script()).__dict__["build_control_model"] is build
    assert cn.global_state.cn_models == models
    assert outer.scripts.alwayson_scripts[0].latest_network is None
    assert "_original_forward" not in vars(unet)
    assert fake_host.CALLBACKS.get("cfg_denoiser", []) == []
