"""The panel's sections, top to bottom; each makes its components and wires its own events.

A section puts the argument components it makes into ``panel.args`` and the others that later
events need into ``panel.parts``. Ranges and defaults come from the args model (see
:mod:`.widgets`); only labels, help texts and slider steps are written here.
"""

from __future__ import annotations

import functools

import gradio as gr

from ...method.pose_presets import PRESETS
from .handlers import (
    POSE_EDITS,
    PREVIEW_FIELDS,
    reference_thumbnails,
    refresh_identities,
    refresh_models,
    run_preview,
    save_identity,
    show_pose_inputs,
    size_from_tab_js,
    status_text,
)
from .values import NO_IDENTITY, default_value, with_auto
from .widgets import FACE_CHOICES, Panel

HINT = "Drop a face photo, tick **InstantID**, generate: SDXL only, CFG 3–5 (higher burns the image)."
POSE_CHOICES = [
    ("Auto", "auto"),
    ("Reference", "reference"),
    ("Pose image", "pose_image"),
    ("Init image", "init_image"),
    ("Preset", "preset"),
    ("None (free)", "none"),
]
#: What "Auto" means on each tab.
AUTO_POSE_INFO = {
    "txt2img": "The face's position and angle. Auto: the reference face's.",
    "img2img": "The face's position and angle. Auto: the init image's face, else the reference's.",
}
#: Height of the reference thumbnails beside the photos (px).
THUMBNAILS_HEIGHT = 90
RESIZE_CHOICES = ["Crop and Resize", "Resize and Fill", "Just Resize"]
FACE_PASS_CHOICES = [("Largest", "largest"), ("All", "all"), ("Face number…", "index")]


def reference_section(p: Panel) -> None:
    """The hint, the ControlNet line, the photos, the two strengths and the saved identity."""
    a = p.args
    gr.Markdown(HINT, elem_id=p.eid("hint"))
    p.parts["controlnet_line"] = gr.Markdown(status_text(p.env), elem_id=p.eid("controlnet_status"))
    with gr.Row():
        a["images"] = p.photos("Face photo(s) of one person", "images")
        with gr.Column():
            with gr.Row():
                a["identity"] = gr.Dropdown(
                    choices=[NO_IDENTITY, *p.env.identity_names()],
                    value=default_value("identity"),
                    label="or a saved identity",
                    info='Used instead of the photos; "None" uses the photos.',
                    elem_id=p.eid("identity"),
                )
                refresh = p.tool("🔄", "identity_refresh", "Reload the list of saved identities")
            thumbnails = gr.Gallery(
                label="Reference photos",
                columns=4,
                height=THUMBNAILS_HEIGHT,
                object_fit="contain",
                allow_preview=False,
                show_download_button=False,
                show_share_button=False,
                visible=False,
                elem_id=p.eid("thumbnails"),
            )
    with gr.Row():
        a["id_weight"] = p.slider("id_weight", 0.05, "ID weight", "Likeness from the face tokens.")
        a["control_weight"] = p.slider(
            "control_weight", 0.05, "IdentityNet strength", "How firmly the face's keypoints are held."
        )
    a["images"].change(reference_thumbnails, inputs=[a["images"]], outputs=[thumbnails], queue=False)
    refresh.click(
        functools.partial(refresh_identities, p.env),
        inputs=[a["identity"]],
        outputs=[a["identity"]],
        queue=False,
    )


