"""The ControlNet bridge against a stand-in of sd-webui-controlnet 1.1.444-1.1.455 (no WebUI)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from instantid_ext.args import InstantIDArgs
from instantid_ext.errors import DependencyError, InvalidInputError, ModelFileError, NoFaceError
from instantid_ext.job.lifecycle import Job
from instantid_ext.method.keypoints import draw_kps
from instantid_ext.webui import controlnet
from instantid_ext.webui.controlnet import ControlNetBridge
from tests.webui import fake_controlnet as fake

VERSIONS = [(1, 1, 444), (1, 1, 449), (1, 1, 455)]
KPS = np.array([[400, 420], [620, 410], [510, 540], [430, 660], [600, 650]], dtype=np.float32)
CTX = 2048


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


def job_for(p) -> Job:
    """The owner of one generation's changes (what the script creates in ``before_process``)."""
    return Job(p, InstantIDArgs())


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
    assert bridge.register_preprocessor(None)
    assert bridge.register_preprocessor(None)  # a UI reload registers again: no assertion, no duplicate
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
    assert bridge.register_preprocessor(None) is False


def test_preprocessor_draws_the_detected_keypoints_at_input_size(cn, bridge):
    seen = []

    def detector(rgb: np.ndarray) -> np.ndarray:
        seen.append(rgb.shape)
        return KPS / 2

    bridge.register_preprocessor(None)
    bridge.register_preprocessor(detector)  # a reload hands the registered instance the new detector
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
    bridge.register_preprocessor(None)
    ours = cn.Preprocessor.get_preprocessor(controlnet.PREPROCESSOR_NAME)
    photo = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(DependencyError, match="face analysis"):
        ours(photo, 512)
    bridge.register_preprocessor(lambda rgb: None)
    with pytest.raises(NoFaceError, match="no face"):
        ours(photo, 512)


# -- model: one copy in memory, no file created -------------------------------------------------
def weights_at(tmp_path: Path, relative: str) -> tuple[Path, Path]:
    """An IdentityNet file (or diffusers folder) at ``relative``: (what the user picks, the weights)."""
    source = tmp_path / relative
    weights = source / "diffusion_pytorch_model.safetensors" if source.suffix == "" else source
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"identitynet weights")
    return source, weights


def load(cn, p, key: str):
    return cn.Script.load_control_model(p, None, key)


def test_a_file_controlnet_lists_as_a_plain_controlnet_uses_controlnets_own_name(cn, bridge, tmp_path):
    source, weights = weights_at(tmp_path, "ControlNet/identitynet_sdxl.safetensors")
    cn.global_state.on_disk["identitynet_sdxl [1234abcd]"] = str(weights)
    cn.global_state.update_cn_models()
    p = cn.job([cn.unit(enabled=False)])
    job = job_for(p)
    listing = dict(cn.global_state.cn_models)
    assert bridge.identitynet_model_key(job, p, source) == "identitynet_sdxl [1234abcd]"
    assert dict(cn.global_state.cn_models) == listing  # nothing added
    assert job._undo == []  # and nothing to undo: ControlNet loads and caches it as usual
    assert load(cn, p, "identitynet_sdxl [1234abcd]").type is cn.hook.ControlModelType.ControlNet


def test_a_file_controlnet_does_not_list_gets_a_name_for_the_job(cn, bridge, model_file):
    p = cn.job([cn.unit(enabled=False)])
    job = job_for(p)
    key = bridge.identitynet_model_key(job, p, model_file)
    assert cn.global_state.cn_models[key] == str(model_file.absolute())
    assert "xl" in key.lower() and "instant_id" not in key.lower()
    assert load(cn, p, key).type is cn.hook.ControlModelType.ControlNet
    assert cn.Script.loads == [str(model_file.absolute())]
    job.close()
    assert key not in cn.global_state.cn_models
    assert "build_control_model" in vars(cn.Script)  # ControlNet's own loader is back
    assert vars(cn.Script)["build_control_model"].__func__.__qualname__.startswith("_script_class")


