"""The ControlNet bridge against a stand-in of sd-webui-controlnet 1.1.444-1.1.455 (no WebUI)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from instantid_ext.errors import DependencyError, InvalidInputError, ModelFileError, NoFaceError
from instantid_ext.keypoints import draw_kps
from instantid_ext.webui import controlnet
from instantid_ext.webui.controlnet import ControlNetBridge
from tests.webui import fake_controlnet as fake

VERSIONS = [(1, 1, 444), (1, 1, 449), (1, 1, 455)]
KPS = np.array([[400, 420], [620, 410], [510, 540], [430, 660], [600, 650]], dtype=np.float32)
CTX = 2048


@pytest.fixture(autouse=True)
def _fresh_bridge_state(monkeypatch):
    monkeypatch.setattr(controlnet, "_REGISTRY", controlnet._Registry())
    monkeypatch.setattr(controlnet, "_FACE_DETECTOR", None)


@pytest.fixture(params=VERSIONS, ids=lambda v: "cn-" + ".".join(map(str, v)))
def cn(request, monkeypatch) -> fake.FakeControlNet:
    return fake.install(monkeypatch, request.param)


@pytest.fixture
def bridge(cn) -> ControlNetBridge:
    return ControlNetBridge.detect()


@pytest.fixture
def model_file(tmp_path) -> Path:
    path = tmp_path / "models" / "InstantID" / "identitynet_sdxl.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"identitynet weights")
    return path


def user_model(cn: fake.FakeControlNet, tmp_path: Path, stem: str) -> str:
    """A model the user has in models/ControlNet, found by ControlNet's own scan."""
    path = tmp_path / "ControlNet" / f"{stem}.safetensors"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(stem.encode())
    key = f"{stem} [0123abcd]"
    cn.global_state.on_disk[key] = str(path)
    cn.global_state.update_cn_models()
    return key


def user_unit(cn: fake.FakeControlNet, model: str, weight: float = 0.6):
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = 255
    return cn.unit(enabled=True, module="canny", model=model, image=image, weight=weight)


def hint_for(p) -> np.ndarray:
    return np.array(draw_kps(controlnet.hint_size(p), KPS), dtype=np.uint8)


def face_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(1, 16, CTX, generator=gen), torch.randn(1, 16, CTX, generator=gen)


def text(gen: torch.Generator) -> torch.Tensor:
    return torch.randn(77, CTX, generator=gen)


def prompts(n: int, seed: int) -> tuple[fake.MulticondLearnedConditioning, list]:
    """SDXL prompts for ``n`` images as the WebUI passes them to ``p.sample`` (unmarked)."""
    gen = torch.Generator().manual_seed(seed)
    cond = fake.MulticondLearnedConditioning(
        (n,),
        [[fake.ComposableScheduledPromptConditioning([fake.sdxl_cond(text(gen))])] for _ in range(n)],
    )
    uncond = [[fake.sdxl_cond(text(gen))] for _ in range(n)]
    return cond, uncond


def text_rows(cond, uncond) -> torch.Tensor:
    """The prompt rows without ControlNet's marker token."""
    rows = fake.rows_of(cond, uncond)
    return rows[:, 1:] if rows.shape[1] == 78 else rows


def our_model(cn: fake.FakeControlNet, key: str) -> fake.RecordingControlModel:
    return cn.Script.model_cache[key][0]


def run_controlnet(cn, p):
    """ControlNet's ``process`` for the job; returns its script."""
    script = cn.cn_script(p)
    script.process(p)
    return script


# -- detection -----------------------------------------------------------------------------
def test_detect_reads_the_version_from_sys_modules(cn):
    bridge = ControlNetBridge.detect()
    assert bridge.version == cn.version
    ok, message = ControlNetBridge.available()
    assert ok
    assert ".".join(map(str, cn.version)) in message


def test_missing_controlnet_names_what_to_install(monkeypatch):
    fake.uninstall(monkeypatch)
    with pytest.raises(DependencyError, match=r"Install sd-webui-controlnet 1\.1\.444 or newer"):
        ControlNetBridge.detect()
    ok, message = ControlNetBridge.available()
    assert not ok
    assert "Extensions tab" in message


