"""The "Several people" section: one row per person (photos or a saved identity, a region,
two strengths), gathered into the ``people`` argument whenever a row changes.

All :data:`MAX_PEOPLE` rows always exist (the script's arguments and their order never change),
but only the rows in use are shown: one at first, another per "Add person", the last one
cleared and hidden by "Remove person". A row that gets a value by any other way (a pasted
infotext names three people, an event fills a row) is shown by itself, with the rows above it,
and a row that holds a value is never hidden: a person never takes part unseen.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from ...args import INFOTEXT_PREFIX, InstantIDArgs, Person
from ...errors import InstantIDError
from .env import UiEnv
from .handlers import output_size, picture_update, size_from_tab_js
from .values import NO_IDENTITY, known_name
from .widgets import Panel, field_slider

#: Rows of the "Several people" section.
MAX_PEOPLE = 4
#: Rows shown before any is in use.
PEOPLE_AT_START = 1
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
    "Two to four people, one row each (photos or a saved identity, and where the person goes); "
    "two filled rows replace the photo above. *Auto*: the pose image's faces, left to right."
)
#: An empty row's values, in :data:`PERSON_INPUTS` order as the components hold them.
ROW_DEFAULTS: dict[str, Any] = {
    "images": None,
    "identity": NO_IDENTITY,
    "region": REGION_CHOICES[0][0],
    "box": "",
    "mask": None,
    "id_weight": Person.__fields__["id_weight"].get_default(),
    "control_weight": Person.__fields__["control_weight"].get_default(),
}
#: An empty row's values as the handlers receive them (the region as its index, 0).
_EMPTY = {**ROW_DEFAULTS, "region": 0}


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


def run_people_preview(env: UiEnv, *values: Any) -> tuple[dict[str, Any], str]:
    """Show where each person goes; the last two values are the output width and height."""
    *fields, width, height = values
    assert env.people_preview is not None
    try:
        picture, message = env.people_preview(*fields, *output_size(width, height))
    except InstantIDError as err:
        picture, message = None, f"⚠ {err}"
    return picture_update(picture), message


def show_region_inputs(region: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return gr.update(visible=region == "box"), gr.update(visible=region == "mask")


def _collect_people(*values: Any) -> list[dict[str, Any]]:
    """:func:`people_value`, after turning each region dropdown's index into its value."""
    values_list = list(values)
    for start in range(2, len(values_list), len(PERSON_INPUTS)):
        values_list[start] = REGION_CHOICES[values_list[start] or 0][1]
    return people_value(*values_list)


def _shown(count: float | None) -> int:
    return min(max(int(count or PEOPLE_AT_START), 1), MAX_PEOPLE)


def rows_in_use(*values: Any) -> int:
    """How many rows are needed to show every row that holds a value (0: none does).

    ``values`` are :data:`PERSON_INPUTS` for each row in turn, the region as its index.
    """
    width, used = len(PERSON_INPUTS), 0
    for number, start in enumerate(range(0, len(values), width), start=1):
        row = dict(zip(PERSON_INPUTS, values[start : start + width], strict=True))
        if any(row[name] not in (None, [], 0, _EMPTY[name]) for name in PERSON_INPUTS):
            used = number
    return used


def gather_people(count: float | None, *values: Any) -> tuple[list[dict[str, Any]], int]:
    """The ``people`` argument, and the rows to show: at least every row in use."""
    return _collect_people(*values), max(_shown(count), rows_in_use(*values))


def show_rows(count: float | None, *values: Any) -> list[Any]:
    """The rows to show (``count``, or more where a row further down holds a value: a hidden
    row never takes part unseen), each row shown or hidden, then "Add person" and "Remove
    person" each usable only where it can act."""
    shown = max(_shown(count), rows_in_use(*values))
    rows = [gr.update(visible=number <= shown) for number in range(1, MAX_PEOPLE + 1)]
    return [shown, *rows, gr.update(interactive=shown < MAX_PEOPLE), gr.update(interactive=shown > 1)]


def add_person(count: float | None) -> int:
    """One row more, up to :data:`MAX_PEOPLE`."""
    return min(_shown(count) + 1, MAX_PEOPLE)


