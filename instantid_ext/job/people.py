"""Several people in one image: who each one is, where each goes, and with which keypoints.

Each :class:`~instantid_ext.args.Person` brings a face source (photos or a saved identity)
and a region. :func:`person_conditioning` turns the face source into the person's mean raw
embedding and reference pose, like :func:`~instantid_ext.job.conditioning.build_face_conditioning`
does for one person. :func:`place_people` then lays the people out on the sampled canvas:
the regions (:mod:`instantid_ext.method.regions`) and each person's keypoints — the face of
the pose image (or of the img2img init image) inside the region when there is one, else the
person's own reference face (or a preset) fitted into the region.

Faces of the pose/init image come in *canvas* coordinates (the host maps them there with the
same frames as the one-person hint), so the regions are built with an identity mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidInputError
from ..faces.analysis import Face, FaceAnalyzer, mean_embedding
from ..faces.identity import IdentityStore
from ..method.keypoints import ResizeMode
from ..method.pose_presets import preset_kps
from ..method.regions import Region, RegionSpec, build_regions, place_reference_kps, region_pose_kps
from .conditioning import images_digest, kps_box

if TYPE_CHECKING:
    from ..args import InstantIDArgs, Person

Size = tuple[int, int]


@dataclass(frozen=True)
class PersonConditioning:
    """One person's identity: the mean raw embedding and the reference face's keypoints and box."""

    embedding: np.ndarray  # float32 (512,)
    kps: np.ndarray | None  # (5, 2) in the reference photo, None for an identity saved without
    bbox: np.ndarray | None
    source: str  # "identity:<name>" or "images:<hash>"


@dataclass(frozen=True)
class CanvasFace:
    """A face of the pose/init image with its box and keypoints in canvas pixels."""

    bbox: np.ndarray
    kps: np.ndarray


@dataclass(frozen=True)
class PersonPlacement:
    """Where one person goes on the canvas: the region, and the keypoints (None: free pose)."""

    region: Region
    kps: np.ndarray | None


def person_conditioning(
    person: Person, number: int, analyzer: Callable[[], FaceAnalyzer], identities: IdentityStore | None
) -> PersonConditioning:
    """Analyse one person's photos (the first photo's face by ``face_index``, else the largest)."""
    if person.identity:
        if identities is None:
            msg = "Saved identities are not available here; give photos for each person instead."
            raise InvalidInputError(msg)
        identity = identities.load(person.identity)
        return PersonConditioning(
            np.asarray(identity.embedding, dtype=np.float32),
            identity.kps,
            identity.bbox,
            f"identity:{identity.name}",
        )
    faces: list[Face] = []
    for i, image in enumerate(person.images):
        label = f"photo {i + 1} of person {number}"
        index = person.face_index if i == 0 and person.face_index is not None else 0
        mode = "index" if i == 0 and person.face_index is not None else "largest"
        faces.append(analyzer().analyze_one(image, mode, index, label=label))
    embedding = mean_embedding(faces, list(person.image_weights) or None)
    return PersonConditioning(
        np.asarray(embedding, dtype=np.float32),
        np.asarray(faces[0].kps, dtype=np.float32),
        np.asarray(faces[0].bbox, dtype=np.float32),
        f"images:{images_digest(person.images)}",
    )


def region_specs(people: Sequence[Person]) -> list[RegionSpec]:
    specs = []
    for person in people:
        if person.region == "box":
            specs.append(RegionSpec("box", box=tuple(person.box)))  # type: ignore[arg-type]
        elif person.region == "mask":
            specs.append(RegionSpec("mask", mask=person.mask))
        elif person.region == "auto":
            specs.append(RegionSpec("auto", face_index=person.region_face))
        else:
            specs.append(RegionSpec(person.region))
    return specs


def place_people(
    args: InstantIDArgs,
    conditionings: Sequence[PersonConditioning],
    canvas: Size,
    pose_faces: Sequence[CanvasFace] | None,
    mask_mode: str = "Crop and Resize",
) -> list[PersonPlacement]:
    """Regions and keypoints of every person on a canvas of ``canvas`` size.

    ``pose_faces``: the faces of the pose image (or init image) in canvas pixels, or None when
    the people take their pose from their own reference photos (or a preset, or none). Mask
    regions are mapped with ``mask_mode`` (the panel's resize mode).
    """
    people = args.people
    if pose_faces is None and any(person.region == "auto" for person in people):
        msg = (
            "A person with the region 'auto' needs the faces of a pose image (or, in img2img, of the init "
            "image): add a pose image with everyone in it, or give each person a region (left, right, box…)."
        )
        raise InvalidInputError(msg)
    specs = region_specs(people)
    faces = list(pose_faces or [])
    # Mask images are laid out with the panel's resize mode; faces are already in canvas pixels.
    regions = build_regions(specs, canvas, mask_mode, faces=faces, pose_size=canvas)
    if args.pose_source == "none":
        return [PersonPlacement(region, None) for region in regions]
    if pose_faces is not None:
        kps_list = region_pose_kps(regions, faces, canvas, canvas, ResizeMode.JUST_RESIZE)
        return [PersonPlacement(region, kps) for region, kps in zip(regions, kps_list, strict=True)]
    placements = []
    for number, (region, person) in enumerate(zip(regions, conditionings, strict=True), start=1):
        if args.pose_source == "preset":
            kps = preset_kps(args.pose_preset, canvas)
            bbox = kps_box(kps)
        elif person.kps is None:
            msg = (
                f"Person {number}'s saved identity has no keypoints, so it cannot be placed in its region; "
                "use a pose image, a preset, or the pose source 'none'."
            )
            raise InvalidInputError(msg)
        else:
            kps, bbox = person.kps, person.bbox
        placements.append(PersonPlacement(region, place_reference_kps(kps, region, bbox)))
    return placements


def describe(args: InstantIDArgs, conditionings: Sequence[PersonConditioning]) -> str:
    """One infotext line: each person's source, region and weights."""
    parts = []
    for number, (person, cond) in enumerate(zip(args.people, conditionings, strict=True), start=1):
        region = person.region
        if region == "box":
            region += "(" + " ".join(f"{v:g}" for v in person.box) + ")"
        parts.append(f"{number}: {cond.source} {region} {person.id_weight:g}/{person.control_weight:g}")
    return "; ".join(parts)


def canvas_faces(faces: Sequence[Face], to_canvas: Callable[[np.ndarray], np.ndarray]) -> list[CanvasFace]:
    """Detected faces moved onto the canvas by ``to_canvas`` (a frame's ``map_points``)."""
    moved = []
    for face in faces:
        x1, y1, x2, y2 = (float(v) for v in face.bbox)
        corners = to_canvas(np.array([[x1, y1], [x2, y2]]))
        bbox = np.array([*corners.min(axis=0), *corners.max(axis=0)])
        moved.append(CanvasFace(bbox, to_canvas(np.asarray(face.kps, dtype=np.float64)).astype(np.float32)))
    return moved


__all__ = [
    "CanvasFace",
    "PersonConditioning",
    "PersonPlacement",
    "canvas_faces",
    "describe",
    "person_conditioning",
    "place_people",
    "region_specs",
]
