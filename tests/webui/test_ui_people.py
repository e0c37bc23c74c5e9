"""The compact "Several people" section: one row at first, more on request, pasted rows shown.

Every person row exists from the start (the script's arguments never change); only whether
it is shown changes. Skipped where gradio is not installed.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

gr = pytest.importorskip("gradio")

from instantid_ext.args import ARG_FIELDS  # noqa: E402
from instantid_ext.errors import InvalidInputError  # noqa: E402
from instantid_ext.webui import ui  # noqa: E402
from instantid_ext.webui.ui import people  # noqa: E402
from tests.webui.test_ui import build, by_elem_id, dependency  # noqa: E402

ROW_WIDTH = len(ui.PERSON_INPUTS)
EMPTY_ROW = (None, "None", 0, "", None, 0.8, 0.8)  # as the handlers receive it (region as index)
THREE_PEOPLE = {
    "InstantID": "on",
    "InstantID people": "1: identity:Alice left 0.9/0.8; 2: images:1a2b3c right 0.6/0.5; "
    "3: identity:Carol box(0.1 0.2 0.5 0.9) 0.7/0.8",
    "Steps": "20",
}


def rows(demo: Any, tab: str = "txt2img") -> list[Any]:
    blocks = by_elem_id(demo)
    return [blocks[ui.elem_id(tab, f"person{n}_row")] for n in range(1, ui.MAX_PEOPLE + 1)]


def visible_components(section: Any) -> list[Any]:
    """The inputs and buttons a browser draws in ``section``, in page order."""
    drawn, stack = [], list(reversed(section.children))
    while stack:
        block = stack.pop()
        if getattr(block, "visible", True) is not False:
            drawn += [block] if isinstance(block, gr.components.IOComponent | gr.Button) else []
            stack += reversed(getattr(block, "children", []))
    return [block for block in drawn if not isinstance(block, gr.State)]


def test_one_row_is_shown_at_first_and_every_input_exists() -> None:
    result, demo, _ = build()
    blocks = by_elem_id(demo)
    assert [row.visible for row in rows(demo)] == [True, False, False, False]
    for number in range(1, ui.MAX_PEOPLE + 1):
        for name in ui.PERSON_INPUTS:
            assert ui.elem_id("txt2img", f"person{number}_{name}") in blocks
    assert blocks["instantid_txt2img_people_shown"].value == 1
    assert blocks["instantid_txt2img_people_add"].interactive is not False
    assert blocks["instantid_txt2img_people_remove"].interactive is False
    # The arguments are as before: the rows are not arguments, the people State is.
    assert len(result.components) == len(ARG_FIELDS)
    assert isinstance(result.components[ARG_FIELDS.index("people")], gr.State)


def test_the_people_section_draws_one_row_of_inputs() -> None:
    """What the browser draws in the section at first: one person's inputs, not four."""
    _, demo, _ = build()
    section = by_elem_id(demo)["instantid_txt2img_people_accordion"]
    drawn = visible_components(section)
    person_inputs = [c for c in drawn if "_person" in (c.elem_id or "")]
    assert {c.elem_id.split("_")[2] for c in person_inputs} == {"person1"}
    # files, identity, region and two sliders (the box and mask wait for their region)
    assert len(person_inputs) == 5
    others = [
        (c.elem_id or type(c).__name__).removeprefix("instantid_txt2img_")
        for c in drawn
        if c not in person_inputs
    ]
    assert others == [
        "people_hint",
        "people_add",
        "people_remove",
        "people_preview",
        "people_message",
    ]  # the regions picture waits, hidden, for the first preview


def test_every_folded_section_starts_closed() -> None:
    _, demo, _ = build()
    accordions = [b for b in demo.blocks.values() if isinstance(b, gr.Accordion)]
    assert len(accordions) >= 6
    assert all(accordion.open is False for accordion in accordions)


