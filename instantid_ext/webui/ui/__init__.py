"""The InstantID panel: built by :func:`build_ui` from small section builders.

* :mod:`.panel`: :func:`build_ui`, the sections in order and the returned arguments;
* :mod:`.sections` and :mod:`.people`: one builder per section;
* :mod:`.widgets`: components made from the args model (ranges, defaults, ids);
* :mod:`.handlers`: the event handlers; :mod:`.values`: field values ↔ component values;
* :mod:`.env`: what the host gives (:class:`UiEnv`) and gets back (:class:`UiResult`).
"""

from .env import UiEnv, UiResult, elem_id
from .handlers import (
    DEFAULT_PREVIEW_SIZE,
    PREVIEW_FIELDS,
    THUMBNAIL_SIZE,
    reference_thumbnails,
    refresh_identities,
    refresh_models,
    run_preview,
    save_identity,
    show_face_index,
    show_pose_inputs,
    status_text,
)
from .panel import build_ui
from .people import MAX_PEOPLE, PERSON_INPUTS, REGION_CHOICES, people_value, run_people_preview
from .values import NO_IDENTITY, InfotextReader, default_value, ui_value
from .widgets import field_slider

__all__ = [
    "DEFAULT_PREVIEW_SIZE",
    "MAX_PEOPLE",
    "NO_IDENTITY",
    "PERSON_INPUTS",
    "PREVIEW_FIELDS",
    "REGION_CHOICES",
    "THUMBNAIL_SIZE",
    "InfotextReader",
    "UiEnv",
    "UiResult",
    "build_ui",
    "default_value",
    "elem_id",
    "field_slider",
    "people_value",
    "reference_thumbnails",
    "refresh_identities",
    "refresh_models",
    "run_people_preview",
    "run_preview",
    "save_identity",
    "show_face_index",
    "show_pose_inputs",
    "status_text",
    "ui_value",
]
