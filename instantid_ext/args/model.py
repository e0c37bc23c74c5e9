"""The validated arguments: :class:`InstantIDArgs` (one run) and :class:`Person` (one of several).

Field order is the UI's and the positional API's; each field carries its range, its
description (the API schema) and its infotext label. Spelling, ranges, messages, infotext and
the input forms live beside this module; the model only declares and checks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from PIL import Image

from ..errors import InvalidInputError
from ..images import encode_image_png_base64
from ..models.discovery import AUTO
from . import forms, infotext
from .choices import (
    ALIASES,
    FaceChoice,
    FacePassFaces,
    PoseSource,
    RegionKind,
    ResizeModeName,
    read_bool,
    spell_choice,
    spell_identity,
    spell_lower,
    spell_model_name,
    spell_preset,
    spell_resize_mode,
)
from .fields import (
    ImageRepr,
    ReferenceImage,
    arg,
    format_floats,
    image_list,
    image_size,
    number_list,
    to_text,
    usable_weights,
    whole_number,
)
from .messages import describe, unknown_argument
from .pydantic_v1 import BaseModel, Extra, Field, ValidationError, root_validator, validator
from .ranges import FACE_INDEX, FRACTION, SHIFT, STRENGTH, Range


def _pre(*names: str) -> Any:
    """A validator of ``names`` that runs before the type check (the readers take the raw value)."""
    return validator(*names, pre=True, allow_reuse=True)


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
    face_index: int | None = FACE_INDEX.field(
        None, "Which face of the first photo (left to right); None: the largest."
    )
    region: RegionKind = Field("auto", description="Where this person goes.")
    box: list[float] = Field(default_factory=list, description="With region 'box': x1, y1, x2, y2 in 0…1.")
    mask: ReferenceImage | None = Field(None, description="With region 'mask': white where this person goes.")
    region_face: int | None = FACE_INDEX.field(
        None, "With region 'auto': the pose/init image's face (0 = leftmost)."
    )
    id_weight: float = STRENGTH.field(0.8, "This person's face token strength.")
    control_weight: float = STRENGTH.field(0.8, "This person's IdentityNet strength.")

    class Config:
        extra = Extra.forbid

    _images_as_list = _pre("images")(image_list)
    _weights_as_list = _pre("image_weights", "box")(number_list)
    _weights_usable = validator("image_weights", allow_reuse=True)(usable_weights)
    _identity_name = _pre("identity")(spell_identity)
    _region_spelling = _pre("region")(spell_lower)

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
            (name, [ImageRepr(i) for i in value] if name == "images" else value)
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

    enabled: bool = arg(False, "Run InstantID; off by default as it runs on every request.")
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
    identity: str = arg(
        "", "A saved identity to use instead of the photos (letters, digits, space, - _ .).", "identity"
    )
    face_choice: FaceChoice = arg("largest", "Which face to use when a photo shows several.", "face choice")
    face_index: int = FACE_INDEX.field(
        0, "With face_choice 'index': faces counted left to right from 0.", "face index"
    )
    pose_source: PoseSource = arg(
        "auto",
        (
            "Where the IdentityNet keypoints come from: 'auto' (img2img: the face in the init image, "
            "under the inpaint mask if there is one; txt2img: the reference face), 'reference', "
            "'pose_image', 'init_image' (img2img only), 'preset' (pose_preset) or 'none' (free pose)."
        ),
        "pose",
    )
    pose_image: ReferenceImage | None = arg(
        None,
        (
            "Image (base64, as for images) whose face pose the output copies; "
            "needed when pose_source is 'pose_image'."
        ),
    )
    id_weight: float = STRENGTH.field(
        0.8,
        "Face token strength (IP-Adapter scale). Aliases: weight, ip_weight, ip_adapter_scale.",
        "ID weight",
    )
    id_start: float = FRACTION.field(0.0, "Fraction of steps before face tokens start.", "ID range")
    id_end: float = FRACTION.field(1.0, "Fraction of steps after which face tokens stop.", "ID range")
    control_weight: float = STRENGTH.field(
        0.8,
        "IdentityNet strength. Aliases: controlnet_conditioning_scale, identitynet_weight.",
        "IdentityNet weight",
    )
    control_start: float = FRACTION.field(
        0.0, "Fraction of steps before IdentityNet starts.", "IdentityNet range"
    )
    control_end: float = FRACTION.field(
        1.0, "Fraction of steps after which IdentityNet stops.", "IdentityNet range"
    )
    ip_adapter_model: str = arg(
        AUTO, "Adapter file as listed by the model scan; 'Auto' = the first found.", "adapter"
    )
    identitynet_model: str = arg(
        AUTO, "IdentityNet as listed by the model scan; 'Auto' = the first found.", "IdentityNet"
    )
    resize_mode: ResizeModeName = arg(
        "Crop and Resize",
        "How the pose keypoints are fitted to the output size (as in img2img).",
        "resize mode",
    )
    face_region_only: bool = arg(
        False,
        "Apply face tokens and IdentityNet only inside the face box; the prompt rules the rest.",
        "face region only",
    )
    pose_face_choice: FaceChoice = arg(
        "largest",
        (
            "Which face of the pose image or of the img2img init image gives the keypoints "
            "(with an inpaint mask, the face under the mask is used)."
        ),
        "pose face choice",
    )
    pose_face_index: int = FACE_INDEX.field(
        0,
        "With pose_face_choice 'index': faces of the pose/init image, left to right from 0.",
        "pose face index",
    )
    show_hint: bool = arg(
        False, "Also return the keypoint image IdentityNet received, as an extra output image."
    )
    pose_preset: str = arg(
        "front",
        (
            "With pose_source 'preset': front, three_quarter_left/right, profile_left/right, "
            "looking_up/down, tilted_left/right ('left' = towards the image's left)."
        ),
        "pose preset",
    )
    pose_mirror: bool = arg(False, "Mirror the keypoints left-right.", "pose mirror")
    pose_rotate: float = Range(-180, 180).field(
        0.0, "Rotate the keypoints (degrees, counter-clockwise).", "pose rotate"
    )
    pose_scale: float = Range(0.2, 3).field(
        1.0, "Scale the face's keypoints about their centre.", "pose scale"
    )
    pose_offset_x: float = SHIFT.field(
        0.0, "Move the keypoints right by this fraction of the width.", "pose offset"
    )
    pose_offset_y: float = SHIFT.field(
        0.0, "Move the keypoints down by this fraction of the height.", "pose offset"
    )
    noise: float = FRACTION.field(
        0.0,
        (
            "Negative-embedding noise against burned images: the uncond face tokens come from "
            "noise × uniform random numbers (seeded by the image seed) instead of zeros. 0 = off."
        ),
        "noise",
    )
    likeness: bool = arg(
        True, "Score each output: cosine of its face's ArcFace embedding to the reference's."
    )
    face_pass: bool = arg(
        False,
        (
            "After each image, detect its face(s), restyle each at its own resolution with InstantID "
            "(keypoints from the face itself) and paste it back."
        ),
        "face pass",
    )
    face_pass_faces: FacePassFaces = arg("largest", "Which faces the face pass restyles.", "face pass faces")
    face_pass_index: int = FACE_INDEX.field(
        0, "With face_pass_faces 'index': left to right from 0.", "face pass index"
    )
    face_pass_strength: float = FRACTION.field(
        0.4, "Denoising strength of the face pass.", "face pass strength"
    )
    face_pass_prompt: str = arg(
        "", "Prompt for the face pass; empty = the image's own prompt.", "face pass prompt"
    )
    face_pass_padding: int = Range(0, 512).field(
        32, "Context around each face box, in pixels of the image.", "face pass padding"
    )
    face_pass_resolution: int = Range(256, 2048).field(
        1024, "Side of the square each face is restyled at.", "face pass resolution"
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
        data = forms.canonical(data, type(self))
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise InvalidInputError(describe(err, data, type(self))) from err

    def __setattr__(self, name: str, value: Any) -> None:
        """Assignment validates like construction, and takes the same aliases."""
        name = ALIASES.get(name, name)
        if name not in self.__fields__:
            raise InvalidInputError(unknown_argument(name, type(self)))
        if value is None and forms.has_default(type(self), name):
            value = self.__fields__[name].get_default()
        try:
            super().__setattr__(name, value)
        except ValidationError as err:
            raise InvalidInputError(describe(err, {name: value}, type(self))) from err

    @classmethod
    def parse(cls, value: object = None) -> InstantIDArgs:
        """Read the arguments in any form the WebUI delivers them.

        ``value`` may be an :class:`InstantIDArgs`; a dict (aliases allowed, ``{"args": [...]}``
        too); a JSON string of one; a list/tuple of UI values in :data:`ARG_FIELDS` order
        (shorter keeps the remaining defaults); a list/tuple whose first item is a dict (the
        API form, which A1111 pads with UI defaults: those are ignored); or ``None``/empty
        for the defaults.
        """
        found = forms.unwrap(value, cls)
        if isinstance(found, InstantIDArgs):
            return found
        return cls(**found)

    # --- field validators -----------------------------------------------------------------

    _images_as_list = _pre("images")(image_list)

    _weights_as_list = _pre("image_weights")(number_list)
    _weights_usable = validator("image_weights", allow_reuse=True)(usable_weights)
    _identity_name = _pre("identity")(spell_identity)
    _choice_spelling = _pre("face_choice", "pose_source", "pose_face_choice", "face_pass_faces")(spell_choice)
    _whole_number = _pre(
        "face_index", "pose_face_index", "face_pass_index", "face_pass_padding", "face_pass_resolution"
    )(whole_number)
    _resize_mode_spelling = _pre("resize_mode")(spell_resize_mode)
    _preset_name = _pre("pose_preset")(spell_preset)
    _model_name = _pre("ip_adapter_model", "identitynet_model")(spell_model_name)

    @validator("face_pass_resolution")
    @classmethod
    def _multiple_of_eight(cls, value: int) -> int:
        if value % 8:
            msg = f"must be a multiple of 8 (got {value})"
            raise ValueError(msg)
        return value

    @root_validator(skip_on_failure=True)
    @classmethod
    def _consistent_when_enabled(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The checks that need several fields; see the class docstring for why only when enabled."""
        if not values.get("enabled"):
            return values
        problems = _source_problems(values)
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
        return infotext.write(self, extra) if self.enabled else {}

    @classmethod
    def from_infotext(cls, params: Mapping[str, object]) -> dict[str, object]:
        """The field updates a pasted infotext asks for: only keys present, unreadable ones skipped."""
        return infotext.read(cls, params)

    @classmethod
    def people_from_infotext(cls, params: Mapping[str, object]) -> list[dict[str, Any]]:
        """The people a pasted infotext names, in order: each a dict of the :class:`Person` fields
        its "InstantID people" entry holds (identity, region, box, weights; never photos)."""
        return infotext.read_people(Person, str(params.get(infotext.PEOPLE_KEY, "")))

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
        face = f"face #{self.face_index}" if self.face_choice == "index" else f"face {self.face_choice}"
        pose = self.pose_source
        if self.pose_image is not None:
            pose += f" [{image_size(self.pose_image)}]"
        return (
            f"InstantID on: {self._source_summary()}; {face}; pose {pose}; "
            f"ID {to_text(self.id_weight)} @ {to_text(self.id_start)}-{to_text(self.id_end)}; "
            f"IdentityNet {to_text(self.control_weight)} @ {to_text(self.control_start)}-"
            f"{to_text(self.control_end)}; adapter {self.ip_adapter_model}; IdentityNet model "
            f"{self.identitynet_model}; {self.resize_mode}"
            + ("; face region only" if self.face_region_only else "")
        )

    def _source_summary(self) -> str:
        if self.identity:
            source = f"identity '{self.identity}'"
            if self.images:
                source += f" (ignoring {len(self.images)} image(s))"
            return source
        sizes = ", ".join(image_size(img) for img in self.images)
        source = f"{len(self.images)} image(s) [{sizes}]"
        if self.image_weights:
            source += f" weighted {format_floats(self.image_weights)}"
        return source

    def __repr_args__(self) -> list[tuple[str | None, Any]]:
        """Images show as ``<image 512×512>`` so a repr never carries pixel data."""
        shown: list[tuple[str | None, Any]] = []
        for name, value in super().__repr_args__():
            if name == "images":
                value = [ImageRepr(img) for img in value]
            elif name == "pose_image" and value is not None:
                value = ImageRepr(value)
            shown.append((name, value))
        return shown


