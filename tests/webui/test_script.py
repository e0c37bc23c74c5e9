"""The real script's hooks on a stand-in WebUI: args, SDXL check, hook life cycle, infotext."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instantid_ext.errors import IncompatibleModelError, InstantIDError, NoFaceError
from tests.fakes import antelopev2_pack as fp
from tests.fakes.sgm_unet import make_unet
from tests.webui import fake_host


def face_photo(ident: int = 1) -> Image.Image:
    img = fp.background(256, 256)
    fp.draw_face(img, (128, 128), 120, ident=ident)
    return Image.fromarray(img)


def new_job(host, unet, args: tuple, **kwargs) -> fake_host.Processing:
    script = host.InstantIDScript()
    script.args_from, script.args_to = 0, len(args)
    runner = fake_host.ScriptRunner([script])
    model = kwargs.pop("sd_model", None) or fake_host.fake_sd_model(unet)
    return fake_host.Processing(sd_model=model, script_args=tuple(args), scripts=runner, **kwargs)


def run(host, unet, args: tuple, **kwargs) -> fake_host.Processed:
    return fake_host.run_job(new_job(host, unet, args, **kwargs))


def no_hooks(module: torch.nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def enabled(**fields) -> dict:
    return {"enabled": True, "images": [face_photo()], "control_weight": 0.0, **fields}


def test_disabled_changes_nothing(host, unet) -> None:
    baseline = run(host, unet, (False,))
    again = run(host, unet, ({"enabled": False},))
    assert torch.equal(baseline.latents, again.latents)
    assert again.extra_generation_params == {}
    assert no_hooks(unet)
    assert fake_host.HOOK_ERRORS == []


def test_enabled_applies_the_face_only_while_sampling(host, unet) -> None:
    baseline = run(host, unet, (False,))
    seen = []
    job = new_job(host, unet, (enabled(),))
    real_sample = fake_host.Processing.sample

    def spy(self, **kwargs):
        seen.append(not no_hooks(unet))
        return real_sample(self, **kwargs)

    job.sample = spy.__get__(job)
    result = fake_host.process_images(job)
    assert fake_host.HOOK_ERRORS == []
    assert seen == [True]
    assert not torch.equal(result.latents, baseline.latents)
    assert no_hooks(unet)
    params = result.extra_generation_params
    assert params["InstantID"] in ("on", "True", True) or "InstantID" in params
    assert params["InstantID adapter"] == "ip-adapter.bin"
    assert len(params["InstantID adapter hash"]) == 10
    assert params["InstantID source"].startswith("images:")
    after = run(host, unet, (False,))
    assert torch.equal(after.latents, baseline.latents)  # bit-identical once InstantID is off


@pytest.mark.parametrize("mode", ["chunked", "separate", "skip_uncond"])
def test_batching_modes_route_rows_like_a_single_call(host, unet, mode: str) -> None:
    if mode == "skip_uncond":
        # Cond rows only: equals the cond half of a together-call; compare against an explicit oracle.
        together = run(host, unet, (enabled(),), cfg_mode="together", steps=1, cfg_scale=1.0)
        skipped = run(host, unet, (enabled(),), cfg_mode=mode, steps=1, cfg_scale=1.0)
        assert torch.allclose(together.latents, skipped.latents, atol=1e-5)
        return
    together = run(host, unet, (enabled(),), cfg_mode="together", batch_size=2)
    other = run(host, unet, (enabled(),), cfg_mode=mode, batch_size=2)
    assert torch.allclose(together.latents, other.latents, atol=1e-5)


def test_api_dict_and_positional_forms_agree(host, unet) -> None:
    from instantid_ext.args import ARG_FIELDS

    photo = face_photo()
    by_dict = run(host, unet, (enabled(images=[photo]),))
    defaults = list(fake_host_defaults(ARG_FIELDS))
    positional = defaults.copy()
    positional[ARG_FIELDS.index("enabled")] = True
    positional[ARG_FIELDS.index("images")] = [photo]
    positional[ARG_FIELDS.index("control_weight")] = 0.0
    by_position = run(host, unet, tuple(positional))
    # The API form: one dict in the first slot, the UI's defaults after it.
    api_form = (enabled(images=[photo]), *defaults[1:])
    by_api = run(host, unet, api_form)
    assert torch.equal(by_dict.latents, by_position.latents)
    assert torch.equal(by_dict.latents, by_api.latents)


def fake_host_defaults(fields: tuple[str, ...]) -> list:
    from instantid_ext.args import InstantIDArgs

    defaults = InstantIDArgs()
    return [getattr(defaults, name) for name in fields]


def test_sd15_model_is_refused_before_anything_is_touched(host, unet) -> None:
    sd15 = fake_host.fake_sd_model(unet, is_sdxl=False)
    with pytest.raises(IncompatibleModelError, match="only with SDXL") as info:
        run(host, unet, (enabled(),), sd_model=sd15)
    assert info.value.status_code == 422
    assert no_hooks(unet)


def test_refiner_is_refused(host) -> None:
    refiner = make_unet(seed=5, context_dim=1280, adm_in_channels=2560)
    with pytest.raises(IncompatibleModelError, match="refiner"):
        run(host, refiner, (enabled(),))


def test_no_face_aborts_with_a_clear_message(host, unet) -> None:
    blank = Image.fromarray(fp.background(200, 200))
    with pytest.raises(NoFaceError, match="No face was found in the reference image") as info:
        run(host, unet, (enabled(images=[blank]),))
    assert info.value.status_code == 422
    # The WebUI's API prints no traceback for an HTTPException; the UI shows "NoFaceError: <message>".
    from fastapi import HTTPException

    assert isinstance(info.value, HTTPException)
    assert type(info.value).__name__ == "NoFaceError"
    assert str(info.value).startswith("No face was found")
    assert no_hooks(unet)


def test_bad_argument_aborts_naming_the_field(host, unet) -> None:
    with pytest.raises(InstantIDError, match="id_weight"):
        run(host, unet, (enabled(id_weight=7),))


def test_failure_inside_sampling_leaves_nothing_behind(host, unet) -> None:
    baseline = run(host, unet, (False,))
    calls = {"n": 0}

    def explode(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA out of memory (simulated)")

    handle = unet.register_forward_pre_hook(explode, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            run(host, unet, (enabled(),))
    finally:
        handle.remove()
    assert no_hooks(unet)
    assert torch.equal(run(host, unet, (False,)).latents, baseline.latents)


def test_hires_pass_keeps_the_face_tokens(host, unet) -> None:
    plain = run(host, unet, (False,), enable_hr=True)
    with_face = run(host, unet, (enabled(),), enable_hr=True)
    assert fake_host.HOOK_ERRORS == []
    assert with_face.latents.shape[-1] == 16
    assert not torch.equal(plain.latents, with_face.latents)
    assert no_hooks(unet)


def test_saved_identity_needs_no_photo(host, unet, models_path: Path) -> None:
    from instantid_ext.webui import services

    message = services.save_identity("alice", [face_photo(2)], "largest", 0, False)
    assert message.startswith("Saved identity 'alice'"), message
    by_photo = run(host, unet, (enabled(images=[face_photo(2)]),))
    by_identity = run(host, unet, ({"enabled": True, "identity": "alice", "control_weight": 0.0},))
    assert torch.allclose(by_photo.latents, by_identity.latents, atol=1e-6)
    assert by_identity.extra_generation_params["InstantID source"] == "identity:alice"


def test_preview_draws_faces_and_the_hint(host) -> None:
    from instantid_ext.webui import services

    annotated, hint, message = services.preview(
        {"images": [face_photo()], "pose_source": "reference"}, 96, 64
    )
    assert annotated.shape == (256, 256, 3)
    assert hint.shape == (64, 96, 3)
    assert hint.max() == 255
    assert message.startswith("Face found")
    _, _, message = services.preview({"images": [], "pose_source": "reference"}, 96, 64)
    assert "Add a reference" in message


def test_preview_of_a_preset_with_edits_matches_the_generation_hint(host) -> None:
    from instantid_ext.method.keypoints import draw_kps
    from instantid_ext.method.pose_presets import PoseEdit, apply_edit, preset_kps
    from instantid_ext.webui import services

    fields = {
        "pose_source": "preset",
        "pose_preset": "Three-quarter left",
        "pose_mirror": True,
        "pose_rotate": 10,
    }
    annotated, hint, message = services.preview(fields, 512, 384)
    kps = apply_edit(
        preset_kps("three_quarter_left", (512, 384)), (512, 384), PoseEdit(mirror=True, rotate=10)
    )
    assert annotated is None
    np.testing.assert_array_equal(hint, np.asarray(draw_kps((512, 384), kps)))
    assert "512×384" in message


def test_script_unload_removes_everything(host, unet) -> None:
    job = new_job(host, unet, (enabled(),))
    seen = {}

    def unload_while_sampling(self, **kwargs):
        seen["hooked"] = not no_hooks(unet)
        for fn in fake_host.CALLBACKS["script_unloaded"]:
            fn()
        seen["after_unload"] = no_hooks(unet)
        return torch.zeros(1, 4, 8, 8)

    job.sample = unload_while_sampling.__get__(job)
    fake_host.run_job(job)
    assert seen == {"hooked": True, "after_unload": True}
    assert host.run.run_of(job) is None  # closed
    assert no_hooks(unet)


def test_face_keypoints_for_controlnets_preprocessor(host) -> None:
    from instantid_ext.webui import services

    kps = services.face_keypoints_for_controlnet(np.asarray(face_photo()))
    assert kps.shape == (5, 2)
    assert services.face_keypoints_for_controlnet(fp.background(100, 100)) is None


# -- IdentityNet through (a stand-in of) sd-webui-controlnet ---------------------------------
def test_identitynet_runs_through_controlnet_with_face_tokens_as_context(
    host, unet, with_identitynet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.webui import fake_controlnet

    cn = fake_controlnet.install(monkeypatch)
    cn_script = cn.Script()
    ours = host.InstantIDScript()
    user_unit = cn.unit(
        enabled=True, module="none", model="user_canny [0]", image=np.zeros((8, 8, 3), np.uint8)
    )
    cn.global_state.cn_models["user_canny [0]"] = str(
        with_identitynet / "diffusion_pytorch_model.safetensors"
    )
    units = (user_unit, cn.unit(enabled=False), cn.unit(enabled=False))
    cn_script.args_from, cn_script.args_to = 0, len(units)
    args = (enabled(control_weight=0.7, control_start=0.1, control_end=0.9),)
    ours.args_from, ours.args_to = len(units), len(units) + len(args)
    runner = fake_host.ScriptRunner([cn_script, ours])
    job = fake_host.Processing(
        sd_model=fake_host.fake_sd_model(unet), script_args=units + args, scripts=runner
    )
    seen = {}

    def inner_sample(self, **kwargs):
        net = cn_script.latest_network
        params = net.control_params
        seen["types"] = [p.control_model_type.name for p in params]
        seen["weights"] = [p.weight for p in params]
        text = torch.randn(3, 77, 2048)
        marks = torch.tensor([1024.0, -1024.0, 1024.0])[:, None, None].expand(3, 1, 2048)
        net.forward(torch.zeros(3, 4, 8, 8), context=torch.cat([marks, text], dim=1))
        # The user's unit uses the same IdentityNet file: ControlNet holds it once, called per unit.
        seen["shared"] = params[-1].control_model is params[0].control_model
        seen["user"], seen["ours"] = (call["context"] for call in params[0].control_model.calls[-2:])
        seen["text"] = text
        seen["slot"] = self.script_args[2]
        return fake_host.Processing.sample(self, **kwargs)

    job.sample = inner_sample.__get__(job)
    fake_host.process_images(job)
    assert fake_host.HOOK_ERRORS == []
    assert seen["types"] == ["ControlNet", "InstantID"]  # the user's unit untouched, ours retyped
    assert seen["weights"] == [1.0, 0.7]
    # The last free slot, under ControlNet's own name for the file: one copy in memory, no renaming.
    assert seen["slot"].model == "user_canny [0]"
    assert seen["shared"] and len(cn.Script.loads) == 1
    _, adapter = importlib.import_module("instantid_ext.webui.services").resources().adapter()
    cond = adapter.face_tokens(torch.tensor(face_embedding()))
    uncond = adapter.uncond_tokens()
    context = seen["ours"]
    assert torch.allclose(context[0], cond[0], atol=1e-6)  # cond rows: Resampler(embedding)
    assert torch.allclose(context[1], uncond[0], atol=1e-6)  # uncond rows: Resampler(zeros)
    assert torch.allclose(context[2], cond[0], atol=1e-6)
    assert context.shape == (3, 16, 2048)  # never the text
    assert torch.equal(seen["user"], seen["text"])  # other units keep the text context
    assert job.script_args[:3] == units  # the slot is given back after the job
    assert not any("ControlNet" in key for key in job.extra_generation_params if key != "ControlNet 0")


def face_embedding() -> np.ndarray:
    from instantid_ext.webui import services

    return services.resources().analyzer().analyze_one(face_photo()).embedding


def test_controlnet_missing_is_a_clear_error(host, unet, with_identitynet: Path, monkeypatch) -> None:
    from tests.webui import fake_controlnet

    fake_controlnet.uninstall(monkeypatch)
    with pytest.raises(InstantIDError, match="sd-webui-controlnet"):
        run(host, unet, (enabled(control_weight=0.8),))
    assert no_hooks(unet)


def test_face_keys_are_computed_once_per_job(host, unet, monkeypatch) -> None:
    from instantid_ext.method.attention import IPAttentionPatch

    calls = []
    real = IPAttentionPatch._precompute

    def counting(self, device, dtype):
        calls.append((device, dtype))
        return real(self, device, dtype)

    monkeypatch.setattr(IPAttentionPatch, "_precompute", counting)
    job = new_job(host, unet, (enabled(),), n_iter=3)
    fake_host.run_job(job)
    assert fake_host.HOOK_ERRORS == []
    assert len(calls) == 1
    assert job._instantid_job.precomputed == {}  # released after the job


def test_face_region_only_masks_identitynet_residuals_for_the_job(
    host, unet, with_identitynet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.webui import fake_controlnet

    cn = fake_controlnet.install(monkeypatch)
    cn_script, ours = cn.Script(), host.InstantIDScript()
    units = (cn.unit(enabled=False),)
    args = (enabled(control_weight=0.8, face_region_only=True),)
    cn_script.args_from, cn_script.args_to = 0, 1
    ours.args_from, ours.args_to = 1, 2
    runner = fake_host.ScriptRunner([cn_script, ours])
    job = fake_host.Processing(
        sd_model=fake_host.fake_sd_model(unet), script_args=units + args, scripts=runner
    )
    seen = {}

    def residuals() -> list[torch.Tensor]:
        network = cn_script.latest_network
        marks = torch.tensor([1024.0, -1024.0])[:, None, None].expand(2, 1, 2048)
        network.forward(torch.zeros(2, 4, 8, 8), context=torch.cat([marks, torch.zeros(2, 77, 2048)], 1))
        return network.residuals[-1]  # ours, after ControlNet's weight and per-unit mask

    def inner_sample(self, **kwargs):
        seen["during"] = residuals()
        return fake_host.Processing.sample(self, **kwargs)

    job.sample = inner_sample.__get__(job)
    fake_host.run_job(job)
    assert fake_host.HOOK_ERRORS == []
    first = seen["during"][0][0, 0]  # full latent resolution: 8×8 for a 64×64 output
    assert first[4, 4] == pytest.approx(0.8)  # inside the face box: IdentityNet at its weight
    assert first[0, 0] == 0.0  # outside it: IdentityNet adds nothing there


def test_links_left_by_earlier_versions_are_removed_and_models_kept(host, models_path: Path) -> None:
    from instantid_ext.webui import services

    model = models_path / "instantid" / "ip-adapter.bin"
    folder = models_path / "instantid" / ".controlnet-links"
    folder.mkdir()
    os.link(model, folder / "identitynet-0123abcd.safetensors")
    (folder / "identitynet-dead.safetensors").symlink_to(models_path / "gone.safetensors")
    assert services.remove_legacy_links() == 2
    assert not folder.exists()
    assert model.is_file()  # the user's file is untouched
