"""The InstantID panel in txt2img and img2img (gradio 3.41, as shipped with A1111 1.6–1.10).

:func:`build_ui` is called by ``Script.ui`` once per tab, and again twice per tab by the
WebUI's API inside a throwaway ``gr.Blocks``; it therefore only creates components and wires
their events. Everything it needs from the host comes in a :class:`UiEnv`, so this package
imports neither the script nor the model store, and the tests can build it with gradio alone.

The returned components are the script's arguments: one per field of
:class:`~instantid_ext.args.InstantIDArgs`, in :data:`~instantid_ext.args.ARG_FIELDS` order,
each holding a value that :meth:`InstantIDArgs.parse` reads positionally.
"""

from __future__ import annotations

import gradio as gr

from ...args import ARG_FIELDS
from .env import UiEnv, UiResult
from .people import people_section, wire_people_preview
from .sections import (
    advanced_section,
    face_pass_section,
    pose_section,
    preview_section,
    reference_section,
    save_identity_section,
    wire_preview,
)
from .values import InfotextReader, default_value
from .widgets import Panel, host_components

#: Arguments the infotext never holds: photos, and the people (their rows have their own readers).
_NOT_IN_INFOTEXT = ("images", "people")


def build_ui(is_img2img: bool, env: UiEnv) -> UiResult:
    """Create the panel's components; return them in ARG_FIELDS order with the infotext wiring.

    Side-effect free apart from creating components and their events: it calls only the
    ``*_names`` and ``controlnet_status`` callables of ``env``.
    """
    input_accordion, tool_button = host_components()
    p = Panel("img2img" if is_img2img else "txt2img", env, tool_button)
    if input_accordion is not None:
        accordion = p.args["enabled"] = input_accordion(False, label="InstantID", elem_id=p.eid("accordion"))
    else:  # hosts without InputAccordion: a plain accordion with the toggle inside
        accordion = gr.Accordion("InstantID", open=False, elem_id=p.eid("accordion"))
    with accordion:
        if input_accordion is None:
            p.args["enabled"] = gr.Checkbox(
                value=default_value("enabled"), label="Enable InstantID", elem_id=p.eid("accordion-checkbox")
            )
        for section in (
            reference_section,
            pose_section,
            preview_section,
            advanced_section,
            face_pass_section,
            people_section,
            save_identity_section,
        ):
            section(p)
    wire_preview(p)
    wire_people_preview(p)

    components = [p.args[name] for name in ARG_FIELDS]
    infotext_fields = [
        (p.args[name], InfotextReader(name, env)) for name in ARG_FIELDS if name not in _NOT_IN_INFOTEXT
    ]
    return UiResult(
        components=components,
        infotext_fields=infotext_fields,
        paste_field_names=[reader for _, reader in infotext_fields],
        row_fields=p.parts["row_fields"],
    )
