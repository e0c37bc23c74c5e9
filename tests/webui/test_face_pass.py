"""The face pass on the stand-in host, with the stand-in ControlNet.

The stand-in has no diffusion model that could draw a face, so its img2img "model" is a
painter that draws, into the canvas it samples, the test-pack face of the identity whose
face tokens ControlNet passes to IdentityNet, where IdentityNet's keypoint hint puts it. It
sees only what the real models see (the face tokens and the hint), so these tests check the
whole plumbing: which faces are picked, the crop the nested generation samples, the identity
and keypoints it is given, and that only the face is pasted back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from instantid_ext.faces.likeness import cosine_similarity
from instantid_ext.job.face_pass import FaceTarget, changed_box, face_targets, nested_arguments, select_faces
from instantid_ext.method.keypoints import DEFAULT_COLORS
from tests.fakes import antelopev2_pack as fp
from tests.webui import fake_controlnet, fake_host

REFERENCE, STRANGER = 21, 22  # drawn identities: the reference person, and who is in the picture


def photo(ident: int, size: int = 256, face: int = 120) -> Image.Image:
    img = fp.background(size, size)
    fp.draw_face(img, (size / 2, size / 2), face, ident=ident)
    return Image.fromarray(img)


def circle_centres(hint: np.ndarray) -> np.ndarray:
    return np.array(
        [
            np.argwhere(np.all(hint == np.array(c, np.uint8), axis=-1))[:, ::-1].mean(axis=0)
            for c in DEFAULT_COLORS
        ]
    )


def painter(tokens_of: dict[int, torch.Tensor]):
    """The stand-in model: paints the identity it is conditioned on where the hint says."""

    def paint(p: Any, canvas: Image.Image) -> Image.Image:
        cn_script = next(s for s in p.scripts.alwayson_scripts if s.title() == "ControlNet")
        (param,) = [
            q for q in cn_script.latest_network.control_params if q.control_model_type.name == "InstantID"
        ]
        tokens = param.control_context_override.cond_emb
        ident = min(tokens_of, key=lambda k: float((tokens_of[k] - tokens).abs().max()))
        hint = (param.hint_cond[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        kps = circle_centres(hint)
        # The test pack's faces put the 5 points at the ArcFace template of their square.
        side = (kps[1, 0] - kps[0, 0]) / (fp.KPS_REL[1, 0] - fp.KPS_REL[0, 0])
        centre = kps.mean(axis=0) - fp.KPS_REL.mean(axis=0) * side
        array = np.array(canvas)
        fp.draw_face(array, tuple(centre), round(side), ident=ident)
        return Image.fromarray(array)

    return paint


@pytest.fixture
def cn(monkeypatch, host) -> fake_controlnet.FakeControlNet:
    return fake_controlnet.install(monkeypatch)


@pytest.fixture
def painting(monkeypatch, host) -> None:
    from instantid_ext.webui import services

    analyzer = services.resources().analyzer()
    _, adapter = services.resources().adapter()
    tokens_of = {
        ident: adapter.face_tokens(torch.tensor(analyzer.analyze_one(photo(ident)).embedding))
        for ident in (REFERENCE, STRANGER)
    }
    monkeypatch.setattr(fake_host, "RENDERER", painter(tokens_of))


def outer_job(host, unet, cn, picture: Image.Image, **fields: Any) -> fake_host.Processing:
    cn_script = cn.Script()
    units = tuple(cn.unit(enabled=False) for _ in range(3))
    cn_script.args_from, cn_script.args_to = 0, 3
    ours = host.InstantIDScript()
    ours.args_from, ours.args_to = 3, 4
    args = {"enabled": True, "images": [photo(REFERENCE)], "control_weight": 0.8, "likeness": False, **fields}
    return fake_host.Processing(
        sd_model=fake_host.fake_sd_model(unet),
        script_args=(*units, args),
        scripts=fake_host.ScriptRunner([cn_script, ours]),
        width=picture.width,
        height=picture.height,
        steps=1,
        base_image=picture,
    )


def small_face_picture() -> tuple[Image.Image, Any]:
    img = fp.background(1024, 1024)
    drawn = fp.draw_face(img, (610, 380), 60, ident=STRANGER)
    return Image.fromarray(img), drawn


def test_a_small_face_comes_back_with_the_identity_and_nothing_else_changes(
    host, unet, cn, with_identitynet, painting
) -> None:
    from instantid_ext.webui import services

    picture, drawn = small_face_picture()
    analyzer = services.resources().analyzer()
    reference = analyzer.analyze_one(photo(REFERENCE)).embedding
    without = fake_host.run_job(outer_job(host, unet, cn, picture))
    p = outer_job(host, unet, cn, picture, face_pass=True, face_pass_resolution=256, face_pass_padding=32)
    with_pass = fake_host.run_job(p)
    assert fake_host.HOOK_ERRORS == []
    before, after = np.asarray(without.images[0]), np.asarray(with_pass.images[0])
    assert np.array_equal(before, np.asarray(picture))  # without the pass: the picture as generated
    # Only pixels inside the face's padded box change.
    ys, xs = np.nonzero(np.any(before != after, axis=-1))
    assert len(xs) > 0
    x1, y1, x2, y2 = drawn.bbox
    pad = 32
    assert xs.min() >= x1 - pad and xs.max() < x2 + pad and ys.min() >= y1 - pad and ys.max() < y2 + pad
    # The face found afterwards is the reference person's, where the stranger's was.
    (face_before,) = analyzer.analyze(before)
    (face_after,) = analyzer.analyze(after)
    assert np.abs(face_after.bbox - face_before.bbox).max() <= 3
    assert cosine_similarity(face_after.embedding, reference) > 0.95
    assert cosine_similarity(face_after.embedding, reference) > cosine_similarity(
        face_before.embedding, reference
    )
    assert with_pass.infotexts[0]["InstantID face pass"] == "True"
    # Nothing of either job is left behind.
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())
    assert not any(k.startswith("InstantID-IdentityNet") for k in cn.global_state.cn_models)
    assert fake_host.CALLBACKS.get("cfg_denoiser", []) == []


def test_the_outer_batches_after_a_face_pass_keep_controlnet(
    host, unet, cn, with_identitynet, painting
) -> None:
    """A face pass between batches: the next batch still samples with the outer job's IdentityNet."""
    picture, _ = small_face_picture()
    p = outer_job(host, unet, cn, picture, face_pass=True, face_pass_resolution=256)
    p.n_iter = 2
    seen: list[Any] = []
    inner = p.sample

    def sample(*args, **kwargs):
        network = p.scripts.alwayson_scripts[0].latest_network
        seen.append(([q.control_model_type.name for q in network.control_params], network))
        return inner(*args, **kwargs)

    p.sample = sample
    result = fake_host.run_job(p)
    assert fake_host.HOOK_ERRORS == []
    (first_units, first_network), (second_units, second_network) = seen
    assert first_units == second_units == ["InstantID"]
    assert second_network is first_network
    assert len(result.images) == 2