def test_too_old_controlnet_names_found_and_minimum(monkeypatch):
    fake.install(monkeypatch, (1, 1, 443))
    with pytest.raises(DependencyError) as err:
        ControlNetBridge.detect()
    assert "1.1.443 is too old" in str(err.value)
    assert "1.1.444 or newer" in str(err.value)


def test_version_flag_parsing():
    assert controlnet.parse_version("v1.1.455") == (1, 1, 455)
    assert controlnet.parse_version("v1.1.444-dev") == (1, 1, 444)
    assert controlnet.parse_version(None) is None


# -- preprocessor ----------------------------------------------------------------------------
def test_preprocessor_registered_once_under_instant_id(cn, bridge):
    assert bridge.register_preprocessor()
    assert bridge.register_preprocessor()  # a UI reload registers again: no assertion, no duplicate
    registry = cn.Preprocessor
    ours = registry.get_preprocessor(controlnet.PREPROCESSOR_NAME)
    assert ours is registry.get_preprocessor(controlnet.PREPROCESSOR_LABEL)
    assert ours.label == "InstantID keypoints"
    assert ours.tags == ["Instant-ID"]
    labels = [p.label for p in registry.get_sorted_preprocessors()]
    assert labels.count("InstantID keypoints") == 1
    assert "Instant-ID" in registry.get_all_preprocessor_tags()
    assert ours in {ours} and hash(ours) == hash(controlnet.PREPROCESSOR_NAME)  # CN's name-based hashing
    if hasattr(registry, "unload_unused"):  # 1.1.446+: called on every preprocessor each run
        registry.unload_unused(set())
    if cn.version >= (1, 1, 448):  # units validate their module against the registry
        unit = cn.unit(enabled=True, module=controlnet.PREPROCESSOR_NAME)
        assert unit.module == controlnet.PREPROCESSOR_NAME


def test_preprocessor_registration_without_registry(cn, bridge, monkeypatch):
    monkeypatch.delitem(sys.modules, "scripts.supported_preprocessor")
    assert bridge.register_preprocessor() is False


def test_preprocessor_draws_the_detected_keypoints_at_input_size(cn, bridge):
    bridge.register_preprocessor()
    seen = []

    def detector(rgb: np.ndarray) -> np.ndarray:
        seen.append(rgb.shape)
        return KPS / 2

    bridge.set_face_detector(detector)
    ours = cn.Preprocessor.get_preprocessor(controlnet.PREPROCESSOR_NAME)
    photo = np.full((600, 500, 3), 128, np.uint8)
    result = ours.cached_call(photo, resolution=512, slider_1=-1, slider_2=-1, low_vram=False, model="x")
    image = result.value if cn.version >= (1, 1, 446) else result
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.array(draw_kps((500, 600), KPS / 2)))
    rgba = np.dstack([photo, np.full((600, 500), 255, np.uint8)])  # the /detect route may send RGBA
    np.testing.assert_array_equal(ours(rgba, 512), image)
    assert seen == [(600, 500, 3), (600, 500, 3)]


def test_preprocessor_reports_no_face_and_no_detector(cn, bridge):
    bridge.register_preprocessor()
    ours = cn.Preprocessor.get_preprocessor(controlnet.PREPROCESSOR_NAME)
    photo = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(DependencyError, match="face analysis"):
        ours(photo, 512)
    controlnet.set_face_detector(lambda rgb: None)
    with pytest.raises(NoFaceError, match="no face"):
        ours(photo, 512)


# -- model ------------------------------------------------------------------------------------
def test_model_key_for_a_neutral_path(cn, bridge, model_file):
    key = bridge.identitynet_model_key(model_file)
    assert bridge.identitynet_model_key(model_file) == key
    assert cn.global_state.cn_models[key] == str(model_file.absolute())
    assert "xl" in key.lower() and "instant_id" not in key.lower()
    assert cn.Script.load_control_model(key)[1] is cn.hook.ControlModelType.ControlNet
    bridge.forget_models()
    assert key not in cn.global_state.cn_models


