"""Long mixed sequences on ONE stand-in server: nothing a job does outlives it.

Each plain request is made at the start and again after the sequence; the two must be bit
for bit the same. Refusals come at every stage the product can refuse at: the arguments, the
inputs (``before_process``), the batch start (``process_batch``, after ControlNet set up its
units) and sampling (the checkpoint checked once it is final), from either tab.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from PIL import Image

from tests.fakes import antelopev2_pack as fp
from tests.fakes.sgm_controlnet import ControlNet
from tests.request_args import RequestArgs
from tests.webui import fake_controlnet
from tests.webui.fake_server import FakeServer, sd15_model

W, H = 128, 64  # the requests' size: a 16×8 latent


def photo(ident: int, size: int = 128) -> Image.Image:
    img = fp.background(size, size)
    fp.draw_face(img, (size // 2, size // 2), int(size * 0.45), ident=ident)
    return Image.fromarray(img)


def two_faces() -> Image.Image:
    """An init image with two faces, left and right."""
    img = fp.background(H * 2, W * 2)
    fp.draw_face(img, (W // 2, H), 56, ident=41)
    fp.draw_face(img, (W * 3 // 2, H), 56, ident=42)
    return Image.fromarray(img)


def tall_photo() -> Image.Image:
    """A 9:16 photo with the face near the top: "Crop and Resize" to a wide canvas cuts it off."""
    img = fp.background(640, 360)
    fp.draw_face(img, (180, 70), 80, ident=5)
    return Image.fromarray(img)


def face_mask() -> Image.Image:
    """An inpaint mask over the left face of :func:`two_faces`."""
    mask = Image.new("L", (W * 2, H * 2), 0)
    mask.paste(255, (W // 2 - 40, H - 40, W // 2 + 40, H + 40))
    return mask


_ARGS = RequestArgs(photo)
instantid = _ARGS.one_person
people = _ARGS.people
overlapping = _ARGS.overlapping


@pytest.fixture
def server(monkeypatch, host, unet, with_identitynet) -> FakeServer:
    cn = fake_controlnet.install(monkeypatch)
    network = ControlNet().eval()  # a real sgm ControlNet layout, so region-bound attention runs
    builds = []

    def build(p, unet_, model):
        builds.append(model)
        torch.randn(16)  # building a network initialises its layers from torch's generator
        return fake_controlnet.ControlModel(network, cn.hook.ControlModelType.ControlNet)

    monkeypatch.setattr(cn.Script, "build_control_model", staticmethod(build))
    server = FakeServer(host, unet, cn)
    server.builds = builds
    return server


def plain(server: FakeServer) -> dict[str, Any]:
    """One plain request per tab (no InstantID, no ControlNet unit)."""
    return {
        "txt2img": server.request("txt2img", width=W, height=H),
        "img2img": server.request("img2img", init_images=[two_faces()], width=W, height=H),
    }


def assert_unchanged(server: FakeServer, before: dict[str, Any]) -> None:
    after = plain(server)
    for tab in before:
        assert after[tab].status == 200, (tab, after[tab].detail)
        assert after[tab].same_image(before[tab]), tab
    for tab in ("txt2img", "img2img"):
        assert server.controlnet(tab).latest_network is None, tab
    assert "_original_forward" not in vars(server.unet)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in server.unet.modules())


def test_the_sequences_of_the_report_leave_plain_generations_unchanged(server) -> None:
    """The report's three sequences: refusals after ControlNet's setup, then a successful
    several-people img2img; plain requests of both tabs are the same before and after."""
    before = plain(server)
    answer = server.request("txt2img", overlapping(), width=W, height=H)
    assert answer.status == 422 and "overlap by" in answer.detail
    answer = server.request("img2img", people(3), init_images=[two_faces()], width=W, height=H)
    assert answer.status == 422 and "face" in answer.detail
    answer = server.request("img2img", people(2), init_images=[two_faces()], width=W, height=H)
    assert answer.status == 200, answer.detail
    assert_unchanged(server, before)

    answer = server.request(
        "txt2img", instantid(images=[tall_photo()], face_region_only=True), width=W, height=H
    )
    assert answer.status == 422 and "'Face region only' is on" in answer.detail
    assert_unchanged(server, before)

    answer = server.request("img2img", people(3), init_images=[two_faces()], width=W, height=H)
    assert answer.status == 422
    assert_unchanged(server, before)


def refusal(kind: str, tab: str, unet: Any) -> tuple[Any, dict]:
    """The InstantID argument and request settings of a refusal at stage ``kind``."""
    init = {"init_images": [two_faces()]} if tab == "img2img" else {}
    if kind == "argument":
        return {"enabled": True, "id_weight": 9}, init
    if kind == "input":
        return instantid(images=[Image.fromarray(fp.background(96, 96))]), init
    if kind == "before process":
        return instantid(images=[tall_photo()], face_region_only=True, pose_source="reference"), init
    if kind == "batch start":  # the layout waits for p.init: hires fix, "Only masked"
        late = {"enable_hr": True} if tab == "txt2img" else {"mask": face_mask(), "inpaint_full_res": True}
        args = instantid(images=[tall_photo()], face_region_only=True, pose_source="reference")
        return args, {**init, **late}
    if kind == "sampling":
        return instantid(control_weight=0.8), {**init, "swap_model_at_sampling": sd15_model(unet)}
    raise AssertionError(kind)


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
@pytest.mark.parametrize("kind", ["argument", "input", "before process", "batch start", "sampling"])
def test_every_refusal_from_either_tab_leaves_both_tabs_unchanged(server, kind, tab) -> None:
    before = plain(server)
    args, settings = refusal(kind, tab, server.unet)
    answer = server.request(tab, args, width=W, height=H, **settings)
    assert answer.status == 422, answer.detail
    assert_unchanged(server, before)


def test_the_same_request_gives_the_same_image_first_and_again(server) -> None:
    """On a fresh server, and after requests of the other tab in between."""
    requests = {
        "img2img": ("img2img", instantid(control_weight=0.8), {"init_images": [two_faces()]}),
        "txt2img": ("txt2img", instantid(control_weight=0.8), {}),
        "people": ("img2img", people(2), {"init_images": [two_faces()]}),
        "face pass": ("txt2img", instantid(face_pass=True), {}),
    }
    first = {
        name: server.request(tab, args, width=W, height=H, **kw) for name, (tab, args, kw) in requests.items()
    }
    for name, (tab, args, kw) in reversed(list(requests.items())):
        again = server.request(tab, args, width=W, height=H, **kw)
        assert again.status == 200, (name, again.detail)
        assert again.same_image(first[name]), name


def test_a_failed_job_leaves_no_controlnet_callback(server) -> None:
    from tests.webui import fake_host

    args, settings = refusal("batch start", "txt2img", server.unet)
    assert server.request("txt2img", args, width=W, height=H, **settings).status == 422
    assert fake_host.CALLBACKS.get("cfg_denoiser", []) == []


def test_img2img_gives_the_same_image_after_a_txt2img_with_another_seed(server) -> None:
    """The WebUI draws the init image's VAE sample from torch's global generator, which the
    previous job left seeded with its own seed."""
    request = ("img2img", instantid(control_weight=0.8))
    settings = {"init_images": [two_faces()], "width": W, "height": H, "seed": 21}
    first = server.request(*request, **settings)
    assert server.request("txt2img", width=W, height=H, seed=5).status == 200
    again = server.request(*request, **settings)
    assert again.status == 200, again.detail
    assert again.same_image(first)


def test_identitynet_is_loaded_once_whatever_the_tab(server) -> None:
    """ControlNet empties its one model cache on the first job of each tab (its own record of the
    checkpoint starts empty); the other tab's record for the same checkpoint counts."""
    for tab in ("txt2img", "img2img", "txt2img", "img2img"):
        settings = {"init_images": [two_faces()]} if tab == "img2img" else {}
        answer = server.request(tab, instantid(control_weight=0.8), width=W, height=H, **settings)
        assert answer.status == 200, answer.detail
    assert len(server.builds) == 1
