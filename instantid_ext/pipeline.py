"""From the user's inputs to what the diffusion model needs: embedding, face tokens, hint.

This is the host-free heart of a generation. Given validated :class:`InstantIDArgs`, it
analyses the reference photo(s) (or loads a saved identity), averages the raw embeddings,
finds the pose keypoints, and draws the IdentityNet hint at the output size with the
requested resize mode, so the WebUI glue only has to wire the results into the host.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import InvalidInputError
from .face import Face, FaceAnalyzer, mean_embedding
from .identity import IdentityStore
from .images import ImageLike, image_size, to_rgb_array
from .ip_adapter import FACE_EMBEDDING_DIM, IPAdapter
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


_NOISE_SEED_SALT = "instantid-uncond-noise"


def _noise_generator_seed(seed: int) -> int:
    """A 63-bit seed for the noise generator, derived from (not equal to) the generation seed.

    Hashing keeps the uniform draw independent of the sampler's latent noise, which the host
    draws from the same seed.
    """
    digest = hashlib.blake2b(f"{_NOISE_SEED_SALT}:{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def check_noise(noise: object) -> float:
    """``noise`` as a float in [0, 1], or :class:`InvalidInputError`."""
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0.0 <= float(noise) <= 1.0:
        msg = f"The negative-embedding noise must be a number from 0 to 1 (0 = off), got {noise!r}."
        raise InvalidInputError(msg)
    return float(noise)  # NaN fails the range check above


def uncond_noise_embedding(noise: float, seed: int) -> torch.Tensor:
    """The negative branch's Resampler input: ``noise · U[0, 1)^512`` (float32, CPU).

    This is ComfyUI_InstantID's remedy for burned, over-saturated images: a small random
    negative embedding instead of zeros. cubiq seeds it with ``torch.manual_seed(int(sum(emb))
    % 1000000007)``; here the draw comes from a private ``torch.Generator`` seeded from the
    generation ``seed``, on purpose:

    * the global RNGs (torch, numpy, ``random``) are never touched, so the host's own random
      streams (samplers, other extensions) are not reset in the middle of a job;
    * the result is reproducible per generation seed, like the rest of the image: the same
      seed and settings give the same picture, another seed another draw (cubiq's draw is
      the same for every seed of an identity).
    """
    value = check_noise(noise)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        msg = f"The negative-embedding noise needs the generation seed as a whole number, got {seed!r}."
        raise InvalidInputError(msg)
    generator = torch.Generator(device="cpu").manual_seed(_noise_generator_seed(int(seed)))
    return value * torch.rand(FACE_EMBEDDING_DIM, generator=generator, dtype=torch.float32)


@dataclass(frozen=True)
class FaceTokens:
    """The Resampler's output for both CFG branches: ``[1, 16, 2048]`` each, float32 on the CPU."""

    cond: torch.Tensor
    uncond: torch.Tensor

    @classmethod
    def from_embedding(
        cls, adapter: IPAdapter, embedding: np.ndarray, noise: float = 0.0, seed: int | None = None
    ) -> FaceTokens:
        """cond = Resampler(embedding); uncond = Resampler(zeros), as the reference's CFG batch.

        With ``noise`` > 0, uncond = Resampler(noise · U[0, 1)^512) instead (see
        :func:`uncond_noise_embedding`), which needs the generation ``seed``. ``noise`` 0 (the
        default) is exactly the zeros path.
        """
        value = check_noise(noise)
        cond = adapter.face_tokens(torch.tensor(np.asarray(embedding, dtype=np.float32)))
        if value == 0.0:
            uncond = adapter.uncond_tokens()
        else:
            if seed is None:
                msg = "The negative-embedding noise needs the generation seed; none was given."
                raise InvalidInputError(msg)
            uncond = adapter.face_tokens(uncond_noise_embedding(value, seed))
        return cls(cond=cond.cpu(), uncond=uncond.cpu())