@pytest.mark.parametrize(
    "relative",
    ["ControlNet/control_instant_id_sdxl.safetensors", "instant_id/ControlNetModel"],
    ids=["renamed-file", "diffusers-folder"],
)
def test_model_path_with_instant_id_is_linked_under_a_neutral_name(cn, bridge, tmp_path, relative):
    source = tmp_path / relative
    weights = source / "diffusion_pytorch_model.safetensors" if source.suffix == "" else source
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"identitynet weights")
    # What ControlNet does with the path as it is: InstantID, which needs an IP-Adapter unit first.
    cn.global_state.cn_models["as-is"] = str(weights)
    assert cn.Script.load_control_model("as-is")[1] is cn.hook.ControlModelType.InstantID

    key = bridge.identitynet_model_key(source, cache_dir=tmp_path / "links")
    given = cn.global_state.cn_models[key]
    assert "instant_id" not in given.lower()
    assert Path(given).parent == tmp_path / "links"
    assert os.path.samefile(given, weights)
    assert cn.Script.load_control_model(key)[1] is cn.hook.ControlModelType.ControlNet
    assert bridge.identitynet_model_key(source, cache_dir=tmp_path / "links") == key  # link reused


def test_model_link_folder_must_be_neutral(cn, bridge, tmp_path):
    source = tmp_path / "control_instant_id_sdxl.safetensors"
    source.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="link folder"):
        bridge.identitynet_model_key(source, cache_dir=tmp_path / "instant_id_links")


