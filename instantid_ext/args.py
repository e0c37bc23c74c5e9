"""InstantID's arguments: one pydantic model for the UI, the API and the PNG infotext.

The WebUI hands a script its arguments in several shapes: the UI's positional control values,
the API's ``{"args": [{...}]}`` (which A1111 puts in the first slot and pads with the UI
defaults), a JSON string from a textbox, a pasted infotext. :meth:`InstantIDArgs.parse` turns
each into one validated :class:`InstantIDArgs`, and every problem into one
:class:`InvalidInputError` sentence per field, so the WebUI glue can show it as-is.

The pydantic v1 API is used on purpose: A1111 ships pydantic 1.10, and pydantic 2 keeps the
v1 API as ``pydantic.v1``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from .errors import InvalidInputError
from .faces.identity import check_identity_name
from .images import MAX_REFERENCE_IMAGES, decode_image, encode_image_png_base64
from .method.keypoints import ResizeMode
from .method.pose_presets import get_preset
from .models.discovery import AUTO

try:
    from pydantic.v1 import BaseModel, Extra, Field, ValidationError, root_validator, validator
except ImportError:  # pydantic < 1.10.17 has no v1 alias
    from pydantic import BaseModel, Extra, Field, ValidationError, root_validator, validator  # type: ignore[assignment, no-redef]

__all__ = [
    "ALIASES",
    "ARG_FIELDS",
    "INFOTEXT_PREFIX",
    "InstantIDArgs",
    "is_enabled",
]

FaceChoice = Literal["largest", "index", "highest_score"]
PoseSource = Literal["auto", "reference", "pose_image", "init_image", "preset", "none"]
FacePassFaces = Literal["largest", "all", "index"]
RegionKind = Literal["auto", "left", "right", "top", "bottom", "box", "mask"]
ResizeModeName = Literal["Crop and Resize", "Resize and Fill", "Just Resize"]

INFOTEXT_PREFIX = "InstantID"

#: Other names accepted on input (API dicts, JSON), mapped to the field they set.
ALIASES: dict[str, str] = {
    "image": "images",
    "weight": "id_weight",
    "ip_weight": "id_weight",
    "ip_adapter_scale": "id_weight",
    "controlnet_conditioning_scale": "control_weight",
    "identitynet_weight": "control_weight",
}

#: A model name is shown in the UI and written into infotext: one printable line.
_MAX_MODEL_NAME = 255
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
#: Spellings of "no identity" a dropdown may send (A1111 dropdowns use "None").
_NO_IDENTITY = ("", "none")
#: Digits kept in infotext: gradio sliders deliver 0.35000000000000003 for 0.35.
_INFOTEXT_DIGITS = 6


if TYPE_CHECKING:
    ReferenceImage = Image.Image
else:

    class ReferenceImage:
        """Pydantic type for an image argument: any form :func:`decode_image` reads, stored as PIL RGB.

        The JSON schema calls it a base64 string, the form API callers should use.
        """

        @classmethod
        def __get_validators__(cls) -> Iterable[Any]:
            yield cls.validate

        @classmethod
        def validate(cls, value: object) -> Image.Image:
            try:
                return decode_image(value)
            except InvalidInputError as err:  # pydantic only collects ValueError/TypeError
                raise ValueError(str(err)) from err

        @classmethod
        def __modify_schema__(cls, field_schema: dict[str, Any]) -> None:
            field_schema.update(type="string", format="base64")


# --- value readers shared by InstantIDArgs and Person -----------------------------------------


def _image_list(value: object) -> object:
    """A single image is a one-image list; a gallery value is already a list."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        if len(value) > MAX_REFERENCE_IMAGES:
            msg = (
                f"takes at most {MAX_REFERENCE_IMAGES} photos, got {len(value)}: a few clear photos of "
                "the face give the identity; more add nothing"
            )
            raise ValueError(msg)
        return list(value)
    return [value]


