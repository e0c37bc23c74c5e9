"""The panel's event handlers: plain functions of component values, so tests call them directly.

Each returns component values or ``gr.update`` dicts; the ones that need the host take the
:class:`UiEnv` first (bound with ``functools.partial`` when the event is wired).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import gradio as gr
import numpy as np

from ...errors import InstantIDError
from ...images import decode_image
from ...models.discovery import AUTO
from .env import UiEnv
from .values import NO_IDENTITY, with_auto

logger = logging.getLogger(__name__)

#: Output size the previews assume when they cannot read the tab's width/height sliders.
DEFAULT_PREVIEW_SIZE = 1024
#: Longest side of the reference thumbnails shown beside the upload.
THUMBNAIL_SIZE = 256
#: The pose edits, which redraw the keypoint preview as they change.
POSE_EDITS = ("pose_preset", "pose_mirror", "pose_rotate", "pose_scale", "pose_offset_x", "pose_offset_y")
#: The panel values the keypoint preview is drawn from, in the order the preview event sends them.
PREVIEW_FIELDS = (
    *("images", "pose_image", "pose_source", "face_choice", "face_index", "resize_mode"),
    *POSE_EDITS,
    *("pose_face_choice", "pose_face_index"),
)

# The previews want the output size the user will generate at. A script's ui() cannot reach
# the tab's width/height sliders, so this runs in the browser before the handler and swaps
# the two hidden size inputs (the last two inputs) for the sliders' values.
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


def size_from_tab_js(tab: str, input_count: int) -> str:
    """The browser-side step for an event whose last two of ``input_count`` inputs are the size."""
    return _SIZE_FROM_TAB_JS.replace("__COUNT__", str(input_count)).replace("__TAB__", tab)


def output_size(width: float | None, height: float | None) -> tuple[int, int]:
    """The size the hidden inputs carry, or the default where the browser found none."""
    return int(width or DEFAULT_PREVIEW_SIZE), int(height or DEFAULT_PREVIEW_SIZE)


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
    """A face number box, shown when its choice is "index"."""
    return gr.update(visible=face_choice == "index")


def status_text(env: UiEnv) -> str:
    """The ControlNet line under the hint: ✓ with the version, or ⚠ with how to install it."""
    ok, message = env.controlnet_status()
    return f"{'✓' if ok else '⚠'} {message}"


def picture_update(image: np.ndarray | None) -> dict[str, Any]:
    """A preview picture, shown only while it has something to show (an empty one is a large
    blank box)."""
    return gr.update(value=image, visible=image is not None)


def run_preview(env: UiEnv, *values: Any) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Show which face is used and the keypoint hint at the output size.

    ``values`` are the :data:`PREVIEW_FIELDS` in order, then the output width and height.
    """
    *fields, width, height = values
    named = dict(zip(PREVIEW_FIELDS, fields, strict=True))
    for name in ("face_index", "pose_face_index"):
        named[name] = int(named[name] or 0)
    try:
        annotated, keypoints, message = env.preview(named, *output_size(width, height))
    except InstantIDError as err:
        annotated, keypoints, message = None, None, f"⚠ {err}"
    return picture_update(annotated), picture_update(keypoints), message


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
    adapters = with_auto(env.adapter_names())
    identitynets = with_auto(env.identitynet_names())
    return (
        gr.update(choices=adapters, value=adapter if adapter in adapters else AUTO),
        gr.update(choices=identitynets, value=identitynet if identitynet in identitynets else AUTO),
        status_text(env),
    )
