"""The InstantID panel in txt2img and img2img (gradio 3.41, as shipped with A1111 1.6–1.10).

:func:`build_ui` is called by ``Script.ui`` once per tab, and again twice per tab by the
WebUI's API inside a throwaway ``gr.Blocks``; it therefore only creates components and wires
their events. Everything it needs from the host comes in a :class:`UiEnv`, so this module
imports neither the script nor the model store, and the tests can build it with gradio alone.

The returned components are the script's arguments: one per field of
:class:`~instantid_ext.args.InstantIDArgs`, in :data:`~instantid_ext.args.ARG_FIELDS` order,
each holding a value that :meth:`InstantIDArgs.parse` reads positionally.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import numpy as np

from ..args import ARG_FIELDS, INFOTEXT_PREFIX, InstantIDArgs, Person, infotext_labels
from ..errors import InstantIDError
from ..images import decode_image
from ..method.pose_presets import PRESETS, get_preset
from ..models.discovery import AUTO

logger = logging.getLogger(__name__)

__all__ = [
    "NO_IDENTITY",
    "InfotextReader",
    "UiEnv",
    "UiResult",
    "build_ui",
    "elem_id",
]

#: The identity dropdown's "use the photos" entry (A1111 dropdowns spell "nothing" this way).
NO_IDENTITY = "None"
#: Output size the preview assumes when it cannot read the tab's width/height sliders.
DEFAULT_PREVIEW_SIZE = 1024
#: Longest side of the reference thumbnails shown beside the upload.
THUMBNAIL_SIZE = 256

HINT = (
    "Drop a face photo (several of one person are averaged), tick **InstantID** and generate. "
    "CFG 3–5 works best (higher burns the image); SDXL checkpoints only."
)

FACE_CHOICES = [
    ("Largest face", "largest"),
    ("Face number…", "index"),
    ("Clearest detection", "highest_score"),
]
POSE_CHOICES = [
    ("Auto", "auto"),
    ("Reference face", "reference"),
    ("Pose image", "pose_image"),
    ("Init image face", "init_image"),
    ("None (free pose)", "none"),
]
#: What "Auto" means on each tab.
AUTO_POSE_INFO = {
    "txt2img": "Where the face position and angle come from. Auto: the reference face.",
    "img2img": (
        "Where the face position and angle come from. Auto: the face in the init image "
        "(the one under the inpaint mask), else the reference face."
    ),
}
RESIZE_CHOICES = ["Crop and Resize", "Resize and Fill", "Just Resize"]
FACE_PASS_CHOICES = [("Largest face", "largest"), ("All faces", "all"), ("Face number…", "index")]
#: Rows of the "Several people" section.
MAX_PEOPLE = 4
REGION_CHOICES = [
    ("Auto (a face of the pose / init image)", "auto"),
    ("Left", "left"),
    ("Right", "right"),
    ("Top", "top"),
    ("Bottom", "bottom"),
    ("Box", "box"),
    ("Mask", "mask"),
]
#: One person row's inputs, in the order people_value() reads them.
PERSON_INPUTS = ("images", "identity", "region", "box", "mask", "id_weight", "control_weight")
#: The panel values the keypoint preview is drawn from, in the order the preview event sends them.
PREVIEW_FIELDS = (
    "images",
    "pose_image",
    "pose_source",
    "face_choice",
    "face_index",
    "resize_mode",
    "pose_preset",
    "pose_mirror",
    "pose_rotate",
    "pose_scale",
    "pose_offset_x",
    "pose_offset_y",
    "pose_face_choice",
    "pose_face_index",
)

# The preview wants the keypoint hint at the size the user will generate at. A script's ui()
# cannot reach the tab's width/height sliders, so this runs in the browser before the handler
# and swaps the two hidden size inputs (the last two inputs) for the sliders' values.
_SIZE_FROM_TAB_JS = """
(...args) => {
    const root = typeof gradioApp === "function" ? gradioApp() : document;
    const read = (id, fallback) => {
        const input = root.querySelector("#" + id + " input[type=number]");
        const value = input ? Number(input.value) : NaN;
        return Number.isFinite(value) && value >= 64 ? Math.round(value) : fallback;
    };
    const values = args.slice(0, __COUNT__);
    values[__COUNT__ - 2] = read("__TAB___width", values[__COUNT__ - 2]);
    values[__COUNT__ - 1] = read("__TAB___height", values[__COUNT__ - 1]);
    return values;
}
"""


@dataclass
class UiEnv:
    """What the panel asks of the host; the WebUI glue fills it, tests pass fakes.

    ``*_names`` and ``controlnet_status`` are called while the panel is built; the others
    only when the user clicks a button.
    """

    #: Adapter files found by the model scan (without "Auto").
    adapter_names: Callable[[], list[str]]
    #: IdentityNet models found by the model scan (without "Auto").
    identitynet_names: Callable[[], list[str]]
    #: Saved identities (without "None").
    identity_names: Callable[[], list[str]]
    #: Rescan the model folders.
    refresh: Callable[[], None]
    #: Whether IdentityNet can run through ControlNet, and a sentence saying so.
    controlnet_status: Callable[[], tuple[bool, str]]
    #: ({field: value for PREVIEW_FIELDS}, width, height)
    #: → (reference with face boxes and indices, keypoint hint at width×height, message).
    preview: Callable[..., tuple[np.ndarray | None, np.ndarray | None, str]]
    #: (name, images, face_choice, face_index, overwrite) → status message.
    save_identity: Callable[..., str]
    #: (people, pose_source, pose_image, pose_preset, resize_mode, width, height)
    #: → (regions and keypoints on the output canvas, message).
    people_preview: Callable[..., tuple[np.ndarray | None, str]] | None = None


@dataclass
class UiResult:
    """What ``Script.ui`` hands on to the WebUI."""

    #: One input per :data:`ARG_FIELDS` entry, in that order: the script's arguments.
    components: list[Any]
    #: ``Script.infotext_fields``: (component, reader) pairs; see :class:`InfotextReader`.
    infotext_fields: list[tuple[Any, InfotextReader]] = field(default_factory=list)
    #: ``Script.paste_field_names``: the readers whose components "Send to img2img" copies.
    paste_field_names: list[InfotextReader] = field(default_factory=list)


def elem_id(tab: str, name: str) -> str:
    """The one place element ids are made: ``instantid_<tab>_<name>``, tab txt2img or img2img."""
    return f"instantid_{tab}_{name}"


# --- values: InstantIDArgs form ↔ what each component shows ----------------------------------


def _known_name(name: str, available: Sequence[str]) -> str | None:
    """``name`` as spelled in ``available`` (case-insensitive), or None."""
    if name in available:
        return name
    lowered = name.lower()
    return next((item for item in available if item.lower() == lowered), None)


def _format_weights(weights: Sequence[float]) -> str:
    return ", ".join(f"{w:g}" for w in weights)


def ui_value(name: str, value: Any, env: UiEnv | None = None) -> Any:
    """The component value that stands for ``value`` of field ``name``.

    With ``env``, a saved identity or model file that is not available here becomes the
    default ("None" / "Auto"), so a pasted infotext from another install still runs.
    """
    if name == "image_weights":
        return _format_weights(value or [])
    if name == "identity":
        if not value:
            return NO_IDENTITY
        if env is not None:
            return _known_name(value, env.identity_names()) or NO_IDENTITY
        return value
    if name == "pose_preset":
        return PRESETS[get_preset(value).name].label if value else value
    if name in ("ip_adapter_model", "identitynet_model"):
        if env is not None and value != AUTO:
            names = env.adapter_names() if name == "ip_adapter_model" else env.identitynet_names()
            return _known_name(value, names) or AUTO
        return value
    return value


def default_value(name: str) -> Any:
    """The component default for a field: the model's default in UI form."""
    return ui_value(name, InstantIDArgs.__fields__[name].get_default())


