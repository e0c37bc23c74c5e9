"""How choice arguments may be spelled: the one place that turns free spellings into choices.

The UI sends labels ("Highest score", "None"), API callers write what they like ("pose-image",
"ON", "auto"): each reader here maps such a spelling onto the listed value, and leaves anything
unreadable as it is, so that the model's own check names the valid choices.
"""

from __future__ import annotations

import re
from typing import Literal

from ..errors import InvalidInputError
from ..faces.identity import check_identity_name
from ..method.keypoints import ResizeMode
from ..method.pose_presets import get_preset
from ..models.discovery import AUTO

FaceChoice = Literal["largest", "index", "highest_score"]
PoseSource = Literal["auto", "reference", "pose_image", "init_image", "preset", "none"]
FacePassFaces = Literal["largest", "all", "index"]
RegionKind = Literal["auto", "left", "right", "top", "bottom", "box", "mask"]
ResizeModeName = Literal["Crop and Resize", "Resize and Fill", "Just Resize"]

#: Other names accepted on input (API dicts, JSON), by the field they set.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "images": ("image",),
    "id_weight": ("weight", "ip_weight", "ip_adapter_scale"),
    "control_weight": ("controlnet_conditioning_scale", "identitynet_weight"),
}
#: Alias → the field it sets.
ALIASES: dict[str, str] = {alias: name for name, aliases in FIELD_ALIASES.items() for alias in aliases}

#: Spellings of "no identity" a dropdown may send (A1111 dropdowns use "None").
NO_IDENTITY_SPELLINGS = ("", "none")
#: A model name is shown in the UI and written into infotext: one printable line.
MAX_MODEL_NAME = 255
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_TRUE = ("on", "true", "yes", "1", "enabled")
_FALSE = ("off", "false", "no", "0", "disabled")


def spell_choice(value: object) -> object:
    """'Highest score', 'pose-image' and 'None' mean 'highest_score', 'pose_image' and 'none'."""
    if isinstance(value, str):
        return "_".join(value.strip().lower().replace("-", " ").split())
    return value


def spell_lower(value: object) -> object:
    """Choices that are single words: any case, surrounding spaces ignored."""
    return value.strip().lower() if isinstance(value, str) else value


def read_bool(value: object) -> bool | None:
    """'on'/'off', 'true'/'false', 'yes'/'no', '1'/'0' (any case); None when it is none of them."""
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def is_no_identity(value: object) -> bool:
    """Whether a text stands for "no saved identity" ("", "None")."""
    return isinstance(value, str) and value.strip().lower() in NO_IDENTITY_SPELLINGS


def spell_identity(value: object) -> object:
    """A saved identity's name as a file name allows it; "None" and "" mean no identity."""
    if not isinstance(value, str):
        return value
    if is_no_identity(value):
        return ""
    try:
        return check_identity_name(value)
    except InvalidInputError as err:  # pydantic only collects ValueError/TypeError
        raise ValueError(str(err)) from err


def spell_resize_mode(value: object) -> object:
    """Any case, A1111's img2img 0-3 and ControlNet's names, as :class:`ResizeMode` reads them."""
    try:
        return ResizeMode.parse(value).value  # type: ignore[arg-type]
    except InvalidInputError:
        return value  # the Literal check explains the choices


def spell_preset(value: object) -> object:
    """Any spelling pose_presets accepts, stored as the preset's key."""
    if not isinstance(value, str):
        return value
    try:
        return get_preset(value).name
    except InvalidInputError as err:
        raise ValueError(str(err)) from err


def spell_model_name(value: object) -> object:
    """'' and any case of 'Auto' mean Auto; other names must be one printable line."""
    if not isinstance(value, str):
        return value
    name = value.strip()
    if not name or name.lower() == AUTO.lower():
        return AUTO
    if len(name) > MAX_MODEL_NAME or _CONTROL_CHARS.search(name):
        msg = f"must be a model file name of at most {MAX_MODEL_NAME} printable characters"
        raise ValueError(msg)
    return name
