"""The InstantID panel under gradio 3.41: argument order, value forms, infotext, events.

Skipped where gradio is not installed (the core test environment does not need it).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from instantid_ext.args import ARG_FIELDS, InstantIDArgs, infotext_labels  # noqa: E402
from instantid_ext.errors import InvalidInputError  # noqa: E402
from instantid_ext.webui import ui  # noqa: E402
from instantid_ext.webui.ui import InfotextReader, UiEnv, UiResult, build_ui, elem_id  # noqa: E402

TABS = ("txt2img", "img2img")
BUILD_CALLS = {"adapter_names", "identitynet_names", "identity_names", "controlnet_status"}


class FakeEnv:
    """A :class:`UiEnv` whose callables record every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.adapters = ["ip-adapter.bin"]
        self.identitynets = ["IdentityNet.safetensors"]
        self.identities = ["Alice", "Bob"]
        self.preview_result: tuple[Any, Any, str] = (None, None, "Face found.")

    def _record(self, name: str, result: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            self.calls.append((name, args))
            return result(*args)

        return call

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def env(self) -> UiEnv:
        return UiEnv(
            adapter_names=self._record("adapter_names", lambda: list(self.adapters)),
            identitynet_names=self._record("identitynet_names", lambda: list(self.identitynets)),
            identity_names=self._record("identity_names", lambda: list(self.identities)),
            refresh=self._record("refresh", lambda: None),
            controlnet_status=self._record("controlnet_status", lambda: (True, "ControlNet 1.1.455 found.")),
            preview=self._record("preview", lambda *a: self.preview_result),
            save_identity=self._record("save_identity", lambda *a: f"Saved identity '{a[0]}'."),
        )


def build(tab: str = "txt2img", fake: FakeEnv | None = None) -> tuple[UiResult, Any, FakeEnv]:
    fake = fake or FakeEnv()
    with gr.Blocks() as demo:
        result = build_ui(tab == "img2img", fake.env())
    return result, demo, fake


def png_bytes(size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (200, 120, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def by_elem_id(demo: Any) -> dict[str, Any]:
    return {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}


def dependency(demo: Any, trigger: Any, event: str) -> tuple[dict[str, Any], Callable[..., Any]]:
    """The dependency (and its Python function) that ``event`` on ``trigger`` runs."""
    for dep, fn in zip(demo.dependencies, demo.fns, strict=True):
        if trigger._id in dep["targets"] and dep["trigger"] == event:
            return dep, fn.fn
    raise AssertionError(f"no {event} event on {trigger.elem_id}")


def props(update: dict[str, Any]) -> dict[str, Any]:
    """A gr.update without its type marker (spelled differently across gradio 3.x)."""
    return {key: value for key, value in update.items() if key != "__type__"}


def paste(result: UiResult, params: dict[str, Any]) -> list[Any]:
    """What the WebUI's infotext paste puts into each argument component (None: untouched).

    Mirrors ``connect_paste``: the reader's value is converted to the type of the
    component's default value.
    """
    by_component = {id(comp): reader for comp, reader in result.infotext_fields}
    values = []
    for comp in result.components:
        reader = by_component.get(id(comp))
        value = None if reader is None else reader(params)
        if value is not None:
            kind = type(comp.value)
            value = float(value) if kind is int else kind(value)
        values.append(value)
    return values


# --- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tab", TABS)
def test_components_follow_arg_fields(tab: str) -> None:
    result, _, _ = build(tab)
    assert len(result.components) == len(ARG_FIELDS)
    for name, comp in zip(ARG_FIELDS, result.components, strict=True):
        if name == "people":  # a gr.State the person rows fill; states have no element
            assert isinstance(comp, gr.State)
            continue
        expected = elem_id(tab, "accordion-checkbox") if name == "enabled" else elem_id(tab, name)
        assert comp.elem_id == expected, name
    kinds = {name: type(comp) for name, comp in zip(ARG_FIELDS, result.components, strict=True)}
    assert kinds["images"] is gr.File
    assert kinds["pose_image"] is gr.Image
    assert kinds["face_index"] is gr.Number


def test_sliders_offer_exactly_the_range_the_api_accepts() -> None:
    result, _, _ = build()
    sliders = {
        name: comp
        for name, comp in zip(ARG_FIELDS, result.components, strict=True)
        if isinstance(comp, gr.Slider)
    }
    assert len(sliders) >= 12
    for name, slider in sliders.items():
        info = InstantIDArgs.__fields__[name].field_info
        assert (slider.minimum, slider.maximum) == (info.ge, info.le), name


@pytest.mark.parametrize("tab", TABS)
def test_default_values_parse_to_the_defaults(tab: str) -> None:
    result, _, _ = build(tab)
    values = [comp.value for comp in result.components]
    assert values == [
        False,
        None,
        "",
        "None",
        "largest",
        0,
        "auto",
        None,
        0.8,
        0.0,
        1.0,
        0.8,
        0.0,
        1.0,
        "Auto",
        "Auto",
        "Crop and Resize",
        False,
        "largest",
        0,
        False,
        "Front",
        False,
        0.0,
        1.0,
        0.0,
        0.0,
        0.0,
        True,
        False,
        "largest",
        0,
        0.4,
        "",
        32,
        1024,
        [],
    ]
    assert InstantIDArgs.parse(values) == InstantIDArgs()
    # The API fills missing arguments with these and converts pasted infotext to their types.
    for name, comp in zip(ARG_FIELDS, result.components, strict=True):
        if name in ("id_start", "id_end", "control_start", "control_end", "id_weight", "control_weight"):
            assert type(comp.value) is float, name


def test_values_as_gradio_delivers_them_parse(tmp_path: Any) -> None:
    """Browser payloads → each component's preprocess → InstantIDArgs.parse."""
    result, _, _ = build()
    comps = dict(zip(ARG_FIELDS, result.components, strict=True))
    face = png_bytes((64, 48), (10, 200, 30))
    uploaded = tmp_path / "second.png"
    uploaded.write_bytes(png_bytes((32, 32)))
    payload = {
        "enabled": True,
        "images": [
            {"name": "face.png", "data": data_url(face), "is_file": False},
            {"name": str(uploaded), "data": None, "is_file": True},
        ],
        "image_weights": "1, 0.5",
        "identity": "None",
        "face_choice": "index",
        "face_index": 2,
        "pose_source": "pose_image",
        "pose_image": data_url(png_bytes((50, 70))),
        "id_weight": 0.35000000000000003,
        "id_start": 0.1,
        "id_end": 0.9,
        "control_weight": 1.2,
        "control_start": 0.0,
        "control_end": 0.5,
        "ip_adapter_model": "ip-adapter.bin",
        "identitynet_model": "Auto",
        "resize_mode": "Just Resize",
        "face_region_only": True,
        "pose_face_choice": "index",
        "pose_face_index": 1,
        "show_hint": True,
        "pose_preset": "Profile right",
        "pose_mirror": True,
        "pose_rotate": -15,
        "pose_scale": 1.2,
        "pose_offset_x": 0.1,
        "pose_offset_y": -0.05,
        "noise": 0.35000000000000003,
        "likeness": False,
        "face_pass": True,
        "face_pass_faces": "all",
        "face_pass_index": 0,
        "face_pass_strength": 0.45,
        "face_pass_prompt": "a detailed face",
        "face_pass_padding": 48,
        "face_pass_resolution": 768,
        "people": [],
    }
    values = [comps[name].preprocess(payload[name]) for name in ARG_FIELDS]
    assert all(isinstance(v, bytes) for v in values[1])
    args = InstantIDArgs.parse(values)
    assert args.enabled
    assert [img.size for img in args.images] == [(64, 48), (32, 32)]
    assert args.image_weights == [1.0, 0.5]
    assert args.identity == ""
    assert (args.face_choice, args.face_index) == ("index", 2)
    assert args.pose_source == "pose_image"
    assert args.pose_image is not None
    assert args.pose_image.size == (50, 70)
    assert args.id_weight == pytest.approx(0.35)
    assert (args.id_start, args.id_end, args.control_weight) == (0.1, 0.9, 1.2)
    assert (args.control_start, args.control_end) == (0.0, 0.5)
    assert args.ip_adapter_model == "ip-adapter.bin"
    assert args.resize_mode == "Just Resize"
    assert args.face_region_only


def test_every_choice_parses() -> None:
    result, _, _ = build()
    comps = dict(zip(ARG_FIELDS, result.components, strict=True))
    for name in ("face_choice", "pose_source", "resize_mode"):
        for _, value in comps[name].choices:
            parsed = InstantIDArgs.parse({name: value})
            assert getattr(parsed, name) == value
    assert comps["identity"].choices[0] == "None"
    assert InstantIDArgs.parse({"identity": "Alice"}).identity == "Alice"


def test_bad_weights_text_is_an_error_not_a_crash() -> None:
    result, _, _ = build()
    values = [comp.value for comp in result.components]
    values[ARG_FIELDS.index("image_weights")] = "1, x"
    with pytest.raises(InvalidInputError, match="image_weights"):
        InstantIDArgs.parse(values)


# --- structure ----------------------------------------------------------------------------------


def test_elem_ids_are_prefixed_and_unique_across_tabs() -> None:
    fake = FakeEnv()
    with gr.Blocks() as demo:
        for tab in TABS:
            with gr.Tab(tab):
                build_ui(tab == "img2img", fake.env())
    ids = [b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)]
    assert len(ids) == len(set(ids))
    for tab in TABS:
        ours = [i for i in ids if i.startswith(f"instantid_{tab}_")]
        assert elem_id(tab, "images") in ours
        assert elem_id(tab, "accordion") in ours
    assert all(i.startswith(("instantid_txt2img_", "instantid_img2img_")) for i in ids)


def test_reference_input_is_an_upload_field() -> None:
    """The paste helper needs an <input type=file> in #instantid_<tab>_images."""
    result, demo, _ = build()
    images = by_elem_id(demo)["instantid_txt2img_images"]
    assert images is result.components[ARG_FIELDS.index("images")]
    config = images.get_config()
    assert config["file_count"] == "multiple"
    assert config["file_types"] == ["image"]
    assert images.interactive is not False


def test_build_has_no_side_effects(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fake = FakeEnv()
    first, _, _ = build("txt2img", fake)
    calls_once = list(fake.names())
    second, _, _ = build("txt2img", fake)
    assert set(fake.names()) <= BUILD_CALLS
    assert fake.names() == calls_once * 2
    assert [c.value for c in first.components] == [c.value for c in second.components]
    assert list(tmp_path.iterdir()) == []


def test_model_and_identity_lists_come_from_env() -> None:
    result, _, _ = build()
    comps = dict(zip(ARG_FIELDS, result.components, strict=True))
    assert comps["ip_adapter_model"].choices == ["Auto", "ip-adapter.bin"]
    assert comps["identitynet_model"].choices == ["Auto", "IdentityNet.safetensors"]
    assert comps["identity"].choices == ["None", "Alice", "Bob"]


def test_controlnet_status_line(tmp_path: Any) -> None:
    _, demo, _ = build()
    assert by_elem_id(demo)["instantid_txt2img_controlnet_status"].value.startswith("✓ ControlNet 1.1.455")
    fake = FakeEnv()
    env = fake.env()
    env.controlnet_status = lambda: (False, "Install sd-webui-controlnet 1.1.455 or newer.")
    with gr.Blocks() as demo2:
        build_ui(False, env)
    line = by_elem_id(demo2)["instantid_txt2img_controlnet_status"].value
    assert line == "⚠ Install sd-webui-controlnet 1.1.455 or newer."


class StandInInputAccordion(gr.Checkbox):
    """Behaves as the WebUI's InputAccordion: a hidden checkbox whose value opens an accordion."""

    def __init__(self, value: bool, **kwargs: Any) -> None:
        self.accordion_id = kwargs["elem_id"]
        super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.accordion = gr.Accordion(label=kwargs["label"], elem_id=self.accordion_id, open=value)

    def __enter__(self) -> StandInInputAccordion:
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.accordion.__exit__(*exc)


class StandInToolButton(gr.Button):
    """The WebUI's ToolButton takes a ``tooltip`` (its gradio patch accepts one everywhere)."""

    def __init__(self, *args: Any, tooltip: str | None = None, **kwargs: Any) -> None:
        self.tooltip = tooltip
        super().__init__(*args, elem_classes=["tool"], **kwargs)


@pytest.fixture
def webui_components(monkeypatch: pytest.MonkeyPatch) -> None:
    modules = types.ModuleType("modules")
    modules.__path__ = []
    ui_components = types.ModuleType("modules.ui_components")
    ui_components.InputAccordion = StandInInputAccordion
    ui_components.ToolButton = StandInToolButton
    modules.ui_components = ui_components
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.ui_components", ui_components)


@pytest.mark.usefixtures("webui_components")
def test_input_accordion_is_the_enabled_argument() -> None:
    result, demo, _ = build("img2img")
    enabled = result.components[0]
    assert isinstance(enabled, StandInInputAccordion)
    assert enabled.value is False
    assert enabled.accordion.elem_id == "instantid_img2img_accordion"
    assert enabled.elem_id == "instantid_img2img_accordion-checkbox"
    buttons = [b for b in demo.blocks.values() if isinstance(b, StandInToolButton)]
    assert {b.elem_id for b in buttons} == {
        "instantid_img2img_identity_refresh",
        "instantid_img2img_models_refresh",
    }
    assert all(b.tooltip for b in buttons)
    # The rest of the panel sits inside the accordion.
    accordion_children = {id(child) for child in _descendants(enabled.accordion)}
    assert all(id(comp) in accordion_children for comp in result.components[1:])


def test_fallback_accordion_holds_a_checkbox() -> None:
    result, demo, _ = build()
    enabled = result.components[0]
    assert type(enabled) is gr.Checkbox
    accordion = by_elem_id(demo)["instantid_txt2img_accordion"]
    assert isinstance(accordion, gr.Accordion)
    assert accordion.open is False
    assert id(enabled) in {id(child) for child in _descendants(accordion)}


def _descendants(block: Any) -> list[Any]:
    found = []
    for child in getattr(block, "children", []):
        found.append(child)
        found.extend(_descendants(child))
    return found


# --- events -------------------------------------------------------------------------------------


def test_preview_button_sends_the_panel_values_to_env() -> None:
    _, demo, fake = build()
    blocks = by_elem_id(demo)
    dep, fn = dependency(demo, blocks["instantid_txt2img_preview"], "click")
    inputs = [demo.blocks[i].elem_id for i in dep["inputs"]]
    assert inputs == [
        elem_id("txt2img", name) for name in (*ui.PREVIEW_FIELDS, "preview_width", "preview_height")
    ]
    outputs = [demo.blocks[i].elem_id for i in dep["outputs"]]
    assert outputs == [
        elem_id("txt2img", n) for n in ("preview_faces", "preview_keypoints", "preview_message")
    ]
    assert "txt2img_width" in dep["js"]
    assert "txt2img_height" in dep["js"]

    hint = np.zeros((8, 8, 3), np.uint8)
    fake.preview_result = (None, hint, "Face found.")
    pose = Image.new("RGB", (10, 10))
    values = [[b"img"], pose, "pose_image", "index", 1.0, "Resize and Fill", "Front", False, 0, 1.0, 0, 0]
    faces, keypoints, message = fn(*values, "largest", 2.0, 832.0, 1216.0)
    # a picture is shown only while it holds something: an empty one is a large blank box
    assert faces == {"__type__": "generic_update", "value": None, "visible": False}
    assert keypoints["value"] is hint and keypoints["visible"] is True
    assert message == "Face found."
    name, (fields, width, height) = fake.calls[-1]
    assert name == "preview" and (width, height) == (832, 1216)
    assert fields["pose_image"] is pose and fields["face_index"] == 1 and fields["pose_face_index"] == 2
    assert type(fields["face_index"]) is int and type(width) is int


def test_pose_edits_update_the_preview_live() -> None:
    _, demo, _ = build()
    blocks = by_elem_id(demo)
    for name, event in (("pose_preset", "change"), ("pose_mirror", "change"), ("pose_rotate", "release")):
        dep, _ = dependency(demo, blocks[elem_id("txt2img", name)], event)
        outputs = [demo.blocks[i].elem_id for i in dep["outputs"]]
        assert outputs[1] == elem_id("txt2img", "preview_keypoints")


def test_preview_defaults_to_1024_and_reports_errors() -> None:
    fake = FakeEnv()
    env = fake.env()
    defaults = [ui.default_value(name) for name in ui.PREVIEW_FIELDS]
    ui.run_preview(env, *defaults, None, None)
    assert fake.calls[-1][1][1:] == (1024, 1024)

    def broken(*_: Any) -> Any:
        raise InvalidInputError("The image is unreadable.")

    env.preview = broken
    faces, keypoints, message = ui.run_preview(env, *defaults, 1024, 1024)
    assert [faces["visible"], keypoints["visible"]] == [False, False]
    assert message == "⚠ The image is unreadable."


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("tab", TABS)
def test_preview_reads_the_tab_size_in_the_browser(tab: str) -> None:
    _, demo, _ = build(tab)
    dep, _ = dependency(demo, by_elem_id(demo)[elem_id(tab, "preview")], "click")
    script = f"""
const fields = {{"#{tab}_width input[type=number]": {{value: "832"}},
                "#{tab}_height input[type=number]": {{value: "1216"}}}};
globalThis.gradioApp = () => ({{querySelector: (sel) => fields[sel] || null}});
const fn = ({dep["js"]});
const inputs = ["imgs", null, "reference", "largest", 0, "Crop and Resize", "Front", false, 0, 1, 0, 0,
                "largest", 0, 1024, 1024];
const outputs = [null, null, ""];
const found = fn(...inputs, ...outputs);
globalThis.gradioApp = () => ({{querySelector: () => null}});
const missing = fn(...inputs, ...outputs);
console.log(JSON.stringify([found, missing]));
"""
    done = subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True, timeout=60)
    found, missing = json.loads(done.stdout)
    assert found[-2:] == [832, 1216]
    assert found[:6] == ["imgs", None, "reference", "largest", 0, "Crop and Resize"]
    assert missing[-2:] == [1024, 1024]  # no size sliders on the page: the defaults stay


def test_pose_image_and_face_number_show_when_chosen() -> None:
    result, demo, _ = build()
    comps = dict(zip(ARG_FIELDS, result.components, strict=True))
    assert comps["pose_image"].visible is False
    assert comps["face_index"].visible is False
    assert comps["pose_preset"].visible is False
    dep, fn = dependency(demo, comps["pose_source"], "change")
    assert dep["outputs"] == [comps["pose_image"]._id, comps["pose_preset"]._id]
    assert [u["visible"] for u in fn("pose_image")] == [True, False]
    assert [u["visible"] for u in fn("preset")] == [False, True]
    assert [u["visible"] for u in fn("reference")] == [False, False]
    dep, fn = dependency(demo, comps["face_choice"], "change")
    assert dep["outputs"] == [comps["face_index"]._id]
    assert fn("index")["visible"] is True
    assert fn("largest")["visible"] is False


def test_thumbnails_number_the_uploads() -> None:
    result, demo, _ = build()
    images = result.components[ARG_FIELDS.index("images")]
    dep, fn = dependency(demo, images, "change")
    assert dep["outputs"] == [by_elem_id(demo)["instantid_txt2img_thumbnails"]._id]
    update = fn([png_bytes((600, 300)), b"not an image", png_bytes()])
    assert update["visible"] is True
    assert [caption for _, caption in update["value"]] == ["1", "3"]
    assert max(update["value"][0][0].size) <= ui.THUMBNAIL_SIZE
    assert props(fn(None)) == {"value": None, "visible": False}


def test_model_refresh_rescans_and_keeps_a_valid_choice() -> None:
    result, demo, fake = build()
    comps = dict(zip(ARG_FIELDS, result.components, strict=True))
    dep, fn = dependency(demo, by_elem_id(demo)["instantid_txt2img_models_refresh"], "click")
    assert dep["inputs"] == [comps["ip_adapter_model"]._id, comps["identitynet_model"]._id]
    fake.calls.clear()
    fake.adapters = ["new.bin"]
    adapter, identitynet, status = fn("ip-adapter.bin", "IdentityNet.safetensors")
    assert fake.names()[0] == "refresh"
    assert adapter["choices"] == ["Auto", "new.bin"]
    assert adapter["value"] == "Auto"
    assert identitynet["value"] == "IdentityNet.safetensors"
    assert status.startswith("✓")


def test_identity_refresh_and_save() -> None:
    result, demo, fake = build()
    identity = result.components[ARG_FIELDS.index("identity")]
    _, refresh = dependency(demo, by_elem_id(demo)["instantid_txt2img_identity_refresh"], "click")
    fake.identities = ["Bob"]
    assert props(refresh("Alice")) == {"choices": ["None", "Bob"], "value": "None"}
    assert refresh("Bob")["value"] == "Bob"

    dep, save = dependency(demo, by_elem_id(demo)["instantid_txt2img_save_identity"], "click")
    assert [demo.blocks[i].elem_id for i in dep["inputs"]] == [
        elem_id("txt2img", n) for n in ("identity_name", "images", "face_choice", "face_index", "overwrite")
    ]
    assert dep["outputs"][1] == identity._id
    fake.calls.clear()
    message, update = save("  Carol ", [b"img"], "index", 1.0, True)
    assert fake.calls[0] == ("save_identity", ("Carol", [b"img"], "index", 1, True))
    assert message == "Saved identity 'Carol'."
    assert update["choices"] == ["None", "Bob"]
    assert "value" not in update  # the current selection stays

    fake.calls.clear()
    message, _ = save("   ", [b"img"], "largest", 0, False)
    assert message.startswith("⚠")
    assert "save_identity" not in fake.names()


# --- infotext -----------------------------------------------------------------------------------


def infotext_params(args: InstantIDArgs) -> dict[str, str]:
    """What the WebUI's parse_generation_parameters gives back for our infotext entries."""
    return {**args.to_infotext(), "Steps": "20", "CFG scale": "4"}


def test_infotext_fields_cover_every_labelled_field() -> None:
    result, _, _ = build()
    readers = {reader.name: comp for comp, reader in result.infotext_fields}
    labelled = set(infotext_labels())
    assert labelled <= set(readers)
    assert "images" not in readers  # photos are never in infotext
    for name, comp in readers.items():
        assert comp is result.components[ARG_FIELDS.index(name)]


def test_paste_restores_the_run() -> None:
    image = Image.new("RGB", (8, 8))
    args = InstantIDArgs(
        enabled=True,
        images=[image, image],
        image_weights=[1, 0.5],
        face_choice="index",
        face_index=2,
        pose_source="none",
        id_weight=0.6,
        id_start=0.2,
        id_end=0.8,
        control_weight=1.1,
        control_start=0.05,
        control_end=0.95,
        ip_adapter_model="ip-adapter.bin",
        resize_mode="Resize and Fill",
        face_region_only=True,
    )
    result, _, _ = build()
    pasted = paste(result, infotext_params(args))
    assert pasted[ARG_FIELDS.index("images")] is None
    assert pasted[ARG_FIELDS.index("pose_image")] is None
    values = [p if p is not None else c.value for p, c in zip(pasted, result.components, strict=True)]
    values[ARG_FIELDS.index("images")] = [image, image]
    again = InstantIDArgs.parse(values)
    assert again.dict(exclude={"images"}) == args.dict(exclude={"images"})


def test_paste_without_instantid_switches_off_only() -> None:
    result, _, _ = build()
    pasted = paste(result, {"Steps": "20", "Prompt": "a photo"})
    assert pasted[0] is False
    assert all(value is None for value in pasted[1:])


def test_paste_resets_fields_the_infotext_leaves_out() -> None:
    """Infotext holds non-defaults only: a missing key means the default."""
    result, _, _ = build()
    params = {"InstantID": "on", "InstantID identity": "alice", "InstantID adapter": "elsewhere.bin"}
    pasted = dict(zip(ARG_FIELDS, paste(result, params), strict=True))
    assert pasted["enabled"] is True
    assert pasted["identity"] == "Alice"  # spelled as the saved identity is
    assert pasted["ip_adapter_model"] == "Auto"  # not installed here
    assert pasted["identitynet_model"] == "Auto"
    assert pasted["id_weight"] == 0.8
    assert (pasted["id_start"], pasted["id_end"]) == (0.0, 1.0)
    assert pasted["image_weights"] == ""
    assert pasted["face_index"] == 0.0
    assert pasted["face_region_only"] is False
    unknown = dict(
        zip(ARG_FIELDS, paste(result, {"InstantID": "on", "InstantID identity": "Carol"}), strict=True)
    )
    assert unknown["identity"] == "None"


def test_unreadable_infotext_values_fall_back_to_defaults() -> None:
    result, _, _ = build()
    params = {"InstantID": "on", "InstantID ID weight": "lots", "InstantID ID range": "0.9-0.1"}
    pasted = dict(zip(ARG_FIELDS, paste(result, params), strict=True))
    assert pasted["id_weight"] == 0.8
    assert (pasted["id_start"], pasted["id_end"]) == (0.0, 1.0)


def test_api_infotext_conversion_never_fails() -> None:
    """The API converts a reader's value with ``type(component.value)(value)`` and no guard."""
    args = InstantIDArgs(enabled=True, identity="Alice", image_weights=[], id_start=0.3, face_index=3)
    result, _, _ = build()
    for comp, reader in result.infotext_fields:
        value = reader(infotext_params(args))
        if value is None or comp.value is None:
            continue
        assert type(comp.value)(value) == value, reader.name


def test_send_to_img2img_copies_matching_fields() -> None:
    """Mirror the WebUI's txt2img → img2img copy: fields whose reader is in paste_field_names."""
    t2i, _, _ = build("txt2img")
    i2i, _, _ = build("img2img")
    names = ["Prompt", "Negative prompt", "Steps", "Face restoration", *t2i.paste_field_names]
    sources = [comp for comp, name in t2i.infotext_fields if name in names]
    targets = [comp for comp, name in i2i.infotext_fields if name in names]
    assert len(sources) == len(targets) == len(ARG_FIELDS) - 2  # not the photos, not the people
    for source, target in zip(sources, targets, strict=True):
        assert type(source) is type(target)
        assert source.elem_id.replace("txt2img", "img2img") == target.elem_id
    assert "Prompt" not in t2i.paste_field_names
    assert len({key: 1 for _, key in t2i.infotext_fields}) == len(t2i.infotext_fields)  # hashable


def test_readers_compare_by_field() -> None:
    assert InfotextReader("id_weight") == InfotextReader("id_weight", FakeEnv().env())
    assert InfotextReader("id_weight") != InfotextReader("id_start")
    assert InfotextReader("id_weight") != "InstantID ID weight"
    assert InfotextReader("id_weight").key == "InstantID ID weight"
    assert InfotextReader("pose_image").key is None


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_every_pose_source_of_the_arguments_is_offered(tab: str) -> None:
    """The panel offers each pose source the arguments take (the init image only in img2img);
    the preset list, shown only for "preset", was unreachable while that choice was missing."""
    from typing import get_args

    from instantid_ext.args.choices import PoseSource

    result, _, _ = build(tab)
    radio = dict(zip(ARG_FIELDS, result.components, strict=True))["pose_source"]
    offered = {choice[1] if isinstance(choice, tuple) else choice for choice in radio.choices}
    expected = set(get_args(PoseSource)) - ({"init_image"} if tab == "txt2img" else set())
    assert offered == expected