def pose_section(p: Panel) -> None:
    """Where the pose comes from, which reference face, and the folded pose edits."""
    a = p.args
    with gr.Row():
        pose_choices = [c for c in POSE_CHOICES if p.is_img2img or c[1] != "init_image"]
        a["pose_source"] = p.radio("pose_source", pose_choices, "Pose from", AUTO_POSE_INFO[p.tab])
        a["face_choice"] = p.radio(
            "face_choice", FACE_CHOICES, "Face to use", "When a photo shows several faces."
        )
        a["face_index"] = p.face_number("face_index", a["face_choice"])
    a["pose_image"] = gr.Image(
        label="Pose image: the output copies this face's position and angle",
        type="pil",
        source="upload",
        visible=False,
        elem_id=p.eid("pose_image"),
    )
    a["pose_preset"] = gr.Dropdown(
        choices=[preset.label for preset in PRESETS.values()],
        value=default_value("pose_preset"),
        label="Pose preset",
        info="'Left' turns the face towards the image's left.",
        visible=False,
        elem_id=p.eid("pose_preset"),
    )
    with gr.Accordion("Pose edits", open=False, elem_id=p.eid("pose_edits")):
        with gr.Row():
            a["pose_mirror"] = p.checkbox("pose_mirror", "Mirror")
            a["pose_rotate"] = p.slider("pose_rotate", 1, "Rotate (degrees)")
            a["pose_scale"] = p.slider("pose_scale", 0.05, "Scale")
        with gr.Row():
            a["pose_offset_x"] = p.slider("pose_offset_x", 0.01, "Move right (× width)")
            a["pose_offset_y"] = p.slider("pose_offset_y", 0.01, "Move down (× height)")
    a["pose_source"].change(
        show_pose_inputs, inputs=[a["pose_source"]], outputs=[a["pose_image"], a["pose_preset"]], queue=False
    )


def preview_section(p: Panel) -> None:
    """The face and keypoint preview, one click away (its pictures appear once drawn); it
    follows the pose edits live.

    Needs the pose and advanced sections' components, so it is wired after them.
    """
    with gr.Column(elem_id=p.eid("preview_section")):
        with gr.Row():
            button = gr.Button("Preview face", elem_id=p.eid("preview"))
            width, height = p.size_inputs("preview")
        with gr.Row():
            annotated = p.picture("Faces found (number, score)", "preview_faces")
            keypoints = p.picture("Keypoint hint at the output size", "preview_keypoints")
        message = gr.Markdown("", elem_id=p.eid("preview_message"))
    p.parts["preview"] = (button, [width, height], [annotated, keypoints, message])


def wire_preview(p: Panel) -> None:
    """The preview button, and a live keypoint preview while the pose is edited."""
    button, size, outputs = p.parts["preview"]
    inputs = [*(p.args[name] for name in PREVIEW_FIELDS), *size]
    preview = {
        "fn": functools.partial(run_preview, p.env),
        "_js": size_from_tab_js(p.tab, len(inputs)),
        "inputs": inputs,
        "outputs": outputs,
    }
    button.click(**preview)
    for name in POSE_EDITS:  # sliders redraw when let go, not at every step of a drag
        event = "release" if isinstance(p.args[name], gr.Slider) else "change"
        getattr(p.args[name], event)(**preview, queue=False)


def advanced_section(p: Panel) -> None:
    """Image weights, when each effect is on, the model files and the finer switches (folded)."""
    a = p.args
    with gr.Accordion("Advanced", open=False, elem_id=p.eid("advanced")):
        a["image_weights"] = gr.Textbox(
            value=default_value("image_weights"),
            label="Image weights",
            placeholder="1, 0.5",
            lines=1,
            max_lines=1,
            info='One per photo, in upload order: "1, 0.5" counts photo 1 twice. Empty = equal.',
            elem_id=p.eid("image_weights"),
        )
        with gr.Row():
            a["id_start"] = p.fraction("id_start", "ID start")
            a["id_end"] = p.fraction("id_end", "ID end")
            a["control_start"] = p.fraction("control_start", "IdentityNet start")
            a["control_end"] = p.fraction("control_end", "IdentityNet end")
        _model_row(p)
        a["face_region_only"] = p.checkbox(
            "face_region_only",
            "Face region only",
            "Face tokens and IdentityNet act only in the face box; the prompt shapes the rest.",
        )
        with gr.Row():
            a["resize_mode"] = p.radio(
                "resize_mode",
                RESIZE_CHOICES,
                "Resize mode",
                "How the pose fits another aspect ratio.",
            )
            a["pose_face_choice"] = p.radio(
                "pose_face_choice",
                FACE_CHOICES,
                "Face in the pose / init image",
                "Which face gives the keypoints.",
            )
            a["pose_face_index"] = p.face_number("pose_face_index", a["pose_face_choice"])
        a["show_hint"] = p.checkbox(
            "show_hint",
            "Add the keypoint image to the outputs",
            "Exactly what IdentityNet received.",
        )
        with gr.Row():
            a["noise"] = p.slider(
                "noise",
                0.05,
                "Negative noise",
                "0.2–0.4 against burned images; 0 = off.",
            )
            a["likeness"] = p.checkbox(
                "likeness",
                "Likeness score",
                "Each output's face against the reference, in the image info.",
            )


