"""The face pass: which faces of a finished image to restyle, and how to mask each one.

Small faces lose the identity: at 60 px in a 1024² image the face spans a handful of latent
pixels. The face pass (what ADetailer does for plain inpainting) finds the faces in the
finished image and redraws each at a working resolution of its own, with InstantID: an
"Only masked" inpaint whose mask is the face box, grown a little and feathered, so the
WebUI crops the box plus a context padding, samples it at the working size and pastes only
the masked pixels back. The keypoints come from the face itself (pose source "init image",
the face under the mask), so the pose and position are kept and only the identity changes.

This module holds the host-free part: face selection, the mask geometry and the arguments
of the nested generation. The WebUI glue runs the nested generation itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from ..errors import InvalidInputError
from ..faces.analysis import Face

if TYPE_CHECKING:
    from ..args import InstantIDArgs

Size = tuple[int, int]
Which = Literal["largest", "all", "index"]

#: The mask covers the face box grown by this fraction of the face's size on each side
#: (hair line, chin and cheeks belong to the face the model redraws).
FACE_MARGIN = 0.15
#: Feathering of the mask edge (the WebUI's mask blur), as a fraction of the face's size.
FEATHER = 0.06
MIN_FEATHER, MAX_FEATHER = 2, 32

#: Arguments of the nested generation that differ from the outer job's.
_NESTED_OVERRIDES: dict[str, Any] = {
    "pose_source": "init_image",  # the face itself, found under the mask
    "pose_face_choice": "largest",
    "pose_face_index": 0,
    "pose_mirror": False,
    "pose_rotate": 0.0,
    "pose_scale": 1.0,
    "pose_offset_x": 0.0,
    "pose_offset_y": 0.0,
    "face_pass": False,  # no face pass inside the face pass
    "likeness": False,  # the outer job scores the final image
    "show_hint": False,
    "resize_mode": "Just Resize",
}


@dataclass(frozen=True)
class FaceTarget:
    """One face to restyle: its number from the left, its box and the mask to paint."""

    number: int
    bbox: np.ndarray  # (4,) detector box, image pixels
    mask_box: tuple[int, int, int, int]  # grown box, clipped to the image
    feather: int  # mask blur in pixels

    @property
    def face_size(self) -> float:
        x1, y1, x2, y2 = self.bbox
        return float(max(x2 - x1, y2 - y1))

    def mask(self, size: Size) -> Image.Image:
        """The inpaint mask at the image size: white over the grown face box (the WebUI feathers it)."""
        mask = Image.new("L", size, 0)
        mask.paste(255, self.mask_box)
        return mask


def select_faces(faces: Sequence[Face], which: Which, index: int = 0) -> list[tuple[int, Face]]:
    """``(number from the left, face)`` pairs to restyle; ``faces`` are ordered left to right."""
    if which == "all":
        return list(enumerate(faces))
    if not faces:
        return []
    if which == "largest":
        number = max(range(len(faces)), key=lambda i: faces[i].area)
        return [(number, faces[number])]
    if which == "index":
        if index >= len(faces):
            found = f"{len(faces)} face{'s' if len(faces) != 1 else ''}"
            msg = (
                f"The face pass asks for face number {index}, but the image has {found} "
                f"(counted from 0, left to right); use 0 to {len(faces) - 1} or 'largest'."
            )
            raise InvalidInputError(msg)
        return [(index, faces[index])]
    msg = f"Unknown face pass choice {which!r}; use 'largest', 'all' or 'index'."
    raise InvalidInputError(msg)


def face_targets(faces: Sequence[Face], size: Size, which: Which, index: int = 0) -> list[FaceTarget]:
    """The faces to restyle in an image of ``size``, each with its mask box and feathering."""
    width, height = size
    targets = []
    for number, face in select_faces(faces, which, index):
        x1, y1, x2, y2 = (float(v) for v in face.bbox)
        side = max(x2 - x1, y2 - y1)
        grow = FACE_MARGIN * side
        box = (
            max(int(np.floor(x1 - grow)), 0),
            max(int(np.floor(y1 - grow)), 0),
            min(int(np.ceil(x2 + grow)), width),
            min(int(np.ceil(y2 + grow)), height),
        )
        if box[2] <= box[0] or box[3] <= box[1]:
            continue  # a face entirely off the image (cannot happen for a detection, kept safe)
        feather = int(min(max(round(FEATHER * side), MIN_FEATHER), MAX_FEATHER))
        targets.append(FaceTarget(number, np.asarray(face.bbox, dtype=np.float32), box, feather))
    return targets


def nested_arguments(args: InstantIDArgs) -> dict[str, Any]:
    """The InstantID arguments of the nested generation restyling one face.

    The same face source, weights and models as the outer job; the keypoints come from the
    face being restyled, and the nested job neither starts a face pass nor scores itself.
    """
    values: dict[str, Any] = {name: getattr(args, name) for name in args.__fields__}
    values.update(_NESTED_OVERRIDES)
    values["enabled"] = True
    return values


def changed_box(targets: Sequence[FaceTarget], size: Size) -> tuple[int, int, int, int] | None:
    """The box outside of which a face pass over ``targets`` changes no pixel.

    Only masked pixels are pasted back; the feathered mask reaches its box plus three times
    the blur radius (the Gaussian's tail). The context padding around it is sampled but not
    pasted.
    """
    if not targets:
        return None
    width, height = size
    reach = [(t.mask_box, 3 * t.feather) for t in targets]
    x1 = min(b[0] - f for b, f in reach)
    y1 = min(b[1] - f for b, f in reach)
    x2 = max(b[2] + f for b, f in reach)
    y2 = max(b[3] + f for b, f in reach)
    return max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)


def prompt_for(args: InstantIDArgs, prompts: Sequence[str] | None, image_index: int, fallback: str) -> str:
    """The face pass prompt: the override, else the prompt of image ``image_index`` of the job."""
    if args.face_pass_prompt.strip():
        return args.face_pass_prompt
    if prompts and 0 <= image_index < len(prompts):
        return prompts[image_index]
    return fallback
