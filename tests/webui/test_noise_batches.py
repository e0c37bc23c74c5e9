"""Negative noise on the stand-in host: each image of a batch draws its own from its own seed.

An image made in a batch equals the same image (same seed, same settings) made alone, for the
UNet's face tokens and for IdentityNet's context, in every way the denoiser calls the UNet, with
hires fix and with several people.

The stand-in's batches are made to behave as the WebUI's here: every image has the same prompt,
each image's latent noise comes from its own seed, and the prompts carry ControlNet's cond/uncond
marker token (ControlNet's ``process_sample`` marks them in the WebUI), so ControlNet tells the
uncond rows apart and gives them the uncond tokens.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.fakes.sgm_controlnet import ControlNet
from tests.webui import fake_controlnet, fake_host
from tests.webui.test_job import enabled, job
from tests.webui.test_people import two_people

SEED = 4321
NOISE = 0.3
MARK = 1024.0


@pytest.fixture
def webui_batches(monkeypatch) -> None:
    def conds(self, rows: int, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        crossattn = torch.randn(1, 77, 2048, generator=g).expand(rows, -1, -1)
        vector = torch.randn(1, 2816, generator=g).expand(rows, -1)
        if "_original_forward" in vars(self.sd_model.model.diffusion_model):  # ControlNet's hook is on
            sign = 1.0 if seed == 11 else -1.0  # the stand-in's cond prompt, then its uncond prompt
            crossattn = torch.cat([torch.full((rows, 1, 2048), sign * MARK), crossattn], dim=1)
        return {"crossattn": crossattn, "vector": vector}

    def noise(self) -> torch.Tensor:
        shape = (1, 4, self.height // 8, self.width // 8)
        return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in self.seeds])

    monkeypatch.setattr(fake_host.Processing, "_conds", conds)
    monkeypatch.setattr(fake_host.Processing, "_noise", noise)


@pytest.fixture
def cn(monkeypatch, host) -> fake_controlnet.FakeControlNet:
    return fake_controlnet.install(monkeypatch)


def record_identitynet(p, calls: list[dict[str, Any]]) -> None:
    """Collect what our IdentityNet unit received in each call of ``p.sample``."""
    inner = p.sample

    def sample(*args, **kwargs):
        network = next(s for s in p.scripts.alwayson_scripts if s.title() == "ControlNet").latest_network
        (param,) = [q for q in network.control_params if q.control_model_type.name == "InstantID"]
        model = param.control_model

        def grab(module, args, kwargs) -> None:
            calls.append({"x": kwargs["x"], "context": kwargs["context"]})

        handle = model.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            return inner(*args, **kwargs)
        finally:
            handle.remove()

    p.sample = sample


def image_rows(context: torch.Tensor, batch: int, image: int, mode: str) -> torch.Tensor:
    """The rows of one IdentityNet call that belong to ``image``: its cond row and, in a call on
    the whole batch, its uncond row (cond rows first, then uncond rows)."""
    if mode == "together":
        return context[[image, batch + image]]
    return context[[image]]  # a call on one half of the batch


def generate(host, unet, cn, batch: int, seed: int, **kwargs: Any) -> tuple[torch.Tensor, list[dict]]:
    args = kwargs.pop("args", None) or enabled(control_weight=0.8, noise=NOISE, likeness=False)
    p = job(host, unet, args, cn=cn, batch_size=batch, seed=seed, **kwargs)
    calls: list[dict] = []
    record_identitynet(p, calls)
    result = fake_host.run_job(p)
    assert fake_host.HOOK_ERRORS == []
    return result.latents, calls


@pytest.mark.parametrize(
    ("mode", "hires"),
    [("together", False), ("separate", False), ("skip_uncond", False), ("together", True)],
)
def test_an_image_of_a_batch_equals_that_image_made_alone(
    host, unet, cn, with_identitynet, webui_batches, mode, hires
) -> None:
    size = {"width": 64, "height": 64, "cfg_mode": mode, "enable_hr": hires, "hr_scale": 1.5}
    batch, batch_calls = generate(host, unet, cn, 2, SEED, **size)
    alone, alone_calls = generate(host, unet, cn, 1, SEED + 1, **size)
    first, first_calls = generate(host, unet, cn, 1, SEED, **size)
    # IdentityNet: the second image's rows (cond and uncond tokens) are those it gets alone.
    assert len(batch_calls) == len(alone_calls) > 0
    for n, (in_batch, by_itself) in enumerate(zip(batch_calls, alone_calls, strict=True)):
        got = image_rows(in_batch["context"], 2, 1, mode)
        assert torch.equal(got, image_rows(by_itself["context"], 1, 0, mode)), f"call {n}"
        assert torch.equal(
            image_rows(in_batch["context"], 2, 0, mode), image_rows(first_calls[n]["context"], 1, 0, mode)
        )
    if mode == "together":
        uncond_rows = batch_calls[0]["context"][2:]
        assert not torch.equal(uncond_rows[0], uncond_rows[1])  # each image its own draw
    # The UNet: the final latents of each image are those it gets alone.
    assert (batch[1] - alone[0]).abs().max() <= 1e-5
    assert (batch[0] - first[0]).abs().max() <= 1e-5


def test_batches_of_one_job_each_draw_from_their_own_seeds(
    host, unet, cn, with_identitynet, webui_batches
) -> None:
    """With several batches (``n_iter``), the second batch's images draw from their seeds too."""
    size = {"width": 64, "height": 64}
    both, _ = generate(host, unet, cn, 2, SEED, n_iter=2, **size)  # the last batch: seeds +2, +3
    alone, _ = generate(host, unet, cn, 1, SEED + 3, **size)
    assert (both[1] - alone[0]).abs().max() <= 1e-5


# -- several people ------------------------------------------------------------------------------------
@pytest.fixture
def people_cn(monkeypatch, host, with_identitynet) -> fake_controlnet.FakeControlNet:
    """ControlNet with a small IdentityNet of the real layer structure (its region hooks run)."""
    return fake_controlnet.install_with_network(monkeypatch, ControlNet().eval())


def test_several_people_an_image_of_a_batch_equals_that_image_made_alone(
    host, unet, people_cn, webui_batches
) -> None:
    args = two_people(noise=NOISE)
    size = {"width": 128, "height": 64, "args": args, "enable_hr": True, "hr_scale": 1.5}
    batch, batch_calls = generate(host, unet, people_cn, 2, SEED, **size)
    alone, alone_calls = generate(host, unet, people_cn, 1, SEED + 1, **size)
    assert len(batch_calls) == len(alone_calls) > 0
    for n, (in_batch, by_itself) in enumerate(zip(batch_calls, alone_calls, strict=True)):
        got = image_rows(in_batch["context"], 2, 1, "together")
        assert got.shape[1] == 32  # both people's tokens side by side
        assert torch.equal(got, image_rows(by_itself["context"], 1, 0, "together")), f"call {n}"
    assert (batch[1] - alone[0]).abs().max() <= 1e-5
