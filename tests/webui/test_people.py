"""Several people in one image on the stand-in host, with the stand-in ControlNet.

IdentityNet here is a small sgm ControlNet (tests/fakes/sgm_controlnet.py) with the real
layer structure, so the region-bound attention hooks run on real attn2 layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from instantid_ext.errors import InstantIDError
from instantid_ext.method.keypoints import DEFAULT_COLORS
from tests.fakes import antelopev2_pack as fp
from tests.fakes.sgm_controlnet import ControlNet
from tests.webui import fake_controlnet, fake_host

A, B = 31, 32  # drawn identities


def photo(ident: int) -> Image.Image:
    img = fp.background(256, 256)
    fp.draw_face(img, (128, 128), 120, ident=ident)
    return Image.fromarray(img)


@pytest.fixture
def cn(monkeypatch, host, with_identitynet) -> fake_controlnet.FakeControlNet:
    return fake_controlnet.install_with_network(monkeypatch, ControlNet().eval())


def job(host, unet, cn, args: dict, **kwargs: Any) -> fake_host.Processing:
    cn_script = cn.Script()
    cn_script.args_from, cn_script.args_to = 0, 3
    ours = host.InstantIDScript()
    ours.args_from, ours.args_to = 3, 4
    units = tuple(cn.unit(enabled=False) for _ in range(3))
    return fake_host.Processing(
        sd_model=fake_host.fake_sd_model(unet),
        script_args=(*units, args),
        scripts=fake_host.ScriptRunner([cn_script, ours]),
        width=kwargs.pop("width", 128),
        height=kwargs.pop("height", 64),
        **kwargs,
    )


def two_people(**extra: Any) -> dict:
    return {
        "enabled": True,
        "likeness": False,
        "pose_source": "reference",
        "people": [
            {"images": [photo(A)], "region": "left", "id_weight": 0.8, "control_weight": 0.8},
            {"images": [photo(B)], "region": "right", "id_weight": 0.6, "control_weight": 0.5},
        ],
        **extra,
    }


def tokens_of(ident: int) -> torch.Tensor:
    from instantid_ext.webui import services

    _, adapter = services.resources().adapter()
    embedding = services.resources().analyzer().analyze_one(photo(ident)).embedding
    return adapter.face_tokens(torch.tensor(embedding))


def test_two_people_each_in_its_region(host, unet, cn) -> None:
    p = job(host, unet, cn, two_people())
    seen: dict[str, Any] = {}
    inner = p.sample

    def sample(*args, **kwargs):
        run = host.run.run_of(p)
        network = p.scripts.alwayson_scripts[0].latest_network
        (param,) = [q for q in network.control_params if q.control_model_type.name == "InstantID"]
        seen["patch"] = run.patch
        seen["param"] = param
        seen["regional_installed"] = run.regional is not None and run.regional.installed
        seen["leak"] = attn2_outputs_by_region(cn.network, param, network)
        return inner(*args, **kwargs)

    p.sample = sample
    result = fake_host.run_job(p)
    assert fake_host.HOOK_ERRORS == []
    patch, param = seen["patch"], seen["param"]
    # The UNet: one token set per person, each with its weight and its half of the canvas.
    assert [identity.scale for identity in patch.identities] == [0.8, 0.6]
    left, right = (identity.mask.numpy() for identity in patch.identities)
    assert left[:, :64].all() and not left[:, 64:].any() and right[:, 64:].all() and not right[:, :64].any()
    assert torch.allclose(patch.identities[0].cond, tokens_of(A)) and torch.allclose(
        patch.identities[1].cond, tokens_of(B)
    )
    # IdentityNet: both people's tokens side by side, strengths per region, both faces in the hint.
    cond = param.control_context_override.cond_emb
    assert cond.shape == (1, 32, 2048)
    assert torch.allclose(cond[:, :16], tokens_of(A)) and torch.allclose(cond[:, 16:], tokens_of(B))
    strength = param.effective_region_mask[0, 0]
    assert torch.all(strength[:, :64] == 0.8) and torch.all(strength[:, 64:] == 0.5)
    assert param.weight == 1.0
    hint = (param.hint_cond[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    nose = np.argwhere(np.all(hint == np.array(DEFAULT_COLORS[2], np.uint8), axis=-1))[:, 1]
    assert (nose < 64).any() and (nose >= 64).any()  # a nose in each half
    assert seen["regional_installed"]
    # Region A's IdentityNet attention never sees person B's tokens, and the other way round.
    same_left, changed_right = seen["leak"]
    assert same_left and changed_right
    assert "InstantID people" in result.extra_generation_params
    assert result.extra_generation_params["InstantID people"].startswith("1: images:")
    # Afterwards nothing is left on the networks.
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in cn.network.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


@torch.no_grad()  # as the WebUI samples
def attn2_outputs_by_region(network: torch.nn.Module, param: Any, unet_hook: Any) -> tuple[bool, bool]:
    """Run IdentityNet as ControlNet does, with person B's tokens swapped: compare attn2 outputs."""
    first = next(m for m in network.modules() if hasattr(m, "transformer_blocks")).transformer_blocks[0].attn2
    outputs = []
    handle = first.register_forward_hook(lambda module, args, output: outputs.append(output.detach().clone()))
    marks = torch.tensor([1024.0, -1024.0])[:, None, None].expand(2, 1, 2048)
    context = torch.cat([marks, torch.zeros(2, 77, 2048)], dim=1)
    embed = param.control_context_override
    try:
        unet_hook.forward(
            torch.zeros(2, 4, 8, 16), timesteps=torch.zeros(2), context=context, y=torch.zeros(2, 2816)
        )
        stranger = embed.cond_emb.clone()
        stranger[:, 16:] = torch.randn_like(stranger[:, 16:])
        param.control_context_override = type(embed)(stranger, embed.uncond_emb)
        unet_hook.forward(
            torch.zeros(2, 4, 8, 16), timesteps=torch.zeros(2), context=context, y=torch.zeros(2, 2816)
        )
    finally:
        param.control_context_override = embed
        handle.remove()
    before, after = (o[0].reshape(4, 8, -1) for o in outputs)  # cond row, 4×8 token grid
    return torch.equal(before[:, :4], after[:, :4]), not torch.equal(before[:, 4:], after[:, 4:])