def remove_person(count: float | None) -> list[Any]:
    """One row less: the count, then every row input, the last shown row's reset to empty
    (a hidden row must not still take part) and the others left as they are."""
    shown = _shown(count)
    if shown == 1:
        return [shown, *(gr.update() for _ in range(MAX_PEOPLE * len(PERSON_INPUTS)))]
    updates = []
    for number in range(1, MAX_PEOPLE + 1):
        cleared = number == shown
        updates += [gr.update(value=ROW_DEFAULTS[name]) if cleared else gr.update() for name in PERSON_INPUTS]
    return [shown - 1, *updates]


@dataclass(frozen=True)
class RowReader:
    """An ``infotext_fields`` entry for one person-row input (or, as "shown", the row count).

    Reads the "InstantID people" entry: a pasted run with three people shows three rows with
    their saved identities, regions and weights (photos are never in infotext). Without the
    entry, a pasted InstantID run empties the rows; without "InstantID", nothing is touched.
    """

    number: int
    name: str
    env: UiEnv | None = field(default=None, compare=False, repr=False)

    def __call__(self, params: Mapping[str, Any]) -> Any:
        if INFOTEXT_PREFIX not in params:
            return None
        people = InstantIDArgs.people_from_infotext(params)
        if self.name == "shown":
            return max(len(people), PEOPLE_AT_START)
        person = people[self.number - 1] if self.number <= len(people) else {}
        if self.name not in person:
            return ROW_DEFAULTS[self.name]
        value = person[self.name]
        if self.name == "identity":
            names = self.env.identity_names() if self.env is not None else [value]
            return (known_name(value, names) if value else None) or NO_IDENTITY
        if self.name == "region":
            return next(label for label, region in REGION_CHOICES if region == value)
        if self.name == "box":
            return ", ".join(f"{v:g}" for v in value)
        return value


def _person_row(p: Panel, number: int) -> tuple[Any, list[Any]]:
    """One person's row and its inputs, in :data:`PERSON_INPUTS` order."""
    pid = functools.partial(lambda n, name: p.eid(f"person{n}_{name}"), number)
    with gr.Column(visible=number <= PEOPLE_AT_START, elem_id=pid("row")) as row:
        with gr.Row():
            images = p.photos(f"Person {number}: photo(s)", f"person{number}_images")
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
        with gr.Row():
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
    return row, [images, identity, region, box, mask, *weights]


def people_section(p: Panel) -> None:
    """Rows of people, the ``people`` argument they fill, and the regions preview (folded)."""
    with gr.Accordion("Several people", open=False, elem_id=p.eid("people_accordion")):
        gr.Markdown(PEOPLE_HINT, elem_id=p.eid("people_hint"))
        rows, row_inputs = zip(*(_person_row(p, number) for number in range(1, MAX_PEOPLE + 1)), strict=True)
        inputs = [component for components in row_inputs for component in components]
        p.args["people"] = gr.State([])
        count = gr.Number(value=PEOPLE_AT_START, precision=0, visible=False, elem_id=p.eid("people_shown"))
        with gr.Row():
            add = gr.Button("➕ Add person", size="sm", elem_id=p.eid("people_add"))
            remove = gr.Button(
                "➖ Remove person", size="sm", interactive=False, elem_id=p.eid("people_remove")
            )
            button = gr.Button("Preview people", elem_id=p.eid("people_preview"))
            size = p.size_inputs("people")
        picture = p.picture("Regions and keypoints on the output canvas", "people_picture")
        message = gr.Markdown("", elem_id=p.eid("people_message"))
    for component in inputs:
        component.change(
            gather_people, inputs=[count, *inputs], outputs=[p.args["people"], count], queue=False
        )
    count.change(show_rows, inputs=[count, *inputs], outputs=[count, *rows, add, remove], queue=False)
    add.click(add_person, inputs=[count], outputs=[count], queue=False)
    remove.click(remove_person, inputs=[count], outputs=[count, *inputs], queue=False)
    p.parts["people_preview"] = (button, list(size), [picture, message])
    p.parts["row_fields"] = [(count, RowReader(0, "shown"))] + [
        (component, RowReader(number, name, p.env))
        for number, components in enumerate(row_inputs, start=1)
        for name, component in zip(PERSON_INPUTS, components, strict=True)
        if name not in ("images", "mask")
    ]


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
