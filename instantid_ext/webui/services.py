"""What the UI, the API and ControlNet's preprocessor ask of the extension, in one place.

Holds the process-wide :class:`Resources` (model scan, loaded adapter; located through
:mod:`.host` on every call, so changed settings apply at once) and the UI's helper actions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..args import InstantIDArgs
from ..errors import InstantIDError
from ..faces.analysis import choose_face
from ..faces.identity import save_from_photos
from ..images import to_rgb_array
from ..job.conditioning import black_hint, build_face_conditioning, pose_from_image, preset_pose
from ..job.resources import Resources
from ..method.geometry import Frame
from ..method.pose_presets import PoseEdit
from . import host

logger = logging.getLogger(__name__)

_RESOURCES = Resources(host.locations)


def resources() -> Resources:
    return _RESOURCES


def controlnet_status() -> tuple[bool, str]:
    """Whether IdentityNet can run, and the sentence the panel shows (an unsupported Forge is
    refused first; Forge Classic and reForge run it through their own ControlNet backend)."""
    from ..errors import DependencyError
    from .controlnet import ControlNetBridge

    forge = host.forge_message()
    if forge is not None:
        return False, forge
    if host.is_forge():
        from ..forge.backend import backend

        try:
            backend()
        except DependencyError as err:
            return False, str(err)
        return True, f"{host.forge_name()}'s ControlNet backend found: IdentityNet runs through it."
    return ControlNetBridge.available()


def run_kind() -> type[Any]:
    """The Run class of this host: Forge Classic and reForge patch through their UNet patcher."""
    from .run import Run

    if host.is_forge():
        from .forge_run import ForgeRun

        return ForgeRun
    return Run


#: Folders where versions up to 0.1.0 gave ControlNet links to IdentityNet (no longer made).
LEGACY_LINK_FOLDER = ".controlnet-links"
LEGACY_LINK_GLOB = "identitynet-*.safetensors"


def remove_legacy_links() -> int:
    """Delete the IdentityNet links earlier versions left next to the user's models; how many.

    They were hard links (or symlinks) named ``identitynet-<hash>.safetensors`` in
    ``<InstantID models folder>/.controlnet-links``; removing one never removes the model it
    points to. The folder goes too once empty.
    """
    removed = 0
    folders = [Path(d) / LEGACY_LINK_FOLDER for d in resources().locations.model_dirs[:1]]
    folders.append(Path(__file__).resolve().parents[2] / "cache" / "controlnet")
    for folder in folders:
        if not folder.is_dir():
            continue
        for link in folder.glob(LEGACY_LINK_GLOB):
            try:
                link.unlink()
                removed += 1
            except OSError as err:
                logger.warning("Could not remove the old IdentityNet link %s: %s", link, err)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty
    if removed:
        logger.info("Removed %d IdentityNet link(s) made by an earlier version of InstantID", removed)
    return removed


def face_keypoints_for_controlnet(image: np.ndarray) -> np.ndarray | None:
    """Keypoints of the largest face in an RGB image, for "InstantID keypoints" in ControlNet."""
    try:
        faces = resources().analyzer().analyze(image, label="the ControlNet input image")
    except InstantIDError as err:
        logger.warning("%s", err)
        return None
    return None if not faces else np.asarray(choose_face(faces).kps)


def annotate_faces(image: Any, faces: list) -> np.ndarray:
    """The reference photo with each face's box, index (left to right) and keypoints drawn."""
    canvas = to_rgb_array(image).copy()
    thickness = max(2, round(max(canvas.shape[:2]) / 300))
    for index, face in enumerate(faces):
        x1, y1, x2, y2 = (int(v) for v in face.bbox)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 255, 0), thickness)
        label = f"{index}  {face.score:.2f}"
        cv2.putText(
            canvas, label, (x1, max(y1 - 6, 12)), cv2.FONT_HERSHEY_SIMPLEX, thickness / 3, (0, 255, 0), 2
        )
        for x, y in face.kps:
            cv2.circle(canvas, (int(x), int(y)), thickness + 1, (255, 0, 0), -1)
    return canvas