def test_overlapping_regions_and_auto_without_faces_are_clear_errors(host, unet, cn) -> None:
    args = two_people()
    args["people"][0].update(region="box", box=[0.0, 0.0, 0.6, 1.0])
    args["people"][1].update(region="box", box=[0.4, 0.0, 1.0, 1.0])
    with pytest.raises(InstantIDError) as info:
        fake_host.run_job(job(host, unet, cn, args))
    assert "overlap by" in str(info.value) and "identity 1" in str(info.value)
    args = two_people()
    args["people"][0]["region"] = "auto"
    with pytest.raises(InstantIDError) as info:
        fake_host.run_job(job(host, unet, cn, args))
    assert str(info.value).startswith("A person with the region 'auto' needs the faces of a pose image")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


def test_a_batch_stopped_before_sampling_leaves_no_marked_prompts(host, unet, cn, monkeypatch) -> None:
    """With hires fix the layout waits for the batch (the hires size comes from ``p.init``), so
    overlapping regions are found after ControlNet set up its units; it marks the cached prompts
    when sampling starts and only the UNet's first call empties the cache. Stopping in between
    must empty it, or the next job would reuse marked prompts."""
    marked = ["the prompt", "a marked conditioning"]
    for name in ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc"):
        monkeypatch.setattr(fake_host.Processing, name, list(marked))
    args = two_people()
    args["people"][0].update(region="box", box=[0.0, 0.0, 0.6, 1.0])
    args["people"][1].update(region="box", box=[0.4, 0.0, 1.0, 1.0])
    with pytest.raises(InstantIDError, match="overlap by"):
        fake_host.run_job(job(host, unet, cn, args, enable_hr=True))
    for name in ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc"):
        assert getattr(fake_host.Processing, name) == [None, None], name


