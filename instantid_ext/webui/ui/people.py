"""The "Several people" section: one row per person (photos or a saved identity, a region,
two strengths), gathered into the ``people`` argument whenever a row changes."""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr
import numpy as np

from ...args import Person
from ...errors import InstantIDError
from .env import UiEnv
from .handlers import output_size, size_from_tab_js
from .values import NO_IDENTITY
from .widgets import Panel, field_slider

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
PEOPLE_HINT = (
    "Two to four people in one picture: each row is one person (photos or a saved identity) "
    "and the region the person goes in. When two or more rows are filled, they replace the "
    "photo above. *Auto* regions follow the faces of the pose image (or, in img2img, of the "
    "init image), left to right."
)


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
        return env.people_preview(*fields, *output_size(width, height))
    except InstantIDError as err:
        return None, f"⚠ {err}"


def show_region_inputs(region: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return gr.update(visible=region == "box"), gr.update(visible=region == "mask")


def _collect_people(*values: Any) -> list[dict[str, Any]]:
    """:func:`people_value`, after turning each region dropdown's index into its value."""
    values_list = list(values)
    for start in range(2, len(values_list), len(PERSON_INPUTS)):
        values_list[start] = REGION_CHOICES[values_list[start] or 0][1]
    return people_value(*values_list)


def _person_row(p: Panel, number: int) -> list[Any]:
    """One person's inputs, in :data:`PERSON_INPUTS` order."""
    pid = functools.partial(lambda n, name: p.eid(f"person{n}_{name}"), number)
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
                choices=[NO_IDENTITY, *p.env.identity_names()],
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
            weights = [
                field_slider(name, step=0.05, label=label, elem_id=pid(name), model=Person)
                for name, label in (("id_weight", "ID weight"), ("control_weight", "IdentityNet strength"))
            ]
    region.change(
        lambda index: show_region_inputs(REGION_CHOICES[index or 0][1]),
        inputs=[region],
        outputs=[box, mask],
        queue=False,
    )
    return [images, identity, region, box, mask, *weights]


def people_section(p: Panel) -> None:
    """Rows of people, the ``people`` argument they fill, and the regions preview (folded)."""
    with gr.Accordion("Several people", open=False, elem_id=p.eid("people_accordion")):
        gr.Markdown(PEOPLE_HINT, elem_id=p.eid("people_hint"))
        inputs = [c for number in range(1, MAX_PEOPLE + 1) for c in _person_row(p, number)]
        p.args["people"] = gr.State([])
        with gr.Row():
            button = gr.Button("Preview people", elem_id=p.eid("people_preview"))
            size = p.size_inputs("people")
        picture = p.picture("Regions and keypoints on the output canvas", "people_picture")
        message = gr.Markdown("", elem_id=p.eid("people_message"))
    for component in inputs:
        component.change(_collect_people, inputs=inputs, outputs=[p.args["people"]], queue=False)
    p.parts["people_preview"] = (button, list(size), [picture, message])


def wire_people_preview(p: Panel) -> None:
    """The regions preview: needs the pose and advanced sections' components."""
    if p.env.people_preview is None:
        return
    button, size, outputs = p.parts["people_preview"]
    a = p.args
    inputs = [a[n] for n in ("people", "pose_source", "pose_image", "pose_preset", "resize_mode")] + size
    button.click(
        functools.partial(run_people_preview, p.env),
        _js=size_from_tab_js(p.tab, len(inputs)),
        inputs=inputs,
        outputs=outputs,
    )