def _source_problems(values: Mapping[str, Any]) -> list[str]:
    """What is wrong with the face source(s) of an enabled run: none, one person, weights."""
    problems = []
    images, weights = values.get("images", []), values.get("image_weights", [])
    people = values.get("people", [])
    if len(people) == 1:
        problems.append(
            "InstantID argument 'people': give 2 to 4 people (got 1); for one person use images or identity"
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
    return problems


ARG_FIELDS: tuple[str, ...] = tuple(InstantIDArgs.__fields__)


def infotext_labels() -> dict[str, str]:
    """Field name → infotext key, for the WebUI's ``infotext_fields``.

    ``enabled`` is the bare "InstantID" key. The two start/end pairs share one key each
    ("InstantID ID range: 0.0-1.0"): paste them with ``from_infotext(params).get(field)``.
    """
    return infotext.labels(InstantIDArgs)


def is_enabled(value: object) -> bool:
    """Whether raw script arguments switch InstantID on, without decoding any image.

    Alwayson scripts get their arguments on every request; this lets the glue skip parsing
    (and decoding reference photos) when the unit is off. Malformed containers still raise.
    """
    found = forms.unwrap(value, InstantIDArgs)
    if isinstance(found, InstantIDArgs):
        return found.enabled
    flag = found.get("enabled")
    if isinstance(flag, str):
        return bool(read_bool(flag))
    return bool(flag)