def _weight_list(value: object) -> object:
    """The UI sends weights as text ("1, 0.5"); one number is a one-item list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part for part in re.split(r"[\s,;]+", value.strip()) if part]
    if isinstance(value, int | float):
        return [value]
    return value


def _usable_weights(value: list[float]) -> list[float]:
    for i, weight in enumerate(value):
        if not math.isfinite(weight) or weight < 0:
            msg = f"weight #{i} must be a number of 0 or more (got {weight!r})"
            raise ValueError(msg)
    if value and not any(value):
        msg = f"the weights must not all be 0 (got {_format_floats(value)})"
        raise ValueError(msg)
    return value


def _identity_value(value: object) -> object:
    if not isinstance(value, str):
        return value
    if value.strip().lower() in _NO_IDENTITY:
        return ""
    try:
        return check_identity_name(value)
    except InvalidInputError as err:
        raise ValueError(str(err)) from err


# Validators as named functions: pydantic keys a field's validators by function name.
def _as_image_list(cls: type, value: object) -> object:
    return _image_list(value)


def _as_weight_list(cls: type, value: object) -> object:
    return _weight_list(value)


def _check_weights(cls: type, value: list[float]) -> list[float]:
    return _usable_weights(value)


def _as_identity(cls: type, value: object) -> object:
    return _identity_value(value)


def _as_lower(cls: type, value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


class Person(BaseModel):
    """One of several people in one image: who (photos or a saved identity), where, how strongly.

    Regions (see :mod:`instantid_ext.method.regions`): ``auto`` (a face of the pose image, or of the
    img2img init image; ``region_face`` picks which, else the next from the left), ``left`` /
    ``right`` / ``top`` / ``bottom`` (bands), ``box`` (``box`` = x1, y1, x2, y2 as fractions
    of the output) or ``mask`` (an uploaded mask image).
    """

    images: list[ReferenceImage] = Field(default_factory=list, description="Photos of this person.")
    image_weights: list[float] = Field(default_factory=list, description="One weight per photo.")
    identity: str = Field("", description="A saved identity instead of photos.")
    face_index: int | None = Field(
        None, ge=0, le=31, description="Which face of the first photo (left to right); None: the largest."
    )
    region: RegionKind = Field("auto", description="Where this person goes.")
    box: list[float] = Field(default_factory=list, description="With region 'box': x1, y1, x2, y2 in 0…1.")
    mask: ReferenceImage | None = Field(None, description="With region 'mask': white where this person goes.")
    region_face: int | None = Field(
        None, ge=0, le=31, description="With region 'auto': the pose/init image's face (0 = leftmost)."
    )
    id_weight: float = Field(0.8, ge=0, le=2, description="This person's face token strength.")
    control_weight: float = Field(0.8, ge=0, le=2, description="This person's IdentityNet strength.")

    class Config:
        extra = Extra.forbid

    _images_as_list = validator("images", pre=True, allow_reuse=True)(_as_image_list)
    _weights_as_list = validator("image_weights", pre=True, allow_reuse=True)(_as_weight_list)
    _weights_usable = validator("image_weights", allow_reuse=True)(_check_weights)
    _identity_name = validator("identity", pre=True, allow_reuse=True)(_as_identity)
    _region_spelling = validator("region", pre=True, allow_reuse=True)(_as_lower)

    @validator("box", pre=True)
    @classmethod
    def _box_values(cls, value: object) -> object:
        """ "0.1, 0.2, 0.5, 0.9" from a text box, or a list."""
        if value is None:
            return []
        if isinstance(value, str):
            return [part for part in re.split(r"[\s,;]+", value.strip()) if part]
        return value

    @root_validator(skip_on_failure=True)
    @classmethod
    def _complete(cls, values: dict[str, Any]) -> dict[str, Any]:
        problems = []
        if not values.get("images") and not values.get("identity"):
            problems.append("needs photos or a saved identity")
        weights, images = values.get("image_weights", []), values.get("images", [])
        if weights and len(weights) != len(images):
            problems.append(f"has {len(weights)} weight(s) for {len(images)} photo(s)")
        box = values.get("box", [])
        if values.get("region") == "box":
            ok = len(box) == 4 and all(0 <= v <= 1 for v in box) and box[0] < box[2] and box[1] < box[3]
            if not ok:
                problems.append(
                    "needs a box of four fractions x1, y1, x2, y2 with 0 ≤ x1 < x2 ≤ 1 and 0 ≤ y1 < y2 ≤ 1"
                )
        if values.get("region") == "mask" and values.get("mask") is None:
            problems.append("has the region 'mask' but no mask image")
        if problems:
            raise ValueError("; ".join(problems))
        return values

    def source_label(self) -> str:
        return f"identity '{self.identity}'" if self.identity else f"{len(self.images)} photo(s)"

    def __repr_args__(self) -> list[tuple[str | None, Any]]:
        return [
            (name, [_ImageRepr(i) for i in value] if name == "images" else value)
            for name, value in super().__repr_args__()
            if name != "mask"
        ]


class InstantIDArgs(BaseModel):
    """Everything one InstantID run needs; the field order is the UI's (and the positional API's).

    Input aliases (see :data:`ALIASES`): ``image`` → ``images``; ``weight``, ``ip_weight``,
    ``ip_adapter_scale`` → ``id_weight``; ``controlnet_conditioning_scale``,
    ``identitynet_weight`` → ``control_weight``. ``None`` for any field other than
    ``pose_image`` means its default (gradio checkboxes and dropdowns send ``None``).

    Checks that involve several fields (a reference face, a pose image, one weight per image,
    start ≤ end) run only when ``enabled``: a half-edited unit that is switched off must never
    block a generation.
    """

    enabled: bool = Field(False, description="Run InstantID; off by default as it runs on every request.")
    images: list[ReferenceImage] = Field(
        default_factory=list,
        description=(
            "Reference face photos as base64 PNG/JPEG/WebP (plain or data:image/...;base64, URLs); "
            "with several, their face embeddings are averaged. Alias: image."
        ),
    )
    image_weights: list[float] = Field(
        default_factory=list,
        description="Weight of each reference photo in the average (empty: equal; else one per image, ≥ 0).",
        infotext="image weights",
    )
    identity: str = Field(
        "",
        description="A saved identity to use instead of the photos (letters, digits, space, - _ .).",
        infotext="identity",
    )
    face_choice: FaceChoice = Field(
        "largest",
        description="Which face to use when a photo shows several.",
        infotext="face choice",
    )
    face_index: int = Field(
        0,
        ge=0,
        le=31,
        description="With face_choice 'index': faces counted left to right from 0.",
        infotext="face index",
    )
    pose_source: PoseSource = Field(
        "auto",
        description=(
            "Where the IdentityNet keypoints come from: 'auto' (img2img: the face in the init image, "
            "under the inpaint mask if there is one; txt2img: the reference face), 'reference', "
            "'pose_image', 'init_image' (img2img only), 'preset' (pose_preset) or 'none' (free pose)."
        ),
        infotext="pose",
    )
    pose_image: ReferenceImage | None = Field(
        None,
        description=(
            "Image (base64, as for images) whose face pose the output copies; "
            "needed when pose_source is 'pose_image'."
        ),
    )
    id_weight: float = Field(
        0.8,
        ge=0,
        le=2,
        description="Face token strength (IP-Adapter scale). Aliases: weight, ip_weight, ip_adapter_scale.",
        infotext="ID weight",
    )
    id_start: float = Field(
        0.0, ge=0, le=1, description="Fraction of steps before face tokens start.", infotext="ID range"
    )
    id_end: float = Field(
        1.0, ge=0, le=1, description="Fraction of steps after which face tokens stop.", infotext="ID range"
    )
    control_weight: float = Field(
        0.8,
        ge=0,
        le=2,
        description="IdentityNet strength. Aliases: controlnet_conditioning_scale, identitynet_weight.",
        infotext="IdentityNet weight",
    )
    control_start: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Fraction of steps before IdentityNet starts.",
        infotext="IdentityNet range",
    )
    control_end: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Fraction of steps after which IdentityNet stops.",
        infotext="IdentityNet range",
    )
    ip_adapter_model: str = Field(
        AUTO,
        description="Adapter file as listed by the model scan; 'Auto' = the first found.",
        infotext="adapter",
    )
    identitynet_model: str = Field(
        AUTO,
        description="IdentityNet as listed by the model scan; 'Auto' = the first found.",
        infotext="IdentityNet",
    )
    resize_mode: ResizeModeName = Field(
        "Crop and Resize",
        description="How the pose keypoints are fitted to the output size (as in img2img).",
        infotext="resize mode",
    )
    face_region_only: bool = Field(
        False,
        description="Apply face tokens and IdentityNet only inside the face box; the prompt rules the rest.",
        infotext="face region only",
    )
    pose_face_choice: FaceChoice = Field(
        "largest",
        description=(
            "Which face of the pose image or of the img2img init image gives the keypoints "
            "(with an inpaint mask, the face under the mask is used)."
        ),
        infotext="pose face choice",
    )
    pose_face_index: int = Field(
        0,
        ge=0,
        le=31,
        description="With pose_face_choice 'index': faces of the pose/init image, left to right from 0.",
        infotext="pose face index",
    )
    show_hint: bool = Field(
        False,
        description="Also return the keypoint image IdentityNet received, as an extra output image.",
    )
    pose_preset: str = Field(
        "front",
        description=(
            "With pose_source 'preset': front, three_quarter_left/right, profile_left/right, "
            "looking_up/down, tilted_left/right ('left' = towards the image's left)."
        ),
        infotext="pose preset",
    )
    pose_mirror: bool = Field(False, description="Mirror the keypoints left-right.", infotext="pose mirror")
    pose_rotate: float = Field(
        0.0,
        ge=-180,
        le=180,
        description="Rotate the keypoints (degrees, counter-clockwise).",
        infotext="pose rotate",
    )
    pose_scale: float = Field(
        1.0, ge=0.2, le=3, description="Scale the face's keypoints about their centre.", infotext="pose scale"
    )
    pose_offset_x: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="Move the keypoints right by this fraction of the width.",
        infotext="pose offset",
    )
    pose_offset_y: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="Move the keypoints down by this fraction of the height.",
        infotext="pose offset",
    )
    noise: float = Field(
        0.0,
        ge=0,
        le=1,
        description=(
            "Negative-embedding noise against burned images: the uncond face tokens come from "
            "noise × uniform random numbers (seeded by the image seed) instead of zeros. 0 = off."
        ),
        infotext="noise",
    )
    likeness: bool = Field(
        True,
        description="Score each output: cosine of its face's ArcFace embedding to the reference's.",
    )
    face_pass: bool = Field(
        False,
        description=(
            "After each image, detect its face(s), restyle each at its own resolution with InstantID "
            "(keypoints from the face itself) and paste it back."
        ),
        infotext="face pass",
    )
    face_pass_faces: FacePassFaces = Field(
        "largest", description="Which faces the face pass restyles.", infotext="face pass faces"
    )
    face_pass_index: int = Field(
        0,
        ge=0,
        le=31,
        description="With face_pass_faces 'index': left to right from 0.",
        infotext="face pass index",
    )
    face_pass_strength: float = Field(
        0.4, ge=0, le=1, description="Denoising strength of the face pass.", infotext="face pass strength"
    )
    face_pass_prompt: str = Field(
        "",
        description="Prompt for the face pass; empty = the image's own prompt.",
        infotext="face pass prompt",
    )
    face_pass_padding: int = Field(
        32,
        ge=0,
        le=512,
        description="Context around each face box, in pixels of the image.",
        infotext="face pass padding",
    )
    face_pass_resolution: int = Field(
        1024,
        ge=256,
        le=2048,
        description="Side of the square each face is restyled at.",
        infotext="face pass resolution",
    )
    people: list[Person] = Field(
        default_factory=list,
        description=(
            "Several people in one image (2 to 4): each with photos or a saved identity, a region and "
            "weights. When given, the single-person images/identity above are not used."
        ),
        max_items=4,
    )

    class Config:
        extra = Extra.forbid
        validate_assignment = True
        json_encoders = {Image.Image: encode_image_png_base64}  # noqa: RUF012 (pydantic reads it)

    # --- construction ---------------------------------------------------------------------

    def __init__(self, **data: Any) -> None:
        """Validate ``data``; raise :class:`InvalidInputError` naming every bad field."""
        data = _canonical(data)
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise InvalidInputError(_describe(err, data)) from err

    def __setattr__(self, name: str, value: Any) -> None:
        """Assignment validates like construction, and takes the same aliases."""
        name = ALIASES.get(name, name)
        if name not in self.__fields__:
            raise InvalidInputError(_unknown(name))
        if value is None and _has_default(name):
            value = self.__fields__[name].get_default()
        try:
            super().__setattr__(name, value)
        except ValidationError as err:
            raise InvalidInputError(_describe(err, {name: value})) from err

    @classmethod
    def parse(cls, value: object = None) -> InstantIDArgs:
        """Read the arguments in any form the WebUI delivers them.

        ``value`` may be an :class:`InstantIDArgs`; a dict (aliases allowed, ``{"args": [...]}``
        too); a JSON string of one; a list/tuple of UI values in :data:`ARG_FIELDS` order
        (shorter keeps the remaining defaults); a list/tuple whose first item is a dict (the
        API form, which A1111 pads with UI defaults: those are ignored); or ``None``/empty
        for the defaults.
        """
        found = _unwrap(value)
        if isinstance(found, InstantIDArgs):
            return found
        return cls(**found)

    # --- field validators -----------------------------------------------------------------

    _images_as_list = validator("images", pre=True, allow_reuse=True)(_as_image_list)
    _weights_as_list = validator("image_weights", pre=True, allow_reuse=True)(_as_weight_list)
    _weights_usable = validator("image_weights", allow_reuse=True)(_check_weights)
    _identity_name = validator("identity", pre=True, allow_reuse=True)(_as_identity)

    @validator("face_choice", "pose_source", "pose_face_choice", "face_pass_faces", pre=True)
    @classmethod
    def _choice_spelling(cls, value: object) -> object:
        """'Highest score', 'pose-image' and 'None' mean the listed choices."""
        if isinstance(value, str):
            return "_".join(value.strip().lower().replace("-", " ").split())
        return value

    @validator(
        "face_index",
        "pose_face_index",
        "face_pass_index",
        "face_pass_padding",
        "face_pass_resolution",
        pre=True,
    )
    @classmethod
    def _whole_number(cls, value: object) -> object:
        """Gradio sliders send 2.0 for 2; 2.5 is an error, not a silent 2."""
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                return value
        if isinstance(value, float):
            if not value.is_integer():
                msg = f"must be a whole number (got {value!r})"
                raise ValueError(msg)
            return int(value)
        return value

    @validator("resize_mode", pre=True)
    @classmethod
    def _resize_mode_spelling(cls, value: object) -> object:
        """Any case, A1111's img2img 0-3 and ControlNet's names, as :class:`ResizeMode` reads them."""
        try:
            return ResizeMode.parse(value).value  # type: ignore[arg-type]
        except InvalidInputError:
            return value  # the Literal check explains the choices

    @validator("pose_preset", pre=True)
    @classmethod
    def _preset_name(cls, value: object) -> object:
        """Any spelling pose_presets accepts, stored as the preset's key."""
        if not isinstance(value, str):
            return value
        try:
            return get_preset(value).name
        except InvalidInputError as err:
            raise ValueError(str(err)) from err

    @validator("face_pass_resolution")
    @classmethod
    def _multiple_of_eight(cls, value: int) -> int:
        if value % 8:
            msg = f"must be a multiple of 8 (got {value})"
            raise ValueError(msg)
        return value

    @validator("ip_adapter_model", "identitynet_model", pre=True)
    @classmethod
    def _model_name(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        name = value.strip()
        if not name or name.lower() == AUTO.lower():
            return AUTO
        if len(name) > _MAX_MODEL_NAME or _CONTROL_CHARS.search(name):
            msg = f"must be a model file name of at most {_MAX_MODEL_NAME} printable characters"
            raise ValueError(msg)
        return name

    @root_validator(skip_on_failure=True)
    @classmethod
    def _consistent_when_enabled(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The checks that need several fields; see the class docstring for why only when enabled."""
        if not values.get("enabled"):
            return values
        problems = []
        images, weights = values.get("images", []), values.get("image_weights", [])
        people = values.get("people", [])
        if len(people) == 1:
            problems.append(
                "InstantID argument 'people': give 2 to 4 people (got 1); for one person use images or "
                "identity"
            )
        if not images and not values.get("identity") and not people:
            problems.append(
                "InstantID is enabled but has no reference face: add a face photo or choose a saved identity"
            )
        if images and weights and len(weights) != len(images):
            problems.append(
                f"InstantID argument 'image_weights': {len(weights)} weight(s) for {len(images)} image(s); "
                "give one weight per image, or none for equal weights"
            )
        if values.get("pose_source") == "pose_image" and values.get("pose_image") is None:
            problems.append(
                "InstantID argument 'pose_image': pose_source is 'pose_image' but no pose image was given; "
                "add one or set pose_source to 'reference'"
            )
        for start, end in (("id_start", "id_end"), ("control_start", "control_end")):
            if values[start] > values[end]:
                problems.append(
                    f"InstantID argument '{start}' ({values[start]!r}) must not be greater than "
                    f"'{end}' ({values[end]!r})"
                )
        if problems:
            raise ValueError(". ".join(problems))
        return values

    # --- infotext -------------------------------------------------------------------------

    def to_infotext(self, extra: Mapping[str, object] | None = None) -> dict[str, str]:
        """The PNG-info entries for this run: ``{}`` when off, else "InstantID: on" plus non-defaults.

        Both model names are always written (their "Auto" resolves differently per install);
        ``extra`` (model hashes, a reference-image hash) is added with the prefix if missing.
        """
        if not self.enabled:
            return {}
        out = {INFOTEXT_PREFIX: "on"}
        defaults = _defaults()
        written: set[str] = set()
        for name, key in infotext_labels().items():
            if name == "enabled" or key in written:
                continue
            fields = _INFOTEXT_GROUPS.get(key, (name,))
            values = [getattr(self, f) for f in fields]
            always = name in ("ip_adapter_model", "identitynet_model")
            if always or any(
                _to_text(v) != _to_text(defaults[f]) for f, v in zip(fields, values, strict=True)
            ):
                out[key] = "-".join(_to_text(v) for v in values)
                written.add(key)
        for key, value in (extra or {}).items():
            label = key if key.startswith(INFOTEXT_PREFIX) else f"{INFOTEXT_PREFIX} {key}"
            out[label] = str(value)
        return out

    @classmethod
    def from_infotext(cls, params: Mapping[str, object]) -> dict[str, object]:
        """The field updates a pasted infotext asks for: only keys present, unreadable ones skipped."""
        updates: dict[str, object] = {}
        if INFOTEXT_PREFIX in params:
            enabled = _read_bool(params[INFOTEXT_PREFIX])
            if enabled is not None:
                updates["enabled"] = enabled
        seen: set[str] = set()
        for name, key in infotext_labels().items():
            if name == "enabled" or key in seen or key not in params:
                continue
            seen.add(key)
            text = str(params[key]).strip()
            fields = _INFOTEXT_GROUPS.get(key, (name,))
            if len(fields) == 2:
                pair = _split_range(text)
                if pair is None:
                    continue
                checked = [_check_field(f, v) for f, v in zip(fields, pair, strict=True)]
                ordered = not key.endswith(" range") or checked[0][1] <= checked[1][1]
                if all(ok for ok, _ in checked) and ordered:
                    updates.update({f: v for f, (_, v) in zip(fields, checked, strict=True)})
                continue
            ok, value = _check_field(name, text)
            if ok:
                updates[name] = value
        return updates

    # --- API and logs ---------------------------------------------------------------------

    @classmethod
    def schema_dict(cls) -> dict[str, Any]:
        """JSON schema of the API dict form (images as base64 strings), for ``/instantid/v1/schema``."""
        schema = json.loads(cls.schema_json())
        schema["description"] = (
            'Send as alwayson_scripts: {"InstantID": {"args": [ {...} ]}}. Aliases accepted on input: '
            + ", ".join(f"{alias} → {field}" for alias, field in ALIASES.items())
            + "."
        )
        return schema

    def summary(self) -> str:
        """One log line; images appear as sizes, never as data."""
        if not self.enabled:
            return "InstantID off"
        if self.identity:
            source = f"identity '{self.identity}'"
            if self.images:
                source += f" (ignoring {len(self.images)} image(s))"
        else:
            sizes = ", ".join(_image_size(img) for img in self.images)
            source = f"{len(self.images)} image(s) [{sizes}]"
            if self.image_weights:
                source += f" weighted {_format_floats(self.image_weights)}"
        face = f"face #{self.face_index}" if self.face_choice == "index" else f"face {self.face_choice}"
        pose = self.pose_source
        if self.pose_image is not None:
            pose += f" [{_image_size(self.pose_image)}]"
        return (
            f"InstantID on: {source}; {face}; pose {pose}; "
            f"ID {_to_text(self.id_weight)} @ {_to_text(self.id_start)}-{_to_text(self.id_end)}; "
            f"IdentityNet {_to_text(self.control_weight)} @ {_to_text(self.control_start)}-"
            f"{_to_text(self.control_end)}; adapter {self.ip_adapter_model}; IdentityNet model "
            f"{self.identitynet_model}; {self.resize_mode}"
            + ("; face region only" if self.face_region_only else "")
        )

    def __repr_args__(self) -> list[tuple[str | None, Any]]:
        """Images show as ``<image 512×512>`` so a repr never carries pixel data."""
        shown: list[tuple[str | None, Any]] = []
        for name, value in super().__repr_args__():
            if name == "images":
                value = [_ImageRepr(img) for img in value]
            elif name == "pose_image" and value is not None:
                value = _ImageRepr(value)
            shown.append((name, value))
        return shown


ARG_FIELDS: tuple[str, ...] = tuple(InstantIDArgs.__fields__)

#: Infotext keys that hold a start-end pair of two fields.
_INFOTEXT_GROUPS: dict[str, tuple[str, str]] = {
    f"{INFOTEXT_PREFIX} ID range": ("id_start", "id_end"),
    f"{INFOTEXT_PREFIX} IdentityNet range": ("control_start", "control_end"),
    f"{INFOTEXT_PREFIX} pose offset": ("pose_offset_x", "pose_offset_y"),
}


def infotext_labels() -> dict[str, str]:
    """Field name → infotext key, for the WebUI's ``infotext_fields``.

    ``enabled`` is the bare "InstantID" key. The two start/end pairs share one key each
    ("InstantID ID range: 0.0-1.0"): paste them with ``from_infotext(params).get(field)``.
    """
    labels = {"enabled": INFOTEXT_PREFIX}
    for name, field in InstantIDArgs.__fields__.items():
        label = field.field_info.extra.get("infotext")
        if label:
            labels[name] = f"{INFOTEXT_PREFIX} {label}"
    return labels


def is_enabled(value: object) -> bool:
    """Whether raw script arguments switch InstantID on, without decoding any image.

    Alwayson scripts get their arguments on every request; this lets the glue skip parsing
    (and decoding reference photos) when the unit is off. Malformed containers still raise.
    """
    found = _unwrap(value)
    if isinstance(found, InstantIDArgs):
        return found.enabled
    flag = found.get("enabled")
    if isinstance(flag, str):
        return bool(_read_bool(flag))
    return bool(flag)


# --- helpers ------------------------------------------------------------------------------


class _ImageRepr:
    def __init__(self, image: Image.Image) -> None:
        self.text = f"<image {_image_size(image)}>"

    def __repr__(self) -> str:
        return self.text


def _image_size(image: Image.Image) -> str:
    return f"{image.width}×{image.height}"


def _unknown(name: object) -> str:
    return f"Unknown InstantID argument {str(name)!r}. Valid arguments: {', '.join(ARG_FIELDS)}"


def _has_default(name: str) -> bool:
    """Whether ``None`` for this field means "use the default" (all but ``pose_image``)."""
    field = InstantIDArgs.__fields__[name]
    return field.default is not None or field.default_factory is not None


def _canonical(data: Mapping[Any, Any]) -> dict[str, Any]:
    """Rename aliases and drop ``None`` where the field has a non-None default."""
    out: dict[str, Any] = {}
    fields = InstantIDArgs.__fields__
    for key, value in data.items():
        name = ALIASES.get(key, key) if isinstance(key, str) else key
        if name in out:
            given = [k for k in data if k == name or ALIASES.get(k) == name]
            msg = (
                f"InstantID argument '{name}' is given twice (as {' and '.join(map(repr, given))}): keep one"
            )
            raise InvalidInputError(msg)
        if not isinstance(name, str):
            raise InvalidInputError(_unknown(name))
        if value is None and name in fields and _has_default(name):
            continue
        out[name] = value
    return out


def _unwrap(value: object) -> InstantIDArgs | dict[str, Any]:
    """Reduce every accepted form to a dict of field values (or an already-built model)."""
    if value is None:
        return {}
    if isinstance(value, InstantIDArgs):
        return value
    if isinstance(value, str | bytes | bytearray):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else value
        if not text.strip():
            return {}
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as err:
            msg = f"InstantID arguments are not valid JSON: {err.msg} at character {err.pos}"
            raise InvalidInputError(msg) from err
        if not isinstance(loaded, dict | list):
            msg = f"InstantID arguments must be a JSON object (got a JSON {type(loaded).__name__})"
            raise InvalidInputError(msg)
        return _unwrap(loaded)
    if isinstance(value, Mapping):
        if set(value) == {"args"}:
            return _unwrap(value["args"])
        return dict(value)
    if isinstance(value, list | tuple):
        if not value:
            return {}
        head = value[0]
        if isinstance(head, Mapping | InstantIDArgs):
            return _unwrap(head)
        if isinstance(head, str) and head.lstrip().startswith("{"):
            return _unwrap(head)
        if len(value) > len(ARG_FIELDS):
            msg = (
                f"InstantID takes at most {len(ARG_FIELDS)} positional arguments "
                f"({', '.join(ARG_FIELDS)}), got {len(value)}"
            )
            raise InvalidInputError(msg)
        return dict(zip(ARG_FIELDS, value, strict=False))
    msg = (
        "InstantID arguments must be a dict, a JSON object or a list of values in the order "
        f"{', '.join(ARG_FIELDS)} (got a {type(value).__name__})"
    )
    raise InvalidInputError(msg)


def _loc_name(loc: tuple[Any, ...]) -> str:
    """``("images", 2)`` → ``images[2]``; a model-wide check (``__root__``) names the model."""
    head, *rest = (part for part in loc if part != "__root__")
    return str(head) + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in rest)


_MISSING = object()


def _lookup(data: Mapping[str, Any], loc: tuple[Any, ...]) -> object:
    value: Any = data
    for part in loc:
        if isinstance(part, int) and not isinstance(value, list | tuple):
            return _MISSING  # e.g. weights still as the text "1, x"
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return value


def _show(value: object) -> str:
    """A short, safe rendering of a bad input: never more than a few dozen characters."""
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"a {len(value)}-character string"
    if isinstance(value, Image.Image):
        return f"an image {_image_size(value)}"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, Mapping):
        return "a dict"
    if value is None:
        return "None"
    return f"a {type(value).__name__}"


def _range_text(field_name: str) -> str:
    info = InstantIDArgs.__fields__[field_name].field_info
    if info.ge is not None and info.le is not None:
        return f"must be between {info.ge:g} and {info.le:g}"
    if info.ge is not None:
        return f"must be at least {info.ge:g}"
    return f"must be at most {info.le:g}"


_TYPE_TEXT = {
    "type_error.float": "must be a number",
    "type_error.integer": "must be a whole number",
    "type_error.bool": "must be true or false",
    "type_error.list": "must be a list",
    "type_error.str": "must be text",
    "type_error.none.not_allowed": "must not be empty",
}


def _sentence(error: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    loc, kind, ctx = tuple(error["loc"]), error["type"], error.get("ctx") or {}
    if loc == ("__root__",):
        return str(error["msg"])
    if kind == "value_error.extra":
        if len(loc) > 1:
            fields = ", ".join(Person.__fields__)
            return f"Unknown InstantID argument '{_loc_name(loc)}'. A person takes: {fields}"
        return _unknown(loc[0])
    if kind.startswith("value_error.number.") and loc[0] in InstantIDArgs.__fields__ and len(loc) == 1:
        text = _range_text(str(loc[0]))
    elif kind in ("value_error.number.not_le", "value_error.number.not_ge"):
        bound = "at most" if kind.endswith("le") else "at least"
        text = f"must be {bound} {ctx.get('limit_value')}"
    elif kind == "value_error.const":
        text = "must be one of " + ", ".join(repr(p) for p in ctx.get("permitted", ()))
    elif kind in _TYPE_TEXT:
        text = _TYPE_TEXT[kind]
    else:  # our own validators: the message is already complete
        return f"InstantID argument '{_loc_name(loc)}': {error['msg']}"
    got = _lookup(data, loc)
    if got is not _MISSING:
        text += f" (got {_show(got)})"
    return f"InstantID argument '{_loc_name(loc)}': {text}"


def _describe(err: ValidationError, data: Mapping[str, Any]) -> str:
    """One sentence per pydantic error, each naming its field and the bad value."""
    sentences = [_sentence(e, data).rstrip(". ") for e in err.errors()]
    return ". ".join(sentences) + "."


def _defaults() -> dict[str, Any]:
    return {name: field.get_default() for name, field in InstantIDArgs.__fields__.items()}


def _to_text(value: object) -> str:
    """Infotext form of a value; floats rounded so slider noise does not show."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(round(value, _INFOTEXT_DIGITS) + 0.0)
    if isinstance(value, list):
        return _format_floats(value)
    return str(value)


def _format_floats(values: Iterable[float]) -> str:
    return ", ".join(_to_text(float(v)) for v in values)


def _read_bool(value: object) -> bool | None:
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "1", "enabled"):
        return True
    if text in ("off", "false", "no", "0", "disabled"):
        return False
    return None


def _split_range(text: str) -> tuple[str, str] | None:
    """``"0.0-1.0"`` → ``("0.0", "1.0")``; copes with exponents such as ``1e-05-0.5``."""
    for match in re.finditer("-", text):
        left, right = text[: match.start()].strip(), text[match.end() :].strip()
        try:
            float(left), float(right)
        except ValueError:
            continue
        return left, right
    return None


def _check_field(name: str, raw: object) -> tuple[bool, Any]:
    """Validate one field on its own (types, ranges, spelling); ``(False, None)`` if unusable."""
    field = InstantIDArgs.__fields__[name]
    if name == "image_weights" and isinstance(raw, str) and not raw.strip():
        return False, None
    value, errors = field.validate(raw, {}, loc=name, cls=InstantIDArgs)  # type: ignore[arg-type]
    if errors:
        return False, None
    return True, value