def test_add_shows_the_next_row_up_to_four() -> None:
    _, demo, _ = build()
    blocks = by_elem_id(demo)
    count = blocks["instantid_txt2img_people_shown"]
    dep, add = dependency(demo, blocks["instantid_txt2img_people_add"], "click")
    assert dep["inputs"] == dep["outputs"] == [count._id]
    assert [add(n) for n in (1, 2, 3, 4)] == [2, 3, 4, 4]

    dep, show = dependency(demo, count, "change")
    assert dep["outputs"] == [
        count._id,
        *(row._id for row in rows(demo)),
        blocks["instantid_txt2img_people_add"]._id,
        blocks["instantid_txt2img_people_remove"]._id,
    ]
    shown, *updates = show(3, *EMPTY_ROW * 4)
    assert shown == 3
    assert [u["visible"] for u in updates[:4]] == [True, True, True, False]
    assert [u["interactive"] for u in updates[4:]] == [True, True]
    shown, *updates = show(4, *EMPTY_ROW * 4)
    assert [u["visible"] for u in updates[:4]] == [True] * 4
    assert [u["interactive"] for u in updates[4:]] == [False, True]
    assert [u["interactive"] for u in show(1, *EMPTY_ROW * 4)[5:]] == [True, False]


def test_a_row_holding_a_value_is_never_hidden() -> None:
    """A paste that asks for fewer rows, while a row further down still holds photos."""
    with_photos = ([b"photo"], "None", 0, "", None, 0.8, 0.8)
    shown, *updates = people.show_rows(1, *EMPTY_ROW, *with_photos, *EMPTY_ROW, *EMPTY_ROW)
    assert shown == 2
    assert [u["visible"] for u in updates[:4]] == [True, True, False, False]


def test_remove_empties_and_hides_the_last_row() -> None:
    _, demo, _ = build()
    blocks = by_elem_id(demo)
    dep, remove = dependency(demo, blocks["instantid_txt2img_people_remove"], "click")
    person_ids = [
        blocks[ui.elem_id("txt2img", f"person{n}_{name}")]._id
        for n in range(1, ui.MAX_PEOPLE + 1)
        for name in ui.PERSON_INPUTS
    ]
    assert dep["outputs"] == [blocks["instantid_txt2img_people_shown"]._id, *person_ids]

    count, *updates = remove(3)
    assert count == 2
    assert len(updates) == ui.MAX_PEOPLE * ROW_WIDTH
    third = updates[2 * ROW_WIDTH : 3 * ROW_WIDTH]
    assert [u["value"] for u in third] == [None, "None", ui.REGION_CHOICES[0][0], "", None, 0.8, 0.8]
    others = updates[: 2 * ROW_WIDTH] + updates[3 * ROW_WIDTH :]
    assert all("value" not in u for u in others)  # untouched
    count, *updates = remove(1)  # the first row stays
    assert count == 1 and all("value" not in u for u in updates)


def test_a_row_that_gets_a_value_is_shown_with_the_rows_above() -> None:
    _, demo, _ = build()
    blocks = by_elem_id(demo)
    identity3 = blocks["instantid_txt2img_person3_identity"]
    dep, gather = dependency(demo, identity3, "change")
    assert dep["outputs"][1] == blocks["instantid_txt2img_people_shown"]._id
    third = (None, "Carol", 2, "", None, 0.8, 0.8)  # a saved identity, on the right
    value, count = gather(1, *EMPTY_ROW, *EMPTY_ROW, *third, *EMPTY_ROW)
    assert count == 3
    assert value == [
        {"images": [], "identity": "Carol", "region": "right", "id_weight": 0.8, "control_weight": 0.8}
    ]
    assert gather(2, *EMPTY_ROW * 4)[1] == 2  # rows the user added stay
    weight_only = (None, "None", 0, "", None, 0.8, 1.2)
    assert gather(1, *EMPTY_ROW, *weight_only, *EMPTY_ROW, *EMPTY_ROW)[1] == 2
    assert people.rows_in_use(*EMPTY_ROW * 4) == 0