@pytest.mark.parametrize(
    "relative",
    ["ControlNet/control_instant_id_sdxl.safetensors", "instant_id/ControlNetModel"],
    ids=["renamed-file", "diffusers-folder"],
)
def test_instant_id_in_the_path_is_loaded_as_a_plain_controlnet_without_links(cn, bridge, tmp_path, relative):
    source, weights = weights_at(tmp_path, relative)
    # What ControlNet does with the path as it is: InstantID, which needs an IP-Adapter unit first.
    cn.global_state.cn_models["as-is"] = str(weights)
    p = cn.job([cn.unit(enabled=False)])
    assert load(cn, p, "as-is").type is cn.hook.ControlModelType.InstantID
    files_before = sorted(tmp_path.rglob("*"))

    job = job_for(p)
    key = bridge.identitynet_model_key(job, p, source)
    assert cn.global_state.cn_models[key] == str(weights.absolute())  # the real file, no link
    ours = load(cn, p, key)
    assert ours.type is cn.hook.ControlModelType.ControlNet
    # One copy: the network ControlNet already holds for the file is shared, not read again.
    assert ours.model is cn.Script.model_cache["as-is"].model
    assert cn.Script.loads == [str(weights)]
    assert sorted(tmp_path.rglob("*")) == files_before  # nothing created
    job.close()
    assert load(cn, p, "as-is").type is cn.hook.ControlModelType.InstantID  # untouched for the user


def test_a_second_copy_left_from_an_earlier_job_is_dropped(cn, bridge, tmp_path):
    source, weights = weights_at(tmp_path, "ControlNet/control_instant_id_sdxl.safetensors")
    cn.Script.cache_size = 3
    p = cn.job([cn.unit(enabled=False)])
    first = job_for(p)
    key = bridge.identitynet_model_key(first, p, source)
    load(cn, p, key)  # our job loaded it first ...
    first.close()
    cn.global_state.cn_models["control_instant_id_sdxl [0]"] = str(weights)
    load(cn, p, "control_instant_id_sdxl [0]")  # ... then ControlNet's own InstantID, a second copy
    assert len(cn.Script.loads) == 2
    second = job_for(p)
    assert bridge.identitynet_model_key(second, p, source) == key
    ours = load(cn, p, key)
    assert ours.model is cn.Script.model_cache["control_instant_id_sdxl [0]"].model
    assert len(cn.Script.loads) == 2  # shared from now on
    assert sum(1 for m in cn.Script.model_cache.values() if m.model is ours.model) == 2
    second.close()


def test_nested_jobs_undo_their_own_loader_patch(cn, bridge, tmp_path):
    source, _weights = weights_at(tmp_path, "ControlNet/control_instant_id_sdxl.safetensors")
    p = cn.job([cn.unit(enabled=False)])
    original = vars(cn.Script)["build_control_model"]
    outer, inner = job_for(p), job_for(cn.job([cn.unit(enabled=False)]))
    key = bridge.identitynet_model_key(outer, p, source)
    bridge.identitynet_model_key(inner, p, source)
    inner.close()
    assert key in cn.global_state.cn_models  # the outer job still has it
    assert load(cn, p, key).type is cn.hook.ControlModelType.ControlNet
    outer.close()
    assert vars(cn.Script)["build_control_model"] is original
    assert key not in cn.global_state.cn_models


def test_model_file_must_exist(cn, bridge, tmp_path):
    p = cn.job([cn.unit(enabled=False)])
    with pytest.raises(ModelFileError, match="does not exist"):
        bridge.identitynet_model_key(job_for(p), p, tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="diffusion_pytorch_model"):
        bridge.identitynet_model_key(job_for(p), p, tmp_path / "empty")


# -- injection --------------------------------------------------------------------------------
def inject(bridge, p, key, hint=None, weight=0.8, start=0.0, end=1.0, job=None):
    job = job or job_for(p)
    return job, bridge.inject_unit(job, p, hint_for(p) if hint is None else hint, weight, start, end, key)