# --- infotext ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InfotextReader:
    """An ``infotext_fields`` entry for one field: called with the pasted parameters.

    InstantID writes only non-default values, so when "InstantID" is in the parameters a
    missing key means the default; without it the panel is switched off and nothing else is
    touched (``None`` = leave as is). Values are read with :meth:`InstantIDArgs.from_infotext`
    (ranges such as "ID range: 0.2-0.8" included) and returned as the component shows them.

    Readers compare equal by field, so the txt2img and img2img panels' readers match in the
    WebUI's "Send to img2img", which copies the components whose reader is listed in
    ``paste_field_names``.
    """

    name: str
    env: UiEnv | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str | None:
        """The infotext key, if the field has one (``images`` and ``pose_image`` do not)."""
        return infotext_labels().get(self.name)

    def __call__(self, params: Mapping[str, Any]) -> Any:
        if INFOTEXT_PREFIX not in params:
            return False if self.name == "enabled" else None
        if self.key is None:
            return None
        updates = InstantIDArgs.from_infotext(params)
        if self.name == "enabled":
            return bool(updates.get("enabled", True))
        if self.name in updates:
            return ui_value(self.name, updates[self.name], self.env)
        return default_value(self.name)


# --- event handlers (module level, so tests call them directly) ------------------------------