def preview(
    fields: Mapping[str, Any], width: int, height: int
) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Detected faces on the first reference, the keypoint hint at the output size, a message.

    ``fields`` are panel values by argument name (see ``ui.PREVIEW_FIELDS``). The hint is the
    one a txt2img generation of ``width×height`` would get, pose edits included; in img2img
    the init image's face is only known when generating.
    """
    size = (int(width), int(height))
    try:
        args = InstantIDArgs.parse({**fields, "images": fields.get("images") or []})
        faces: list = []
        annotated = None
        notes = []
        if args.images:
            analyzer = resources().analyzer()
            faces = analyzer.analyze(args.images[0], label="the reference image")
            annotated = annotate_faces(args.images[0], faces)
        if args.pose_source == "preset":
            placed = preset_pose(args.pose_preset, size)
        elif args.pose_source == "none":
            placed = None
        else:
            if args.pose_source == "pose_image":
                if args.pose_image is None:
                    return annotated, None, "Add a pose image first."
                pose = pose_from_image(
                    resources().analyzer,
                    args.pose_image,
                    "pose_image",
                    args.pose_face_choice,
                    args.pose_face_index,
                )
            elif not args.images:
                return None, None, "Add a reference face photo first."
            else:
                if args.pose_source == "init_image":
                    notes.append(
                        "The init image's face is used when generating; the reference is shown here."
                    )
                pose = build_face_conditioning(args, resources().analyzer).pose
            placed = None if pose is None else pose.place(Frame.resize(pose.size, size, args.resize_mode))
        edit = PoseEdit(
            args.pose_mirror, args.pose_rotate, args.pose_scale, args.pose_offset_x, args.pose_offset_y
        )
        if placed is not None:
            placed = placed.edited(edit)
            problem = placed.problem()
            if problem:
                notes.append(f"⚠ {problem}")
        hint = black_hint(size) if placed is None else placed.hint()
    except InstantIDError as err:
        return None, None, f"⚠ {err}"
    if faces:
        chosen = (
            ""
            if len(faces) < 2
            else f" ({len(faces)} faces found; using {args.face_choice.replace('_', ' ')})"
        )
        head = f"Face found{chosen}."
    else:
        head = "No reference photo."
    what = "no keypoints (free pose)" if placed is None else "Keypoint hint"
    message = " ".join([head, f"{what} shown at {size[0]}×{size[1]}.", *notes])
    return annotated, hint, message


#: Region tints of the people preview, person 1 to 4 (RGB).
PERSON_COLOURS = ((66, 135, 245), (245, 130, 48), (60, 180, 75), (240, 50, 230))


def people_preview(
    people: Any,
    pose_source: str,
    pose_image: Any,
    pose_preset: str,
    resize_mode: str,
    width: int,
    height: int,
) -> tuple[np.ndarray | None, str]:
    """Each person's region tinted on the output canvas, with the keypoints IdentityNet will get."""
    from ..images import image_size as size_of
    from ..job.people import canvas_faces, person_conditioning, place_people
    from ..method.identitynet_regions import multi_identity_hint

    size = (int(width), int(height))
    try:
        args = InstantIDArgs.parse(
            {
                "enabled": True,
                "people": people or [],
                "pose_source": pose_source,
                "pose_image": pose_image,
                "pose_preset": pose_preset,
                "resize_mode": resize_mode,
            }
        )
        if not args.people:
            return None, "Fill at least two person rows (a photo or a saved identity each)."
        conditionings = [
            person_conditioning(person, n, resources().analyzer, resources().identities())
            for n, person in enumerate(args.people, start=1)
        ]
        faces = None
        if args.pose_source == "pose_image" and args.pose_image is not None:
            found = resources().analyzer().analyze(args.pose_image, label="the pose image")
            frame = Frame.resize(size_of(args.pose_image), size, args.resize_mode)
            faces = canvas_faces(found, frame.map_points)
        placements = place_people(args, conditionings, size, faces, args.resize_mode)
    except InstantIDError as err:
        return None, f"⚠ {err}"
    canvas = np.zeros((size[1], size[0], 3), np.float32)
    for placed, colour in zip(placements, PERSON_COLOURS, strict=False):
        canvas += placed.region.mask[..., None] * (np.array(colour, np.float32) * 0.45)
    kps = [placed.kps for placed in placements if placed.kps is not None]
    hint = multi_identity_hint(size, kps).astype(np.float32)
    picture = np.clip(np.maximum(canvas, hint), 0, 255).astype(np.uint8)
    for number, placed in enumerate(placements, start=1):
        x1, y1, _, _ = placed.region.box
        cv2.putText(
            picture, str(number), (x1 + 6, y1 + 26), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2
        )
    where = ", ".join(f"{n}: {p.region.label}" for n, p in enumerate(placements, start=1))
    return picture, f"{len(placements)} people at {size[0]}×{size[1]} ({where})."


def save_identity(name: str, images: Any, face_choice: str, face_index: int, overwrite: bool) -> str:
    """Analyse the photos and store their mean embedding under ``name``; returns a status line."""
    try:
        args = InstantIDArgs.parse(
            {"images": images or [], "face_choice": face_choice, "face_index": int(face_index or 0)}
        )
        if not args.images:
            return "Add one or more reference photos to save as an identity."
        path, identity = save_from_photos(
            resources().identities(),
            resources().analyzer,
            name,
            ((f"reference image {i}", img) for i, img in enumerate(args.images, start=1)),
            face_choice=args.face_choice,
            face_index=args.face_index,
            overwrite=bool(overwrite),
            overwrite_hint='tick "Replace if it exists"',
        )
    except InstantIDError as err:
        return f"⚠ {err}"
    return f"Saved identity '{path.stem}' from {identity.source_count} photo(s)."
