"""What the panel takes from the host (:class:`UiEnv`) and what it gives back (:class:`UiResult`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
    infotext_fields: list[tuple[Any, Any]] = field(default_factory=list)
    #: ``Script.paste_field_names``: the readers whose components "Send to img2img" copies.
    paste_field_names: list[Any] = field(default_factory=list)
    #: More ``infotext_fields`` for inputs that are not arguments (the person rows): pasting a
    #: run with several people fills and shows its rows.
    row_fields: list[tuple[Any, Any]] = field(default_factory=list)


def elem_id(tab: str, name: str) -> str:
    """The one place element ids are made: ``instantid_<tab>_<name>``, tab txt2img or img2img."""
    return f"instantid_{tab}_{name}"