def reference_thumbnails(files: Sequence[Any] | None) -> dict[str, Any]:
    """Thumbnails of the uploaded photos, numbered as "Image weights" counts them."""
    thumbnails = []
    for number, data in enumerate(files or [], start=1):
        try:
            image = decode_image(data)
        except InstantIDError as err:
            logger.warning("Reference photo %d cannot be shown: %s", number, err)
            continue
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        thumbnails.append((image, str(number)))
    return gr.update(value=thumbnails or None, visible=bool(thumbnails))


def show_pose_inputs(pose_source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pose image upload and the preset list, each shown when it is the pose source."""
    return gr.update(visible=pose_source == "pose_image"), gr.update(visible=pose_source == "preset")


def show_face_index(face_choice: str) -> dict[str, Any]:
    return gr.update(visible=face_choice == "index")


def people_value(*values: Any) -> list[dict[str, Any]]:
    """The ``people`` argument from the person rows: the rows that have photos or an identity.

    ``values`` are :data:`PERSON_INPUTS` for each row in turn. Rows left empty are skipped,
    so a single filled row is the API's "one person" error only if the user filled just one.
    """
    people = []
    width = len(PERSON_INPUTS)
    for start in range(0, len(values), width):
        row = dict(zip(PERSON_INPUTS, values[start : start + width], strict=True))
        identity = row["identity"] if row["identity"] not in (None, NO_IDENTITY) else ""
        if not row["images"] and not identity:
            continue
        person = {
            "images": row["images"] or [],
            "identity": identity,
            "region": row["region"] or "auto",
            "id_weight": row["id_weight"],
            "control_weight": row["control_weight"],
        }
        if person["region"] == "box":
            person["box"] = row["box"] or ""
        if person["region"] == "mask":
            person["mask"] = row["mask"]
        people.append(person)
    return people


def run_people_preview(env: UiEnv, *values: Any) -> tuple[np.ndarray | None, str]:
    """Show where each person goes; the last two values are the output width and height."""
    *fields, width, height = values
    assert env.people_preview is not None
    try:
        return env.people_preview(
            *fields, int(width or DEFAULT_PREVIEW_SIZE), int(height or DEFAULT_PREVIEW_SIZE)
        )
    except InstantIDError as err:
        return None, f"⚠ {err}"


def show_region_inputs(region: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return gr.update(visible=region == "box"), gr.update(visible=region == "mask")


def status_text(env: UiEnv) -> str:
    """The ControlNet line under the hint: ✓ with the version, or ⚠ with how to install it."""
    ok, message = env.controlnet_status()
    return f"{'✓' if ok else '⚠'} {message}"


def run_preview(env: UiEnv, *values: Any) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Show which face is used and the keypoint hint at the output size.

    ``values`` are the :data:`PREVIEW_FIELDS` in order, then the output width and height.
    """
    *fields, width, height = values
    named = dict(zip(PREVIEW_FIELDS, fields, strict=True))
    for name in ("face_index", "pose_face_index"):
        named[name] = int(named[name] or 0)
    try:
        return env.preview(named, int(width or DEFAULT_PREVIEW_SIZE), int(height or DEFAULT_PREVIEW_SIZE))
    except InstantIDError as err:
        return None, None, f"⚠ {err}"


def save_identity(
    env: UiEnv,
    name: str,
    images: Any,
    face_choice: str,
    face_index: float | None,
    overwrite: bool,
) -> tuple[str, dict[str, Any]]:
    """Store the photos' face as a named identity; returns the status and the refreshed list."""
    if not (name or "").strip():
        message = "⚠ Type a name for the identity first."
    else:
        try:
            message = env.save_identity(
                name.strip(), images, face_choice, int(face_index or 0), bool(overwrite)
            )
        except InstantIDError as err:
            message = f"⚠ {err}"
    return message, gr.update(choices=[NO_IDENTITY, *env.identity_names()])


def refresh_identities(env: UiEnv, current: str | None) -> dict[str, Any]:
    """New identity list; a selection whose file is gone falls back to "None"."""
    choices = [NO_IDENTITY, *env.identity_names()]
    return gr.update(choices=choices, value=current if current in choices else NO_IDENTITY)


def refresh_models(
    env: UiEnv, adapter: str | None, identitynet: str | None
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Rescan the model folders; also re-checks ControlNet, which may have been installed since."""
    env.refresh()
    adapters = _with_auto(env.adapter_names())
    identitynets = _with_auto(env.identitynet_names())
    return (
        gr.update(choices=adapters, value=adapter if adapter in adapters else AUTO),
        gr.update(choices=identitynets, value=identitynet if identitynet in identitynets else AUTO),
        status_text(env),
    )


def _with_auto(names: Sequence[str]) -> list[str]:
    return [AUTO, *(name for name in names if name != AUTO)]


# --- layout -----------------------------------------------------------------------------------


def _host_components() -> tuple[Any, Any]:
    """A1111's InputAccordion (1.6+) and ToolButton, or None where they are missing."""
    try:
        from modules import ui_components  # type: ignore[import-not-found]
    except ImportError:
        return None, None
    return getattr(ui_components, "InputAccordion", None), getattr(ui_components, "ToolButton", None)


def _tool_button(tool_button: Any, value: str, elem: str, tooltip: str) -> Any:
    if tool_button is not None:
        return tool_button(value=value, elem_id=elem, tooltip=tooltip)
    return gr.Button(value=value, elem_id=elem, elem_classes=["tool"], size="sm", scale=0, min_width=40)


def build_ui(is_img2img: bool, env: UiEnv) -> UiResult:
    """Create the panel's components; return them in ARG_FIELDS order with the infotext wiring.

    Side-effect free apart from creating components and their events: it calls only the
    ``*_names`` and ``controlnet_status`` callables of ``env``.
    """
    tab = "img2img" if is_img2img else "txt2img"
    eid = functools.partial(elem_id, tab)
    input_accordion, tool_button = _host_components()
    c: dict[str, Any] = {}

    if input_accordion is not None:
        accordion = input_accordion(False, label="InstantID", elem_id=eid("accordion"))
        c["enabled"] = accordion
    else:  # hosts without InputAccordion: a plain accordion with the toggle inside
        accordion = gr.Accordion("InstantID", open=False, elem_id=eid("accordion"))

    with accordion:
        if input_accordion is None:
            c["enabled"] = gr.Checkbox(
                value=default_value("enabled"), label="Enable InstantID", elem_id=eid("accordion-checkbox")
            )
        gr.Markdown(HINT, elem_id=eid("hint"))
        controlnet_line = gr.Markdown(status_text(env), elem_id=eid("controlnet_status"))

        with gr.Row():
            c["images"] = gr.File(
                label="Reference face photo(s)",
                file_count="multiple",
                file_types=["image"],
                type="binary",
                elem_id=eid("images"),
            )
            thumbnails = gr.Gallery(
                label="Reference photos",
                columns=4,
                object_fit="contain",
                allow_preview=False,
                show_download_button=False,
                show_share_button=False,
                visible=False,
                elem_id=eid("thumbnails"),
            )

        with gr.Row():
            c["id_weight"] = field_slider(
                "id_weight",
                step=0.05,
                label="ID weight",
                info="How strongly the face tokens push the likeness.",
                elem_id=eid("id_weight"),
            )
            c["control_weight"] = field_slider(
                "control_weight",
                step=0.05,
                label="IdentityNet strength",
                info="How strongly the face keypoints and landmarks are held.",
                elem_id=eid("control_weight"),
            )

        with gr.Row():
            c["identity"] = gr.Dropdown(
                choices=[NO_IDENTITY, *env.identity_names()],
                value=default_value("identity"),
                label="Saved identity",
                info='Used instead of the photos; "None" uses the photos.',
                elem_id=eid("identity"),
            )
            identity_refresh = _tool_button(
                tool_button, "🔄", eid("identity_refresh"), "Reload the list of saved identities"
            )

        with gr.Row():
            c["pose_source"] = gr.Radio(
                choices=[choice for choice in POSE_CHOICES if is_img2img or choice[1] != "init_image"],
                value=default_value("pose_source"),
                label="Pose from",
                info=AUTO_POSE_INFO[tab],
                elem_id=eid("pose_source"),
            )
            c["face_choice"] = gr.Radio(
                choices=FACE_CHOICES,
                value=default_value("face_choice"),
                label="Face to use",
                info="When a photo shows several faces.",
                elem_id=eid("face_choice"),
            )
            c["face_index"] = gr.Number(
                value=default_value("face_index"),
                precision=0,
                minimum=0,
                maximum=31,
                label="Face number",
                info="0 = leftmost face.",
                visible=False,
                elem_id=eid("face_index"),
            )
        c["pose_image"] = gr.Image(
            label="Pose image: the output copies this face's position and angle",
            type="pil",
            source="upload",
            visible=False,
            elem_id=eid("pose_image"),
        )
        c["pose_preset"] = gr.Dropdown(
            choices=[preset.label for preset in PRESETS.values()],
            value=default_value("pose_preset"),
            label="Pose preset",
            info="'Left' turns the face towards the image's left.",
            visible=False,
            elem_id=eid("pose_preset"),
        )
        with gr.Accordion("Pose edits", open=False, elem_id=eid("pose_edits")):
            with gr.Row():
                c["pose_mirror"] = gr.Checkbox(
                    value=default_value("pose_mirror"), label="Mirror", elem_id=eid("pose_mirror")
                )
                c["pose_rotate"] = field_slider(
                    "pose_rotate",
                    step=1,
                    label="Rotate (degrees)",
                    elem_id=eid("pose_rotate"),
                )
                c["pose_scale"] = field_slider(
                    "pose_scale",
                    step=0.05,
                    label="Scale",
                    elem_id=eid("pose_scale"),
                )
            with gr.Row():
                c["pose_offset_x"] = field_slider(
                    "pose_offset_x",
                    step=0.01,
                    label="Move right",
                    info="Fraction of the width.",
                    elem_id=eid("pose_offset_x"),
                )
                c["pose_offset_y"] = field_slider(
                    "pose_offset_y",
                    step=0.01,
                    label="Move down",
                    info="Fraction of the height.",
                    elem_id=eid("pose_offset_y"),
                )

        with gr.Accordion("Preview", open=False, elem_id=eid("preview_accordion")):
            with gr.Row():
                preview_button = gr.Button("Preview face", elem_id=eid("preview"))
                # Filled from the tab's width/height sliders when the button is clicked.
                width = gr.Number(
                    value=DEFAULT_PREVIEW_SIZE, precision=0, visible=False, elem_id=eid("preview_width")
                )
                height = gr.Number(
                    value=DEFAULT_PREVIEW_SIZE, precision=0, visible=False, elem_id=eid("preview_height")
                )
            with gr.Row():
                annotated = gr.Image(
                    label="Faces found (number, score)",
                    type="numpy",
                    interactive=False,
                    elem_id=eid("preview_faces"),
                )
                keypoints = gr.Image(
                    label="Keypoint hint at the output size",
                    type="numpy",
                    interactive=False,
                    elem_id=eid("preview_keypoints"),
                )
            preview_message = gr.Markdown("", elem_id=eid("preview_message"))

        with gr.Accordion("Advanced", open=False, elem_id=eid("advanced")):
            c["image_weights"] = gr.Textbox(
                value=default_value("image_weights"),
                label="Image weights",
                placeholder="1, 0.5",
                info=(
                    "One number per photo, in upload order (the thumbnails' numbers): "
                    '"1, 0.5" makes photo 1 count twice as much as photo 2. Empty = equal.'
                ),
                elem_id=eid("image_weights"),
            )
            with gr.Row():
                c["id_start"] = _fraction_slider("ID start", "id_start", eid)
                c["id_end"] = _fraction_slider("ID end", "id_end", eid)
            with gr.Row():
                c["control_start"] = _fraction_slider("IdentityNet start", "control_start", eid)
                c["control_end"] = _fraction_slider("IdentityNet end", "control_end", eid)
            with gr.Row():
                c["ip_adapter_model"] = gr.Dropdown(
                    choices=_with_auto(env.adapter_names()),
                    value=default_value("ip_adapter_model"),
                    label="Adapter model",
                    elem_id=eid("ip_adapter_model"),
                )
                c["identitynet_model"] = gr.Dropdown(
                    choices=_with_auto(env.identitynet_names()),
                    value=default_value("identitynet_model"),
                    label="IdentityNet model",
                    elem_id=eid("identitynet_model"),
                )
                models_refresh = _tool_button(
                    tool_button, "🔄", eid("models_refresh"), "Rescan the model folders"
                )
            c["resize_mode"] = gr.Radio(
                choices=RESIZE_CHOICES,
                value=default_value("resize_mode"),
                label="Resize mode",
                info="How the pose is fitted to the output size when the aspect ratios differ.",
                elem_id=eid("resize_mode"),
            )
            c["face_region_only"] = gr.Checkbox(
                value=default_value("face_region_only"),
                label="Face region only",
                info=(
                    'Like the reference demo\'s "enhance non-face region": the face tokens and '
                    "IdentityNet act only inside the face box, so the prompt alone shapes the "
                    "rest (background, clothes, style)."
                ),
                elem_id=eid("face_region_only"),
            )
            with gr.Row():
                c["pose_face_choice"] = gr.Radio(
                    choices=FACE_CHOICES,
                    value=default_value("pose_face_choice"),
                    label="Face in the pose / init image",
                    info="Which face gives the keypoints (img2img with a mask: the face under it).",
                    elem_id=eid("pose_face_choice"),
                )
                c["pose_face_index"] = gr.Number(
                    value=default_value("pose_face_index"),
                    precision=0,
                    minimum=0,
                    maximum=31,
                    label="Face number",
                    info="0 = leftmost face.",
                    visible=False,
                    elem_id=eid("pose_face_index"),
                )
            c["show_hint"] = gr.Checkbox(
                value=default_value("show_hint"),
                label="Add the keypoint image to the outputs",
                info="Shows exactly what IdentityNet received, drawn where the sampler saw it.",
                elem_id=eid("show_hint"),
            )
            with gr.Row():
                c["noise"] = field_slider(
                    "noise",
                    step=0.05,
                    label="Negative noise",
                    info="Against burned, over-saturated images: 0.2–0.4 helps; 0 = off.",
                    elem_id=eid("noise"),
                )
                c["likeness"] = gr.Checkbox(
                    value=default_value("likeness"),
                    label="Likeness score",
                    info="Score each output's face against the reference (shown in the image info).",
                    elem_id=eid("likeness"),
                )

        with gr.Accordion("Face pass", open=False, elem_id=eid("face_pass_accordion")):
            c["face_pass"] = gr.Checkbox(
                value=default_value("face_pass"),
                label="Restyle the face(s) after each image",
                info=(
                    "Finds the faces in the result, redraws each at its own resolution with InstantID "
                    "and pastes it back: small faces come back with the identity."
                ),
                elem_id=eid("face_pass"),
            )
            with gr.Row():
                c["face_pass_faces"] = gr.Radio(
                    choices=FACE_PASS_CHOICES,
                    value=default_value("face_pass_faces"),
                    label="Faces",
                    elem_id=eid("face_pass_faces"),
                )
                c["face_pass_index"] = gr.Number(
                    value=default_value("face_pass_index"),
                    precision=0,
                    minimum=0,
                    maximum=31,
                    label="Face number",
                    info="0 = leftmost face.",
                    visible=False,
                    elem_id=eid("face_pass_index"),
                )
            with gr.Row():
                c["face_pass_strength"] = field_slider(
                    "face_pass_strength",
                    step=0.01,
                    label="Denoising strength",
                    elem_id=eid("face_pass_strength"),
                )
                c["face_pass_padding"] = field_slider(
                    "face_pass_padding",
                    step=4,
                    label="Padding (px)",
                    info="Context kept around each face.",
                    elem_id=eid("face_pass_padding"),
                )
                c["face_pass_resolution"] = field_slider(
                    "face_pass_resolution",
                    step=64,
                    label="Working size",
                    info="Each face is redrawn at this size.",
                    elem_id=eid("face_pass_resolution"),
                )
            c["face_pass_prompt"] = gr.Textbox(
                value=default_value("face_pass_prompt"),
                label="Face pass prompt",
                placeholder="Empty: the image's own prompt",
                lines=1,
                elem_id=eid("face_pass_prompt"),
            )

        with gr.Accordion("Several people", open=False, elem_id=eid("people_accordion")):
            gr.Markdown(
                "Two to four people in one picture: each row is one person (photos or a saved identity) "
                "and the region the person goes in. When two or more rows are filled, they replace the "
                "photo above. *Auto* regions follow the faces of the pose image (or, in img2img, of the "
                "init image), left to right.",
                elem_id=eid("people_hint"),
            )
            person_inputs: list[Any] = []
            for number in range(1, MAX_PEOPLE + 1):
                pid = functools.partial(lambda n, name: eid(f"person{n}_{name}"), number)
                with gr.Row():
                    images = gr.File(
                        label=f"Person {number}: photo(s)",
                        file_count="multiple",
                        file_types=["image"],
                        type="binary",
                        elem_id=pid("images"),
                    )
                    with gr.Column():
                        identity = gr.Dropdown(
                            choices=[NO_IDENTITY, *env.identity_names()],
                            value=NO_IDENTITY,
                            label="or a saved identity",
                            elem_id=pid("identity"),
                        )
                        region = gr.Dropdown(
                            choices=[label for label, _ in REGION_CHOICES],
                            value=REGION_CHOICES[0][0],
                            type="index",
                            label="Region",
                            elem_id=pid("region"),
                        )
                        box = gr.Textbox(
                            label="Box: x1, y1, x2, y2 (fractions)",
                            placeholder="0.5, 0.1, 1, 0.9",
                            visible=False,
                            elem_id=pid("box"),
                        )
                    mask = gr.Image(label="Region mask", type="pil", visible=False, elem_id=pid("mask"))
                    with gr.Column():
                        id_weight = field_slider(
                            "id_weight",
                            step=0.05,
                            label="ID weight",
                            elem_id=pid("id_weight"),
                            model=Person,
                        )
                        control_weight = field_slider(
                            "control_weight",
                            step=0.05,
                            label="IdentityNet strength",
                            elem_id=pid("control_weight"),
                            model=Person,
                        )
                region.change(
                    lambda index: show_region_inputs(REGION_CHOICES[index or 0][1]),
                    inputs=[region],
                    outputs=[box, mask],
                    queue=False,
                )
                person_inputs += [images, identity, region, box, mask, id_weight, control_weight]
            c["people"] = gr.State([])
            with gr.Row():
                people_button = gr.Button("Preview people", elem_id=eid("people_preview"))
                people_width = gr.Number(
                    value=DEFAULT_PREVIEW_SIZE, precision=0, visible=False, elem_id=eid("people_width")
                )
                people_height = gr.Number(
                    value=DEFAULT_PREVIEW_SIZE, precision=0, visible=False, elem_id=eid("people_height")
                )
            people_picture = gr.Image(
                label="Regions and keypoints on the output canvas",
                type="numpy",
                interactive=False,
                elem_id=eid("people_picture"),
            )
            people_message = gr.Markdown("", elem_id=eid("people_message"))

        with gr.Accordion("Save as identity", open=False, elem_id=eid("save_accordion")):
            with gr.Row():
                identity_name = gr.Textbox(
                    label="Name",
                    placeholder="e.g. Alice",
                    info='Stores the photos\' face so it can be picked from "Saved identity".',
                    elem_id=eid("identity_name"),
                )
                overwrite = gr.Checkbox(value=False, label="Replace if it exists", elem_id=eid("overwrite"))
                save_button = gr.Button("Save identity", elem_id=eid("save_identity"))
            save_message = gr.Markdown("", elem_id=eid("save_message"))

    # -- events (components only; nothing runs until the user acts) --
    c["images"].change(reference_thumbnails, inputs=[c["images"]], outputs=[thumbnails], queue=False)
    c["pose_source"].change(
        show_pose_inputs, inputs=[c["pose_source"]], outputs=[c["pose_image"], c["pose_preset"]], queue=False
    )
    c["face_pass_faces"].change(
        lambda faces: gr.update(visible=faces == "index"),
        inputs=[c["face_pass_faces"]],
        outputs=[c["face_pass_index"]],
        queue=False,
    )
    c["face_choice"].change(
        show_face_index, inputs=[c["face_choice"]], outputs=[c["face_index"]], queue=False
    )
    c["pose_face_choice"].change(
        show_face_index, inputs=[c["pose_face_choice"]], outputs=[c["pose_face_index"]], queue=False
    )
    identity_refresh.click(
        functools.partial(refresh_identities, env),
        inputs=[c["identity"]],
        outputs=[c["identity"]],
        queue=False,
    )
    models_refresh.click(
        functools.partial(refresh_models, env),
        inputs=[c["ip_adapter_model"], c["identitynet_model"]],
        outputs=[c["ip_adapter_model"], c["identitynet_model"], controlnet_line],
    )
    preview_inputs = [*(c[name] for name in PREVIEW_FIELDS), width, height]
    preview = {
        "fn": functools.partial(run_preview, env),
        "_js": _SIZE_FROM_TAB_JS.replace("__COUNT__", str(len(preview_inputs))).replace("__TAB__", tab),
        "inputs": preview_inputs,
        "outputs": [annotated, keypoints, preview_message],
    }
    preview_button.click(**preview)
    # A live preview of the keypoints while the pose is edited.
    for name in ("pose_preset", "pose_mirror"):
        c[name].change(**preview, queue=False)
    for name in ("pose_rotate", "pose_scale", "pose_offset_x", "pose_offset_y"):
        c[name].release(**preview, queue=False)
    save_button.click(
        functools.partial(save_identity, env),
        inputs=[identity_name, c["images"], c["face_choice"], c["face_index"], overwrite],
        outputs=[save_message, c["identity"]],
    )

    def collect_people(*values: Any) -> list[dict[str, Any]]:
        values = list(values)
        for start in range(2, len(values), len(PERSON_INPUTS)):  # the region dropdown gives its index
            values[start] = REGION_CHOICES[values[start] or 0][1]
        return people_value(*values)

    for component in person_inputs:
        component.change(collect_people, inputs=person_inputs, outputs=[c["people"]], queue=False)
    if env.people_preview is not None:
        people_inputs = [
            c["people"],
            c["pose_source"],
            c["pose_image"],
            c["pose_preset"],
            c["resize_mode"],
            people_width,
            people_height,
        ]
        people_button.click(
            functools.partial(run_people_preview, env),
            _js=_SIZE_FROM_TAB_JS.replace("__COUNT__", str(len(people_inputs))).replace("__TAB__", tab),
            inputs=people_inputs,
            outputs=[people_picture, people_message],
        )

    components = [c[name] for name in ARG_FIELDS]
    infotext_fields = [
        (c[name], InfotextReader(name, env)) for name in ARG_FIELDS if name not in ("images", "people")
    ]
    return UiResult(
        components=components,
        infotext_fields=infotext_fields,
        paste_field_names=[reader for _, reader in infotext_fields],
    )


def _fraction_slider(label: str, name: str, eid: Callable[[str], str]) -> Any:
    """A 0–1 slider for when, as a fraction of the sampling steps, an effect is on."""
    info = "Fraction of the sampling steps."
    return field_slider(name, step=0.01, label=label, info=info, elem_id=eid(name))


def field_slider(
    name: str,
    *,
    step: float,
    label: str,
    elem_id: str,
    info: str | None = None,
    model: type[InstantIDArgs] | type[Person] = InstantIDArgs,
) -> Any:
    """A slider whose range and default are the args model's field's, so that the panel never
    offers a value the API would refuse."""
    field_info = model.__fields__[name].field_info
    value = default_value(name) if model is InstantIDArgs else model.__fields__[name].get_default()
    extra = {} if info is None else {"info": info}
    return gr.Slider(
        minimum=field_info.ge,
        maximum=field_info.le,
        step=step,
        value=value,
        label=label,
        elem_id=elem_id,
        **extra,
    )