def _model_row(p: Panel) -> None:
    a = p.args
    with gr.Row():
        a["ip_adapter_model"] = gr.Dropdown(
            choices=with_auto(p.env.adapter_names()),
            value=default_value("ip_adapter_model"),
            label="Adapter model",
            elem_id=p.eid("ip_adapter_model"),
        )
        a["identitynet_model"] = gr.Dropdown(
            choices=with_auto(p.env.identitynet_names()),
            value=default_value("identitynet_model"),
            label="IdentityNet model",
            elem_id=p.eid("identitynet_model"),
        )
        refresh = p.tool("🔄", "models_refresh", "Rescan the model folders")
    models = [a["ip_adapter_model"], a["identitynet_model"]]
    refresh.click(
        functools.partial(refresh_models, p.env), inputs=models, outputs=[*models, p.parts["controlnet_line"]]
    )


def face_pass_section(p: Panel) -> None:
    """The second pass that redraws each face at its own resolution (folded)."""
    a = p.args
    with gr.Accordion("Face pass", open=False, elem_id=p.eid("face_pass_accordion")):
        with gr.Row():
            a["face_pass"] = p.checkbox(
                "face_pass",
                "Restyle the face(s) after each image",
                "Redraws each face at its own size with InstantID: small faces keep the identity.",
            )
            a["face_pass_faces"] = p.radio("face_pass_faces", FACE_PASS_CHOICES, "Faces")
            a["face_pass_index"] = p.face_number("face_pass_index", a["face_pass_faces"])
        with gr.Row():
            a["face_pass_strength"] = p.slider("face_pass_strength", 0.01, "Denoising strength")
            a["face_pass_padding"] = p.slider("face_pass_padding", 4, "Padding (px)")
            a["face_pass_resolution"] = p.slider("face_pass_resolution", 64, "Working size")
        a["face_pass_prompt"] = gr.Textbox(
            value=default_value("face_pass_prompt"),
            label="Face pass prompt",
            placeholder="Empty: the image's own prompt",
            lines=1,
            elem_id=p.eid("face_pass_prompt"),
        )


def save_identity_section(p: Panel) -> None:
    """Store the reference photos' face under a name (folded)."""
    a = p.args
    with gr.Accordion("Save as identity", open=False, elem_id=p.eid("save_accordion")):
        gr.Markdown(
            'Stores the photos\' face under a name, to pick from "saved identity" later.',
            elem_id=p.eid("save_hint"),
        )
        with gr.Row():
            name = gr.Textbox(
                label="Name",
                placeholder="e.g. Alice",
                elem_id=p.eid("identity_name"),
            )
            overwrite = gr.Checkbox(value=False, label="Replace if it exists", elem_id=p.eid("overwrite"))
            button = gr.Button("Save identity", elem_id=p.eid("save_identity"))
        message = gr.Markdown("", elem_id=p.eid("save_message"))
    button.click(
        functools.partial(save_identity, p.env),
        inputs=[name, a["images"], a["face_choice"], a["face_index"], overwrite],
        outputs=[message, a["identity"]],
    )
