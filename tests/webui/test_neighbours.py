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

from tests.webui import fake_controlnet, fake_host
from tests.webui.test_job import enabled, job


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
    from instantid_ext.webui.job import _OPEN

    assert list(_OPEN) == []
    assert type(cn.Script()).__dict__["build_control_model"] is build
    assert "_original_forward" not in vars(unet)