def test_model_file_must_exist(cn, bridge, tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        bridge.identitynet_model_key(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="diffusion_pytorch_model"):
        bridge.identitynet_model_key(tmp_path / "empty")


def test_model_entry_survives_a_controlnet_rescan(cn, bridge, model_file):
    key = bridge.identitynet_model_key(model_file)
    cn.global_state.update_cn_models()  # the refresh button drops runtime entries
    assert key not in cn.global_state.cn_models
    p = cn.job([cn.unit(enabled=False)])
    bridge.inject_unit(p, hint_for(p), 0.8, 0.0, 1.0, key)
    assert cn.global_state.cn_models[key] == str(model_file.absolute())


# -- injection --------------------------------------------------------------------------------
def test_unit_goes_into_the_last_disabled_slot(cn, bridge, model_file, tmp_path):
    key = bridge.identitynet_model_key(model_file)
    user = user_unit(cn, user_model(cn, tmp_path, "canny_xl"))
    free = [cn.unit(enabled=False), cn.unit(enabled=False)]
    p = cn.job([user, *free])
    before = p.script_args
    hint = hint_for(p)

    handle = bridge.inject_unit(p, hint, 0.8, 0.1, 0.9, key)

    args = p.script_args
    assert isinstance(args, tuple) and len(args) == len(before)
    assert handle.slot == 4 and handle.unit_index == 2
    assert all(args[i] is before[i] for i in range(len(args)) if i != 4)
    unit = args[4]
    assert unit is handle.unit and handle.original is free[1]
    assert unit.enabled and unit.module == "none" and unit.model == key
    assert unit.image is hint
    assert (unit.weight, unit.guidance_start, unit.guidance_end) == (0.8, 0.1, 0.9)
    assert cn.ec.resize_mode_from_value(unit.resize_mode) is cn.ec.ResizeMode.RESIZE
    assert cn.ec.control_mode_from_value(unit.control_mode) is cn.ec.ControlMode.BALANCED
    assert not unit.pixel_perfect and not unit.low_vram
    assert not unit.save_detected_map and not unit.inpaint_crop_input_image

    assert handle.restore(p)
    assert p.script_args == before and p.script_args[4] is free[1]
    assert not handle.restore(p)  # idempotent


def test_list_arguments_stay_a_list(cn, bridge, model_file):
    key = bridge.identitynet_model_key(model_file)
    p = cn.job([cn.unit(enabled=False)])
    p.script_args = list(p.script_args)
    bridge.inject_unit(p, hint_for(p), 1.0, 0.0, 1.0, key)
    assert isinstance(p.script_args, list)


def test_api_dict_units_follow_controlnets_own_enabled_default(cn, bridge, model_file):
    key = bridge.identitynet_model_key(model_file)
    units = [{"enabled": False, "module": "none"}, {"enabled": False}, {"module": "none"}]
    p = cn.job(units)
    handle = bridge.inject_unit(p, hint_for(p), 1.0, 0.0, 1.0, key)
    # Without "enabled", 1.1.444-1.1.447 run the unit (dataclass default True); 1.1.448+ do not.
    expected = 1 if cn.version < (1, 1, 448) else 2
    assert handle.unit_index == expected
    assert p.script_args[2 : 2 + 3][expected] is handle.unit
    assert len(p.script_args) == 7


def test_no_free_unit_is_a_clear_error(cn, bridge, model_file, tmp_path):
    key = bridge.identitynet_model_key(model_file)
    model = user_model(cn, tmp_path, "canny_xl")
    p = cn.job([user_unit(cn, model) for _ in range(3)])
    before = p.script_args
    with pytest.raises(InvalidInputError, match="All 3 ControlNet units are in use") as err:
        bridge.inject_unit(p, hint_for(p), 1.0, 0.0, 1.0, key)
    assert "Multi-ControlNet: ControlNet unit number" in str(err.value)
    assert p.script_args is before


def test_controlnet_not_active_in_this_job(cn, bridge, model_file):
    key = bridge.identitynet_model_key(model_file)
    p = cn.job([cn.unit(enabled=False)])
    p.scripts.alwayson_scripts.pop(1)
    with pytest.raises(DependencyError, match="not active"):
        bridge.inject_unit(p, hint_for(p), 1.0, 0.0, 1.0, key)


@pytest.mark.parametrize(
    ("hint", "weight", "start", "end"),
    [
        (np.zeros((8, 8), np.uint8), 1.0, 0.0, 1.0),
        (np.zeros((8, 8, 3), np.float32), 1.0, 0.0, 1.0),
        (np.zeros((8, 8, 3), np.uint8), 2.5, 0.0, 1.0),
        (np.zeros((8, 8, 3), np.uint8), 1.0, 0.6, 0.4),
    ],
)
def test_bad_unit_arguments(cn, bridge, model_file, hint, weight, start, end):
    key = bridge.identitynet_model_key(model_file)
    p = cn.job([cn.unit(enabled=False)])
    with pytest.raises(InvalidInputError):
        bridge.inject_unit(p, hint, weight, start, end, key)


def test_injecting_twice_replaces_the_first(cn, bridge, model_file):
    key = bridge.identitynet_model_key(model_file)
    p = cn.job([cn.unit(enabled=False), cn.unit(enabled=False)])
    first = bridge.inject_unit(p, hint_for(p), 1.0, 0.0, 1.0, key)
    second = bridge.inject_unit(p, hint_for(p), 0.5, 0.0, 1.0, key)
    assert first.restored and second.slot == first.slot
    assert sum(arg is second.unit or arg is first.unit for arg in p.script_args) == 1


# -- face context -----------------------------------------------------------------------------
@pytest.fixture
def wired(cn, bridge, model_file, tmp_path):
    """A job with the user's units before and after ours, after ControlNet's ``process``."""
    key = bridge.identitynet_model_key(model_file)
    before_model = user_model(cn, tmp_path, "depth_xl")
    after_model = user_model(cn, tmp_path, "canny_xl")
    units = [user_unit(cn, before_model, 0.6), cn.unit(enabled=False), cn.unit(enabled=False)]
    units.append(user_unit(cn, after_model, 0.4))
    p = cn.job(units)
    hint = hint_for(p)
    handle = bridge.inject_unit(p, hint, 0.8, 0.0, 0.9, key)
    script = run_controlnet(cn, p)
    return p, handle, script, (before_model, after_model)


def test_only_our_unit_gets_the_face_context(cn, bridge, wired):
    p, handle, script, (before_model, after_model) = wired
    cond_tokens, uncond_tokens = face_tokens()
    bridge.apply_face_context(p, handle, cond_tokens, uncond_tokens)

    types = cn.hook.ControlModelType
    params = script.latest_network.control_params
    assert [u.model for u in script.enabled_units] == [before_model, handle.model_key, after_model]
    ours = params[1]
    assert ours.control_model_type is types.InstantID
    assert isinstance(ours.control_context_override, cn.hook.ImageEmbed)
    assert ours.control_context_override.cond_emb is cond_tokens
    assert (ours.weight, ours.start_guidance_percent, ours.stop_guidance_percent) == (0.8, 0.0, 0.9)
    for user in (params[0], params[2]):
        assert user.control_model_type is types.ControlNet
        assert user.control_context_override is None
    assert [params[0].weight, params[2].weight] == [0.6, 0.4]

    # The hint reached IdentityNet untouched ("none" + "Just Resize" at the output size).
    expected_hint = torch.from_numpy(handle.hint).float().div(255).permute(2, 0, 1)[None]
    assert torch.equal(ours.hint_cond, expected_hint)


def test_identitynet_sees_face_tokens_never_the_text(cn, bridge, wired):
    p, handle, _script, (before_model, after_model) = wired
    cond_tokens, uncond_tokens = face_tokens()
    bridge.apply_face_context(p, handle, cond_tokens, uncond_tokens)
    cond, uncond = prompts(2, seed=1)
    calls = []

    def sample(conditioning, unconditional_conditioning):
        network = cn.cn_script(p).latest_network
        x = torch.zeros(4, 4, 8, 8)
        rows = fake.rows_of(conditioning, unconditional_conditioning)
        network.forward(x, timesteps=torch.zeros(4), context=rows)
        calls.append(network.cond_mark.flatten().tolist())

    p.sample = sample
    cn.cn_script(p).latest_network.hook(None, None, cn.cn_script(p).latest_network.control_params, p)
    p.sample(conditioning=cond, unconditional_conditioning=uncond)  # CN marks the prompts here

    assert calls == [[1.0, 1.0, 0.0, 0.0]]  # two cond rows, then two uncond rows
    context = our_model(cn, handle.model_key).calls[-1]["context"]
    assert context.shape == (4, 16, CTX)
    for row in (0, 1):
        assert torch.equal(context[row], cond_tokens[0])
    for row in (2, 3):
        assert torch.equal(context[row], uncond_tokens[0])
    text = text_rows(cond, uncond)
    for model in (before_model, after_model):
        assert torch.equal(our_model(cn, model).calls[-1]["context"], text)


def test_guidance_window_is_ours_even_after_xyz_rewrites_it(cn, bridge, wired):
    p, handle, script, _ = wired
    for param in script.latest_network.control_params:  # xyz "[ControlNet] Weight" etc.
        param.weight, param.start_guidance_percent, param.stop_guidance_percent = 1.7, 0.3, 0.5
    bridge.apply_face_context(p, handle, *face_tokens())
    params = script.latest_network.control_params
    ours = params[1]
    assert (ours.weight, ours.start_guidance_percent, ours.stop_guidance_percent) == (0.8, 0.0, 0.9)
    assert params[0].weight == params[2].weight == 1.7


def test_controlnet_infotext_drops_our_unit_and_renumbers(cn, bridge, wired):
    p, handle, _script, (before_model, after_model) = wired
    written = dict(p.extra_generation_params)
    assert handle.model_key in written["ControlNet 1"]
    bridge.apply_face_context(p, handle, *face_tokens())
    entries = {k: v for k, v in p.extra_generation_params.items() if k.startswith("ControlNet")}
    assert entries == {"ControlNet 0": written["ControlNet 0"], "ControlNet 1": written["ControlNet 2"]}
    assert before_model in entries["ControlNet 0"] and after_model in entries["ControlNet 1"]
    bridge.apply_face_context(p, handle, *face_tokens())  # the next batch: nothing more to drop
    assert {k: v for k, v in p.extra_generation_params.items() if k.startswith("ControlNet")} == entries


def test_refiner_rebuild_per_batch_is_handled_again(cn, bridge, wired):
    p, handle, script, _ = wired
    bridge.apply_face_context(p, handle, *face_tokens())
    script.process(p)  # with a refiner ControlNet rebuilds everything in before_process_batch
    assert script.latest_network.control_params[1].control_model_type is cn.hook.ControlModelType.ControlNet
    bridge.apply_face_context(p, handle, *face_tokens())
    assert script.latest_network.control_params[1].control_model_type is cn.hook.ControlModelType.InstantID
    assert sorted(k for k in p.extra_generation_params if k.startswith("ControlNet")) == [
        "ControlNet 0",
        "ControlNet 1",
    ]


def test_face_context_when_controlnet_did_not_run(cn, bridge, wired):
    p, handle, script, _ = wired
    script.latest_network = None  # its process raised (the WebUI only logs that)
    with pytest.raises(DependencyError, match="did not set up its units"):
        bridge.apply_face_context(p, handle, *face_tokens())


def test_unexpected_controlnet_internals_become_one_readable_error(cn, bridge, wired):
    p, handle, script, _ = wired
    del script.enabled_units
    with pytest.raises(DependencyError) as err:
        bridge.apply_face_context(p, handle, *face_tokens())
    message = str(err.value)
    assert ".".join(map(str, cn.version)) in message
    assert "1.1.444 to 1.1.455" in message


def test_face_tokens_shape_is_checked(cn, bridge, wired):
    p, handle, _script, _ = wired
    with pytest.raises(InvalidInputError, match="face tokens"):
        bridge.apply_face_context(p, handle, torch.zeros(16, CTX), torch.zeros(16, CTX))


# -- hires fix ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mark", [False, True], ids=["unmarked", "marked"])
def test_hires_pass_needs_marked_prompts(cn, bridge, wired, mark):
    p, handle, script, _ = wired
    cond_tokens, uncond_tokens = face_tokens()
    bridge.apply_face_context(p, handle, cond_tokens, uncond_tokens)
    old_cache = fake.Processing.cached_hr_c
    marks = []

    def sample(conditioning, unconditional_conditioning):
        network = script.latest_network
        x = torch.zeros(4, 4, 8, 8)
        network.forward(x, context=fake.rows_of(conditioning, unconditional_conditioning))
        p.hr_c, p.hr_uc = prompts(2, seed=2)  # the WebUI's calculate_hr_conds, inside sampling
        if mark:
            bridge.mark_hires_conds(p)  # our before_hr
        network.forward(x, context=fake.rows_of(p.hr_c, p.hr_uc))
        marks.append(network.cond_mark.flatten().tolist())

    p.sample = sample
    script.latest_network.hook(None, None, script.latest_network.control_params, p)
    p.sample(conditioning=prompts(2, seed=1)[0], unconditional_conditioning=prompts(2, seed=1)[1])

    context = our_model(cn, handle.model_key).calls[-1]["context"]
    if not mark:  # what ControlNet does alone: every hires row counts as cond
        assert marks == [[1.0, 1.0, 1.0, 1.0]]
        assert torch.equal(context[3], cond_tokens[0])
        return
    assert marks == [[1.0, 1.0, 0.0, 0.0]]
    assert torch.equal(context[0], cond_tokens[0]) and torch.equal(context[3], uncond_tokens[0])
    assert fake.Processing.cached_hr_c == [None, None] and fake.Processing.cached_hr_c is not old_cache
    bridge.mark_hires_conds(p)  # idempotent: still one marker token
    assert fake.rows_of(p.hr_c, p.hr_uc).shape[1] == 78


def test_hires_prompts_stay_unmarked_when_controlnet_is_not_hooked(cn, bridge, wired):
    p, _handle, script, _ = wired
    script.latest_network = None
    p.hr_c, p.hr_uc = prompts(1, seed=3)
    bridge.mark_hires_conds(p)
    assert fake.rows_of(p.hr_c, p.hr_uc).shape[1] == 77


# -- cleanup ------------------------------------------------------------------------------------
def test_cleanup_undoes_everything_and_is_idempotent(cn, bridge, wired):
    p, handle, script, _ = wired
    original = handle.original
    bridge.apply_face_context(p, handle, *face_tokens())
    bridge.cleanup(p)
    assert p.script_args[handle.slot] is original
    ours = script.latest_network.control_params[1]
    assert ours.control_model_type is cn.hook.ControlModelType.ControlNet
    assert ours.control_context_override is None
    assert handle.model_key not in cn.global_state.cn_models
    bridge.cleanup(p)
    bridge.cleanup(None)
    assert not handle.restore(p)


def test_next_job_cleans_up_a_job_whose_postprocess_never_ran(cn, bridge, model_file):
    key = bridge.identitynet_model_key(model_file)
    p = cn.job([cn.unit(enabled=False)])
    original = p.script_args[2]
    ControlNetBridge.detect().inject_unit(p, hint_for(p), 1.0, 0.0, 1.0, key)
    ControlNetBridge.detect().cleanup(None)  # a new bridge, from the next job's start
    assert p.script_args[2] is original
    assert key not in cn.global_state.cn_models