def test_a_layout_that_cannot_work_is_refused_before_controlnet_sets_up(host, unet, cn) -> None:
    """Where the canvas is final in ``before_process`` (txt2img without hires fix), overlapping
    regions are refused there: ControlNet never loads IdentityNet nor hooks the UNet."""
    args = two_people()
    args["people"][0].update(region="box", box=[0.0, 0.0, 0.6, 1.0])
    args["people"][1].update(region="box", box=[0.4, 0.0, 1.0, 1.0])
    p = job(host, unet, cn, args)
    with pytest.raises(InstantIDError, match="overlap by"):
        fake_host.run_job(p)
    assert cn.Script.loads == []
    assert p.scripts.alwayson_scripts[0].latest_network is None
    assert "_original_forward" not in vars(unet)


def test_auto_regions_follow_the_faces_of_the_pose_image(host, unet, cn) -> None:
    pose = fp.background(128, 256)
    drawn = [fp.draw_face(pose, (64, 64), 60, ident=1), fp.draw_face(pose, (192, 64), 60, ident=2)]
    args = two_people(pose_source="pose_image", pose_image=Image.fromarray(pose))
    for person in args["people"]:
        person["region"] = "auto"
    p = job(host, unet, cn, args, width=256, height=128)
    seen = {}
    inner = p.sample

    def sample(*a, **k):
        seen["placements"] = host.run.run_of(p).people.placements
        return inner(*a, **k)

    p.sample = sample
    fake_host.run_job(p)
    assert fake_host.HOOK_ERRORS == []
    for placement, face in zip(seen["placements"], drawn, strict=True):
        assert np.abs(placement.kps - face.kps).max() < 2  # the pose image's own face, same size
        x1, _, x2, _ = placement.region.box
        assert x1 <= face.bbox[0] and face.bbox[2] <= x2


def test_more_people_than_faces_in_the_pose_image(host, unet, cn) -> None:
    pose = fp.background(128, 256)
    fp.draw_face(pose, (64, 64), 60, ident=1)
    args = two_people(pose_source="pose_image", pose_image=Image.fromarray(pose))
    for person in args["people"]:
        person["region"] = "auto"
    with pytest.raises(InstantIDError, match="face"):
        fake_host.run_job(job(host, unet, cn, args, width=256, height=128))


def test_the_panel_rows_become_the_people_argument() -> None:
    from instantid_ext.args import InstantIDArgs
    from instantid_ext.webui import ui

    row = (None, "None", "left", "", None, 0.8, 0.8)
    filled = ([b"photo"], "None", "box", "0.5, 0, 1, 1", None, 0.7, 0.4)
    saved = (None, "ada", "auto", "", None, 0.8, 0.8)
    people = ui.people_value(*row, *filled, *saved, *row)
    assert people == [
        {
            "images": [b"photo"],
            "identity": "",
            "region": "box",
            "id_weight": 0.7,
            "control_weight": 0.4,
            "box": "0.5, 0, 1, 1",
        },
        {"images": [], "identity": "ada", "region": "auto", "id_weight": 0.8, "control_weight": 0.8},
    ]
    assert ui.people_value(*row, *row, *row, *row) == []
    assert InstantIDArgs.parse({"people": []}).people == []


def test_people_preview_tints_each_region_and_draws_the_keypoints(host) -> None:
    from instantid_ext.webui import services

    people = [{"images": [photo(A)], "region": "left"}, {"images": [photo(B)], "region": "right"}]
    picture, message = services.people_preview(
        people, "reference", None, "front", "Crop and Resize", 256, 128
    )
    assert picture.shape == (128, 256, 3)
    assert message.startswith("2 people at 256×128 (1: left, 2: right)")
    left_tint, right_tint = picture[120, 10], picture[120, 246]
    assert tuple(left_tint) != tuple(right_tint) and left_tint.any() and right_tint.any()
    _, message = services.people_preview(people[:1], "reference", None, "front", "Crop and Resize", 256, 128)
    assert (
        message
        == "⚠ InstantID argument 'people': give 2 to 4 people (got 1); for one person use images or identity."
    )