def test_unit_goes_into_the_last_disabled_slot(cn, bridge, model_file, tmp_path):
    user = user_unit(cn, user_model(cn, tmp_path, "canny_xl"))
    free = [cn.unit(enabled=False), cn.unit(enabled=False)]
    p = cn.job([user, *free])
    job = job_for(p)
    key = bridge.identitynet_model_key(job, p, model_file)
    before = p.script_args
    hint = hint_for(p)

    _, handle = inject(bridge, p, key, hint, 0.8, 0.1, 0.9, job=job)

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

    job.close()
    assert p.script_args == before and p.script_args[4] is free[1]
    job.close()  # idempotent
    assert p.script_args == before


def test_list_arguments_stay_a_list(cn, bridge, model_file):
    p = cn.job([cn.unit(enabled=False)])
    p.script_args = list(p.script_args)
    inject(bridge, p, "x")
    assert isinstance(p.script_args, list)


def test_api_dict_units_follow_controlnets_own_enabled_default(cn, bridge, model_file):
    units = [{"enabled": False, "module": "none"}, {"enabled": False}, {"module": "none"}]
    p = cn.job(units)
    _, handle = inject(bridge, p, "x", weight=1.0)
    # Without "enabled", 1.1.444-1.1.447 run the unit (dataclass default True); 1.1.448+ do not.
    expected = 1 if cn.version < (1, 1, 448) else 2
    assert handle.unit_index == expected
    assert p.script_args[2 : 2 + 3][expected] is handle.unit
    assert len(p.script_args) == 7


def test_no_free_unit_is_a_clear_error(cn, bridge, model_file, tmp_path):
    model = user_model(cn, tmp_path, "canny_xl")
    p = cn.job([user_unit(cn, model) for _ in range(3)])
    before = p.script_args
    with pytest.raises(InvalidInputError, match="All 3 ControlNet units are in use") as err:
        inject(bridge, p, "x")
    assert "Multi-ControlNet: ControlNet unit number" in str(err.value)
    assert p.script_args is before


def test_controlnet_not_active_in_this_job(cn, bridge, model_file):
    p = cn.job([cn.unit(enabled=False)])
    p.scripts.alwayson_scripts.pop(1)
    assert not bridge.has_script(p)
    with pytest.raises(DependencyError, match="not active"):
        inject(bridge, p, "x")


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
    p = cn.job([cn.unit(enabled=False)])
    with pytest.raises(InvalidInputError):
        inject(bridge, p, "x", hint, weight, start, end)