def test_pasting_a_three_person_run_fills_and_shows_rows_one_to_three() -> None:
    result, demo, fake = build()
    fake.identities = ["alice", "Bob"]
    readers = {comp.elem_id: reader for comp, reader in result.row_fields}
    assert readers["instantid_txt2img_people_shown"](THREE_PEOPLE) == 3

    pasted = {elem: reader(THREE_PEOPLE) for elem, reader in readers.items()}
    assert pasted["instantid_txt2img_person1_identity"] == "alice"  # as the saved identity is spelled
    assert pasted["instantid_txt2img_person1_region"] == "Left"
    assert pasted["instantid_txt2img_person1_id_weight"] == 0.9
    assert pasted["instantid_txt2img_person2_identity"] == "None"  # photos: to upload again
    assert pasted["instantid_txt2img_person2_region"] == "Right"
    assert pasted["instantid_txt2img_person2_control_weight"] == 0.5
    assert pasted["instantid_txt2img_person3_identity"] == "None"  # not saved on this install
    assert pasted["instantid_txt2img_person3_region"] == "Box"
    assert pasted["instantid_txt2img_person3_box"] == "0.1, 0.2, 0.5, 0.9"
    assert pasted["instantid_txt2img_person4_region"] == ui.REGION_CHOICES[0][0]
    assert pasted["instantid_txt2img_person4_id_weight"] == 0.8

    # The count the paste sets shows rows 1-3 (its change event).
    _, show = dependency(demo, by_elem_id(demo)["instantid_txt2img_people_shown"], "change")
    assert [u["visible"] for u in show(3, *EMPTY_ROW * 4)[1:5]] == [True, True, True, False]


def test_pasting_other_runs_leaves_or_empties_the_rows() -> None:
    result, _, _ = build()
    single = {"InstantID": "on", "InstantID ID weight": "0.6"}
    for comp, reader in result.row_fields:
        assert reader({"Steps": "20"}) is None  # not an InstantID run: untouched
        expected = 1 if comp.elem_id.endswith("people_shown") else comp.value
        assert reader(single) == expected, comp.elem_id  # one person: the rows are emptied
    # The rows are not arguments and are not copied by "Send to img2img".
    row_components = {id(comp) for comp, _ in result.row_fields}
    assert not row_components & {id(comp) for comp, _ in result.infotext_fields}


def test_the_script_pastes_the_rows_too(host) -> None:
    script = host.InstantIDScript()
    with gr.Blocks():
        components = script.ui(False)
    assert len(components) == len(ARG_FIELDS)
    # The script module is imported afresh for the stand-in host: tell the readers by component.
    rows = [
        reader
        for comp, reader in script.infotext_fields
        if "_person" in (comp.elem_id or "") or (comp.elem_id or "").endswith("people_shown")
    ]
    assert len(rows) == 1 + ui.MAX_PEOPLE * 5  # the count, then identity to strengths of each row
    assert [reader.name for reader in rows[1:6]] == [
        "identity",
        "region",
        "box",
        "id_weight",
        "control_weight",
    ]
    assert all(reader not in script.paste_field_names for reader in rows)


def test_the_regions_picture_is_shown_only_while_it_holds_a_preview() -> None:
    drawn = np.zeros((4, 4, 3), np.uint8)
    env = SimpleNamespace(people_preview=lambda *values: (drawn, "2 people."))
    picture, message = people.run_people_preview(env, [], "auto", None, "None", "Crop and Resize", 256, 256)
    assert picture["value"] is drawn and picture["visible"] is True and message == "2 people."

    def refused(*values: Any) -> Any:
        raise InvalidInputError("Fill two rows.")

    env.people_preview = refused
    picture, message = people.run_people_preview(env, [], "auto", None, "None", "Crop and Resize", 256, 256)
    assert picture["visible"] is False and message == "⚠ Fill two rows."
