"""A job's life cycle and geometry on the stand-in host with the stand-in ControlNet.

- Checks run when the host state is final: the checkpoint when sampling starts (the WebUI
  loads the job's checkpoint after ``before_process``), the geometry after ``p.init``.
- Every change a job makes is undone by that job, also when the generation fails, and a job
  nested in another (a face pass, ADetailer) leaves the outer one intact.
- The hint ControlNet receives is drawn where the sampler works: the "Only masked" crop of an
  inpaint, the hires canvas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from instantid_ext.errors import IncompatibleModelError, InvalidInputError
from instantid_ext.method.keypoints import DEFAULT_COLORS
from tests.fakes import antelopev2_pack as fp
from tests.fakes.sgm_unet import make_unet
from tests.webui import fake_controlnet, fake_host


def face_photo(
    ident: int = 1, size: tuple[int, int] = (256, 256), center=None, face: int = 120
) -> Image.Image:
    width, height = size
    img = fp.background(height, width)
    fp.draw_face(img, center or (width / 2, height / 2), face, ident=ident)
    return Image.fromarray(img)


def enabled(**fields: Any) -> dict:
    return {"enabled": True, "images": [face_photo()], "control_weight": 0.0, **fields}


def no_hooks(module: torch.nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


class Spy:
    """A script placed before ours: records what the samplers saw, runs a nested job on request."""

    def __init__(self, name: str = "Spy") -> None:
        self.name = name
        self.args_from = self.args_to = 0
        self.during: list[dict[str, Any]] = []
        self.nested: Any = None

    def title(self) -> str:
        return self.name

    def postprocess(self, p, processed, *args) -> None:
        if self.nested is not None:
            self.nested()


def job(
    host,
    unet,
    args: dict | bool,
    *,
    cn: fake_controlnet.FakeControlNet | None = None,
    img2img: bool = False,
    spy: Spy | None = None,
    **kwargs: Any,
) -> fake_host.Processing:
    """A txt2img/img2img job with our script (and ControlNet's, with three free units)."""
    scripts: list[Any] = []
    script_args: tuple = ()
    if cn is not None:
        cn_script = cn.Script()
        units = tuple(cn.unit(enabled=False) for _ in range(3))
        cn_script.args_from, cn_script.args_to = 0, len(units)
        scripts.append(cn_script)
        script_args += units
    if spy is not None:
        spy.args_from = spy.args_to = len(script_args)
        scripts.append(spy)
    ours = host.InstantIDScript()
    ours.args_from, ours.args_to = len(script_args), len(script_args) + 1
    scripts.append(ours)
    script_args += (args,)
    model = kwargs.pop("sd_model", None) or fake_host.fake_sd_model(unet)
    cls = fake_host.ProcessingImg2Img if img2img else fake_host.Processing
    return cls(sd_model=model, script_args=script_args, scripts=fake_host.ScriptRunner(scripts), **kwargs)


def sample_spy(p, record: dict) -> None:
    """Record what ControlNet holds for our unit and which attention hooks are on while sampling."""
    inner = p.sample

    def sample(*args, **kwargs):
        cn_script = next((s for s in p.scripts.alwayson_scripts if s.title() == "ControlNet"), None)
        network = None if cn_script is None else cn_script.latest_network
        if network is not None:
            ours = [q for q in network.control_params if q.control_model_type.name == "InstantID"]
            record["params"] = ours
            record["network"] = network
            record["first_hints"] = [q.hint_cond for q in ours]
        record["hooked"] = True
        return inner(*args, **kwargs)

    p.sample = sample


def run_spied(p) -> tuple[Any, dict, Any]:
    """Runs ``p`` under :func:`sample_spy`, the hooks raising nothing: the result, the record and
    the ControlNet params of the one InstantID unit."""
    record: dict = {}
    sample_spy(p, record)
    result = fake_host.run_job(p)
    assert fake_host.HOOK_ERRORS == []
    (param,) = record["params"]
    return result, record, param


def hint_array(tensor: torch.Tensor) -> np.ndarray:
    return (tensor[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def circle_centres(hint: np.ndarray) -> np.ndarray:
    """The five keypoints of a hint: the centroid of each keypoint colour's full-intensity pixels."""
    centres = []
    for colour in DEFAULT_COLORS:
        ys, xs = np.nonzero(np.all(hint == np.array(colour, np.uint8), axis=-1))
        assert len(xs), f"no {colour} circle in the hint"
        centres.append((xs.mean(), ys.mean()))
    return np.array(centres)


@pytest.fixture
def cn(monkeypatch, host) -> fake_controlnet.FakeControlNet:
    return fake_controlnet.install(monkeypatch)


# -- the checkpoint is checked when it is final -----------------------------------------------------
def test_a_job_after_a_refiner_job_runs(host, unet) -> None:
    """After a refiner job the refiner is still loaded at before_process; the WebUI loads the base next."""
    refiner = fake_host.fake_sd_model(make_unet(seed=5, context_dim=1280, adm_in_channels=2560))
    plain = fake_host.run_job(job(host, unet, False))
    p = job(host, unet, enabled(), sd_model=refiner, model_after_before_process=fake_host.fake_sd_model(unet))
    result = fake_host.run_job(p)
    assert fake_host.HOOK_ERRORS == []
    assert result.extra_generation_params["InstantID"] == "on"
    assert not torch.equal(result.latents, plain.latents)
    assert no_hooks(unet)


def test_an_api_checkpoint_override_to_sdxl_runs(host, unet) -> None:
    sd15 = fake_host.fake_sd_model(unet, is_sdxl=False)
    p = job(host, unet, enabled(), sd_model=sd15, model_after_before_process=fake_host.fake_sd_model(unet))
    assert fake_host.run_job(p).extra_generation_params["InstantID"] == "on"


def test_a_checkpoint_that_turns_out_sd15_is_refused_when_sampling_starts(host, unet) -> None:
    sd15 = fake_host.fake_sd_model(unet, is_sdxl=False)
    p = job(host, unet, enabled(), model_after_before_process=sd15)
    with pytest.raises(IncompatibleModelError, match="only with SDXL") as info:
        fake_host.run_job(p)
    assert info.value.status_code == 422
    assert no_hooks(unet)
    assert p.closed and host.run.run_of(p) is None


# -- every change is the job's, and undone by it --------------------------------------------------------
def test_a_failed_generation_is_undone_when_the_webui_closes_it(host, unet, cn, with_identitynet) -> None:
    p = job(host, unet, enabled(control_weight=0.8), cn=cn)
    before = p.script_args

    def broken_init(*args):
        raise RuntimeError("bad mask (simulated)")

    p.init = broken_init  # fails after ControlNet's process, so no postprocess runs
    with pytest.raises(RuntimeError, match="simulated"):
        fake_host.run_job(p)
    assert p.script_args == before  # our unit is gone from the slot
    assert not any(k.startswith("InstantID-IdentityNet") for k in cn.global_state.cn_models)
    assert "sample" not in vars(p) or vars(p)["sample"].__name__ != "sample_with_instantid"
    assert "close" not in vars(p)
    assert fake_host.CALLBACKS.get("cfg_denoiser", []) == []


def test_nested_jobs_keep_their_own_settings_and_leave_nothing(host, unet, cn, with_identitynet) -> None:
    plain_before = fake_host.run_job(job(host, unet, False))
    seen: dict[str, Any] = {}
    real_init = host.run.MultiIPAttentionPatch.__init__

    def recording_init(self, unet_, adapter, identities, **kwargs):
        (identity,) = identities  # one person: a cast of one
        seen.setdefault("scales", []).append(identity.scale)
        seen.setdefault("tokens", []).append(identity.cond)
        real_init(self, unet_, adapter, identities, **kwargs)

    spy = Spy()
    outer = job(host, unet, enabled(control_weight=0.8, id_weight=0.8), cn=cn, spy=spy)
    outer_unit_slot = {}

    def nested() -> None:
        outer_job = host.run.run_of(outer)
        seen["outer_open_during_nested"] = outer_job is not None and not outer_job.closed
        inner = job(
            host, unet, enabled(images=[face_photo(ident=2)], control_weight=0.5, id_weight=0.3), cn=cn
        )
        inner_record: dict = {}
        sample_spy(inner, inner_record)
        fake_host.run_job(inner)
        seen["inner_params"] = inner_record["params"]
        seen["outer_slot_after_nested"] = outer.script_args[outer_unit_slot["slot"]]

    spy.nested = nested
    record: dict = {}
    sample_spy(outer, record)

    def remember_slot(p, *args):
        run = host.run.run_of(p)
        outer_unit_slot["slot"] = run.unit.slot
        outer_unit_slot["unit"] = run.unit.unit

    spy.process = remember_slot
    host.run.MultiIPAttentionPatch.__init__ = recording_init
    try:
        result = fake_host.run_job(outer)
    finally:
        host.run.MultiIPAttentionPatch.__init__ = real_init
    assert fake_host.HOOK_ERRORS == []
    assert seen["outer_open_during_nested"]
    assert seen["scales"] == [0.8, 0.3]  # each job its own ID weight ...
    assert not torch.equal(seen["tokens"][0], seen["tokens"][1])  # ... and its own face
    assert [q.weight for q in record["params"]] == [0.8]
    assert [q.weight for q in seen["inner_params"]] == [0.5]
    assert seen["outer_slot_after_nested"] is outer_unit_slot["unit"]  # the nested job left it alone
    assert result.extra_generation_params["InstantID"] == "on"
    # Afterwards: nothing left, and plain SDXL is bit-identical to before.
    assert no_hooks(unet)
    assert not any(k.startswith("InstantID-IdentityNet") for k in cn.global_state.cn_models)
    assert fake_host.CALLBACKS.get("cfg_denoiser", []) == []
    assert torch.equal(fake_host.run_job(job(host, unet, False)).latents, plain_before.latents)


# -- geometry: the hint where the sampler works -------------------------------------------------------
def test_only_masked_inpaint_hint_lies_on_the_masked_face(host, unet, cn, with_identitynet) -> None:
    photo = face_photo(ident=3, size=(1024, 1024), center=(700, 300), face=160)
    mask = Image.new("L", (1024, 1024), 0)
    mask.paste(255, (590, 190, 810, 410))
    p = job(
        host,
        unet,
        enabled(control_weight=0.8),
        cn=cn,
        img2img=True,
        init_images=[photo],
        image_mask=mask,
        inpaint_full_res=True,
        inpaint_full_res_padding=32,
        width=512,
        height=512,
    )
    result, _, param = run_spied(p)
    hint = hint_array(param.hint_cond)
    assert hint.shape == (512, 512, 3)
    from instantid_ext.webui import services

    face = services.resources().analyzer().analyze_one(photo)
    x, y, w, h = p.paste_to  # the crop the host sampled
    expected = (face.kps - np.array([x, y])) * np.array([512 / w, 512 / h])
    assert np.abs(circle_centres(hint) - expected).max() < 8
    assert result.extra_generation_params["InstantID keypoints from"] == "init image"


def test_hires_with_another_aspect_ratio_crops_the_hint_like_the_webui(
    host, unet, cn, with_identitynet
) -> None:
    p = job(
        host,
        unet,
        enabled(control_weight=0.8, images=[face_photo(size=(512, 512), center=(300, 200), face=140)]),
        cn=cn,
        width=512,
        height=512,
        enable_hr=True,
        hr_resize_x=768,
        hr_resize_y=512,
        n_iter=2,
    )
    _, record, param = run_spied(p)
    first = circle_centres(hint_array(record["first_hints"][0]))
    hires = hint_array(param.hint_cond)  # swapped in before the hires pass
    assert hires.shape == (512, 768, 3)
    # The WebUI upscales 512² to 768² and crops 32 latent rows (256 px) off, 128 px at the top.
    assert (p.hr_upscale_to_x, p.hr_upscale_to_y, p.truncate_y) == (768, 768, 32)
    expected = (first + 0.5) * 1.5 - 0.5 - np.array([0, 128])
    assert np.abs(circle_centres(hires) - expected).max() < 2
    # Both passes are 512 px high: ControlNet, which tells the passes apart by the hint's height
    # alone, must still get the first-pass hint in the first pass and the hires one after, in
    # both batches.
    sizes = record["network"].hint_sizes
    assert {canvas for canvas, _ in sizes} == {(512, 512), (512, 768)}
    assert all(canvas == hint for canvas, hint in sizes), sizes


def test_a_face_off_the_canvas_is_a_warning_and_fails_face_region_only(host, unet) -> None:
    tall = face_photo(size=(360, 640), center=(180, 70), face=80)  # a 9:16 photo, face near the top
    p = job(host, unet, enabled(images=[tall]), width=1216, height=832)
    result = fake_host.run_job(p)
    warning = result.extra_generation_params["InstantID warning"]
    assert (
        "none of the 5 face keypoints from the reference photo lie on the 1216×832 canvas" in warning.lower()
    )
    assert any("InstantID:" in comment for comment in p.comments)
    p = job(host, unet, enabled(images=[tall], face_region_only=True), width=1216, height=832)
    with pytest.raises(InvalidInputError, match="'Face region only' is on, but the face box") as info:
        fake_host.run_job(p)
    assert info.value.status_code == 422
    assert no_hooks(unet)


def test_auto_pose_without_a_face_in_the_init_image_falls_back_with_a_warning(host, unet) -> None:
    blank = Image.fromarray(fp.background(512, 512))
    p = job(host, unet, enabled(), img2img=True, init_images=[blank], width=512, height=512)
    result = fake_host.run_job(p)
    assert (
        "keypoints come from the reference photo instead"
        in result.extra_generation_params["InstantID warning"]
    )
    assert result.extra_generation_params["InstantID keypoints from"] == "reference"


def test_init_image_pose_needs_img2img(host, unet) -> None:
    with pytest.raises(InvalidInputError, match="needs img2img"):
        fake_host.run_job(job(host, unet, enabled(pose_source="init_image")))


def test_show_hint_adds_the_keypoint_image_to_the_outputs(host, unet) -> None:
    p = job(host, unet, enabled(show_hint=True), width=64, height=64)
    ours = p.scripts.alwayson_scripts[-1]
    ours.before_process(p, *p.script_args)
    p.init(["a photo"], [p.seed], [0])
    ours.process_batch(p, *p.script_args)
    processed = fake_host.Processed(["the generated image"], {})
    ours.postprocess(p, processed, *p.script_args)
    assert len(processed.images) == 2  # one hint: no hires pass
    hint = processed.images[-1]
    assert isinstance(hint, Image.Image) and hint.size == (64, 64)
    assert np.asarray(hint).max() == 255  # keypoints drawn


def test_identitynet_file_shared_with_the_users_unit(host, unet, cn, with_identitynet: Path) -> None:
    """The user's own unit on the same IdentityNet file: one load, one network in ControlNet's cache."""
    weights = with_identitynet / "diffusion_pytorch_model.safetensors"
    cn.global_state.on_disk["my_identitynet [0]"] = str(weights)
    cn.global_state.update_cn_models()
    p = job(host, unet, enabled(control_weight=0.8), cn=cn)
    _, _, param = run_spied(p)
    assert param.control_model is cn.Script.model_cache["my_identitynet [0]"].model
    assert cn.Script.loads == [str(weights)]


def test_each_output_gets_its_likeness_score_in_its_infotext(host, unet) -> None:
    same = face_photo(size=(256, 256))  # the reference photo itself as the output: a copy-paste
    p = job(
        host, unet, enabled(likeness=True), width=256, height=256, base_image=same, batch_size=1, n_iter=2
    )
    result = fake_host.run_job(p)
    assert fake_host.HOOK_ERRORS == []
    assert [text["InstantID likeness"] for text in result.infotexts] == [
        "1.00 (strong, antelopev2, copy-paste)"
    ] * 2
    assert any("Likeness 1.00 (strong)" in comment for comment in p.comments)
    empty = Image.fromarray(fp.background(256, 256))
    result = fake_host.run_job(
        job(host, unet, enabled(likeness=True), width=256, height=256, base_image=empty)
    )
    assert result.infotexts[0]["InstantID likeness"] == "no face"