# -- face context -----------------------------------------------------------------------------
@pytest.fixture
def wired(cn, bridge, model_file, tmp_path):
    """A job with the user's units before and after ours, after ControlNet's ``process``."""
    before_model = user_model(cn, tmp_path, "depth_xl")
    after_model = user_model(cn, tmp_path, "canny_xl")
    units = [user_unit(cn, before_model, 0.6), cn.unit(enabled=False), cn.unit(enabled=False)]
    units.append(user_unit(cn, after_model, 0.4))
    p = cn.job(units)
    cn.Script.cache_size = 3  # three models in one job stay cached (ControlNet's default is 2)
    job = job_for(p)
    key = bridge.identitynet_model_key(job, p, model_file)
    _, handle = inject(bridge, p, key, hint_for(p), 0.8, 0.0, 0.9, job=job)
    script = run_controlnet(cn, p)
    p.job = job
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
        x = torch.zeros(4, 4, p.height // 8, p.width // 8)
        rows = fake.rows_of(conditioning, unconditional_conditioning)
        network.forward(x, timesteps=torch.zeros(4), context=rows)
        calls.append(network.cond_mark.flatten().tolist())

    p.sample_before_CN_hack = sample  # what ControlNet's process_sample calls after marking
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
        x = torch.zeros(4, 4, p.height // 8, p.width // 8)
        network.forward(x, context=fake.rows_of(conditioning, unconditional_conditioning))
        p.hr_c, p.hr_uc = prompts(2, seed=2)  # the WebUI's calculate_hr_conds, inside sampling
        if mark:
            bridge.mark_hires_conds(p)  # our before_hr
        network.forward(x, context=fake.rows_of(p.hr_c, p.hr_uc))
        marks.append(network.cond_mark.flatten().tolist())

    p.sample_before_CN_hack = sample  # what ControlNet's process_sample calls after marking
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


# -- the job's hint, hires hint and residual mask ----------------------------------------------
def test_the_final_hint_replaces_the_provisional_one(cn, bridge, wired):
    p, handle, script, _ = wired
    final = np.zeros_like(handle.hint)
    final[10:20, 30:40] = 255
    bridge.apply_face_context(p, handle, *face_tokens(), hint=final)
    ours = script.latest_network.control_params[1]
    assert torch.equal(ours.hint_cond, torch.from_numpy(final).float().div(255).permute(2, 0, 1)[None])
    assert ours.used_hint_cond is None  # ControlNet re-reads it at the next step
    assert handle.param is ours


def test_residual_mask_per_unit_or_by_hook_on_old_controlnet(cn, bridge, wired):
    p, handle, script, _ = wired
    mask = np.zeros((1024, 1024), np.float32)
    mask[:512] = 1.0  # the top half
    bridge.apply_face_context(p, handle, *face_tokens(), region_mask=mask)
    tokens = torch.from_numpy(mask)[None, None]
    hook = bridge.residual_mask_hook(handle, lambda: tokens, 16)
    ours = script.latest_network.control_params[1]
    network = script.latest_network
    cond, uncond = prompts(1, seed=4)
    network.forward(torch.zeros(2, 4, p.height // 8, p.width // 8), context=fake.rows_of(cond, uncond))
    if cn.version >= (1, 1, 446):
        assert hook is None
        residual = network.residuals[1][0]
    else:  # the hook multiplied our model's output itself
        assert hook is not None
        residual = network.residuals[1][0]
        hook.remove()
    assert residual[0, 0, 0, 0] == pytest.approx(ours.weight)  # top: IdentityNet acts
    assert residual[0, 0, -1, 0] == 0.0  # bottom: nothing
    assert torch.all(network.residuals[0][0] == 0.6)  # the user's unit is not masked


# -- the job's undo ------------------------------------------------------------------------------
def test_closing_the_job_undoes_everything_and_is_idempotent(cn, bridge, wired):
    p, handle, _script, _ = wired
    original = handle.original
    bridge.apply_face_context(p, handle, *face_tokens())
    p.job.close()
    assert p.script_args[handle.slot] is original
    assert handle.model_key not in cn.global_state.cn_models
    p.job.close()
    assert p.script_args[handle.slot] is original


def test_batch_options_are_read_where_each_controlnet_version_keeps_them(monkeypatch) -> None:
    """``BatchOption`` lives in ``external_code`` up to 1.1.447 and in ``scripts.enums`` from 1.1.448."""
    import enum
    import sys
    import types

    from instantid_ext.webui.controlnet.nesting import _batch_options

    class BatchOption(enum.Enum):
        DEFAULT = "All ControlNet units for all images in a batch"
        SEPARATE = "Each ControlNet unit for each image in a batch"

    script = types.SimpleNamespace(ui_batch_option_state=[BatchOption.SEPARATE.value, True])
    monkeypatch.delitem(sys.modules, "scripts.enums", raising=False)
    assert _batch_options(script, types.SimpleNamespace(BatchOption=BatchOption)) == (True, True)
    assert _batch_options(script, None) == (True, True)
    monkeypatch.setitem(sys.modules, "scripts.enums", types.SimpleNamespace(BatchOption=BatchOption))
    script.ui_batch_option_state = [BatchOption.DEFAULT.value, False]
    assert _batch_options(script, None) == (False, False)
