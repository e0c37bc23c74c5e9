"""From the user's inputs to what the diffusion model needs: embedding, face tokens, hint.

This is the host-free heart of a generation. Given validated :class:`InstantIDArgs`, it
analyses the reference photo(s) (or loads a saved identity), averages the raw embeddings,
finds the pose keypoints, and draws the IdentityNet hint at the output size with the
requested resize mode, so the WebUI glue only has to wire the results into the host.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import InvalidInputError
from .face import Face, FaceAnalyzer, mean_embedding
from .identity import IdentityStore
from .images import ImageLike, image_size, to_rgb_array
from .ip_adapter import IPAdapter
from .keypoints import ResizeModeLike, face_mask, kps_image_for_output, map_bbox

if TYPE_CHECKING:
    from .args import InstantIDArgs

Size = tuple[int, int]


@dataclass(frozen=True)
class FacePose:
    """Keypoints (and face box) in an image of ``size``: the pose IdentityNet will follow."""

    kps: np.ndarray  # float32 (5, 2)
    size: Size  # (width, height) of the image they were found in
    bbox: np.ndarray | None = None  # float32 (4,)


@dataclass(frozen=True)
class FaceConditioning:
    """Everything a generation needs from the reference face(s), independent of the model."""

    embedding: np.ndarray  # float32 (512,): mean of the raw embeddings
    pose: FacePose | None  # None: no keypoints (pose source "none")
    source: str  # "identity:<name>" or "images:<short hash>" for the infotext
    source_count: int

    def hint_image(self, output_size: Size, mode: ResizeModeLike) -> np.ndarray:
        """The IdentityNet keypoint image at ``output_size`` (RGB uint8); black without a pose.

        A black hint lets IdentityNet add identity through the face tokens without
        constraining the pose (the "no keypoints" mode users ask for).
        """
        width, height = output_size
        if self.pose is None:
            return np.zeros((height, width, 3), dtype=np.uint8)
        image = kps_image_for_output(self.pose.kps, self.pose.size, output_size, mode)
        return np.asarray(image)

    def region_mask(self, output_size: Size, mode: ResizeModeLike) -> np.ndarray | None:
        """Float mask (H×W, 1 inside the face box) at ``output_size``, or None without a box."""
        if self.pose is None or self.pose.bbox is None:
            return None
        box = map_bbox(self.pose.bbox, self.pose.size, output_size, mode)
        return face_mask(box, output_size).astype(np.float32) / 255.0


def images_digest(images: Sequence[ImageLike]) -> str:
    """A short, stable hash of the reference pixels (for infotext and caches)."""
    digest = hashlib.sha256()
    for image in images:
        rgb = to_rgb_array(image)
        digest.update(str(rgb.shape).encode())
        digest.update(rgb.tobytes())
    return digest.hexdigest()[:10]


def build_face_conditioning(
    args: InstantIDArgs,
    analyzer: Callable[[], FaceAnalyzer],
    identities: IdentityStore | None = None,
) -> FaceConditioning:
    """Analyse the references in ``args`` (or load the saved identity) and find the pose.

    ``analyzer`` is called only when a photo has to be analysed, so a saved identity with
    pose source "reference" or "none" never needs insightface.
    """
    pose: FacePose | None = None
    if args.identity:
        if identities is None:
            msg = "Saved identities are not available here; give a reference photo instead."
            raise InvalidInputError(msg)
        identity = identities.load(args.identity)
        embedding = identity.embedding
        source, count = f"identity:{identity.name}", identity.source_count
        if args.pose_source == "reference":
            if identity.kps is None or identity.image_size is None:
                msg = (
                    f"The saved identity '{identity.name}' has no keypoints; choose a pose image "
                    "or the pose source 'none'."
                )
                raise InvalidInputError(msg)
            pose = FacePose(identity.kps, identity.image_size, identity.bbox)
    else:
        if not args.images:
            msg = "InstantID has no reference face: add a face photo or choose a saved identity."
            raise InvalidInputError(msg)
        faces: list[Face] = []
        for i, image in enumerate(args.images):
            label = f"reference image {i + 1}" if len(args.images) > 1 else "the reference image"
            faces.append(analyzer().analyze_one(image, args.face_choice, args.face_index, label=label))
        weights = list(args.image_weights) or None
        embedding = mean_embedding(faces, weights)
        source, count = f"images:{images_digest(args.images)}", len(faces)
        if args.pose_source == "reference":
            pose = FacePose(faces[0].kps, image_size(args.images[0]), faces[0].bbox)
    if args.pose_source == "pose_image":
        if args.pose_image is None:
            msg = "The pose source is 'pose image' but no pose image was given."
            raise InvalidInputError(msg)
        face = analyzer().analyze_one(
            args.pose_image, args.face_choice, args.face_index, label="the pose image"
        )
        pose = FacePose(face.kps, image_size(args.pose_image), face.bbox)
    return FaceConditioning(np.asarray(embedding, dtype=np.float32), pose, source, count)


@dataclass(frozen=True)
class FaceTokens:
    """The Resampler's output for both CFG branches: ``[1, 16, 2048]`` each, float32 on the CPU."""

    cond: torch.Tensor
    uncond: torch.Tensor

    @classmethod
    def from_embedding(cls, adapter: IPAdapter, embedding: np.ndarray) -> FaceTokens:
        """cond = Resampler(embedding); uncond = Resampler(zeros), as the reference's CFG batch."""
        cond = adapter.face_tokens(torch.tensor(np.asarray(embedding, dtype=np.float32)))
        return cls(cond=cond.cpu(), uncond=adapter.uncond_tokens().cpu())