def test_no_face_in_the_output_keeps_the_image_and_says_so(
    host, unet, cn, with_identitynet, painting
) -> None:
    empty = Image.fromarray(fp.background(256, 256))
    result = fake_host.run_job(outer_job(host, unet, cn, empty, face_pass=True, face_pass_resolution=256))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(empty))
    assert "face pass found no face in output image 1" in result.extra_generation_params["InstantID warning"]


# -- the pure parts ------------------------------------------------------------------------------------
def test_face_selection_and_masks() -> None:
    _, drawn = fp.three_faces()
    from instantid_ext.faces.analysis import Face

    faces = [Face(bbox=d.bbox, kps=d.kps, score=0.9, embedding=np.zeros(512, np.float32)) for d in drawn]
    assert [n for n, _ in select_faces(faces, "all")] == [0, 1, 2]
    assert [n for n, _ in select_faces(faces, "largest")] == [1]
    assert [n for n, _ in select_faces(faces, "index", 2)] == [2]
    with pytest.raises(Exception, match="face number 3, but the image has 3 faces"):
        select_faces(faces, "index", 3)
    (target,) = face_targets(faces, (640, 480), "largest")
    assert isinstance(target, FaceTarget)
    x1, y1, x2, y2 = drawn[1].bbox
    grow = 0.15 * 140
    assert target.mask_box == (
        int(np.floor(x1 - grow)),
        int(np.floor(y1 - grow)),
        int(np.ceil(x2 + grow)),
        int(np.ceil(y2 + grow)),
    )
    mask = np.asarray(target.mask((640, 480)))
    assert mask[int(drawn[1].kps[2, 1]), int(drawn[1].kps[2, 0])] == 255 and mask[0, 0] == 0
    box = changed_box([target], (640, 480))
    assert box[0] == target.mask_box[0] - 3 * target.feather


def test_nested_arguments_take_the_pose_from_the_face_itself() -> None:
    from instantid_ext.args import InstantIDArgs

    args = InstantIDArgs(
        enabled=True, identity="ada", pose_source="preset", pose_rotate=30, face_pass=True, id_weight=0.6
    )
    nested = InstantIDArgs.parse(nested_arguments(args))
    assert nested.enabled and nested.identity == "ada" and nested.id_weight == 0.6
    assert nested.pose_source == "init_image" and nested.pose_rotate == 0
    assert not nested.face_pass and not nested.likeness and not nested.show_hint


def test_a_users_ip_adapter_unit_stays_on_the_unet_after_a_face_pass(
    host, unet, cn, with_identitynet, painting, tmp_path
) -> None:
    """ControlNet's nested ``process`` and ``postprocess`` clear its secondary models (IP-Adapter,
    ControlLLLite) from the UNet; the outer generation's next batch must still have the user's."""
    weights = tmp_path / "ip-adapter-plus_sdxl_vit-h.bin"
    weights.write_bytes(b"user ip-adapter")
    cn.global_state.cn_models["ip-adapter-plus_sdxl_vit-h [2f2e4a41]"] = str(weights)
    picture, _ = small_face_picture()
    p = outer_job(host, unet, cn, picture, face_pass=True, face_pass_resolution=256)
    user_unit = cn.unit(
        enabled=True, module="none", model="ip-adapter-plus_sdxl_vit-h [2f2e4a41]", image=np.asarray(picture)
    )
    p.script_args = (user_unit, *p.script_args[1:])
    p.n_iter = 2
    hacked: list[int] = []
    inner = p.sample

    def sample(*args, **kwargs):
        hacked.append(sum(bool(getattr(m, "ipadapter_hacks", None)) for m in unet.modules()))
        return inner(*args, **kwargs)

    p.sample = sample
    fake_host.run_job(p)
    assert fake_host.HOOK_ERRORS == []
    assert hacked[0] > 0
    assert hacked == [hacked[0], hacked[0]]  # the second batch, after the face pass, too
    assert not any(getattr(m, "ipadapter_hacks", None) for m in unet.modules())  # and gone after
