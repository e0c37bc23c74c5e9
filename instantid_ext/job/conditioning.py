"""From the user's inputs to what the diffusion model needs: embedding, face tokens, hint.

This is the host-free heart of a generation. Given validated :class:`InstantIDArgs`, it
analyses the reference photo(s) (or loads a saved identity), averages the raw embeddings
and finds the pose keypoints (:class:`FacePose`, in the coordinates of the image they were
found in). The host glue then says where that image lands on the canvas it samples (a
:class:`~instantid_ext.method.geometry.Frame`), and :meth:`FacePose.place` gives the keypoint hint
and the face mask in exactly those coordinates (:class:`PlacedPose`).
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from ..errors import InvalidInputError, NoFaceError
from ..faces.analysis import ChoiceMode, Face, FaceAnalyzer, mean_embedding
from ..faces.identity import IdentityStore
from ..images import ImageLike, image_size, to_rgb_array
from ..method.geometry import Frame, points_inside, visible_fraction
from ..method.ip_adapter import FACE_EMBEDDING_DIM, IPAdapter
from ..method.keypoints import ResizeModeLike, draw_kps, face_mask
from ..method.pose_presets import PoseEdit, apply_edit, preset_kps

if TYPE_CHECKING:
    from ..args import InstantIDArgs

Size = tuple[int, int]
PoseOrigin = Literal["reference", "identity", "pose_image", "init_image", "preset"]

#: How each origin is named in messages and infotext.
ORIGIN_TEXT: dict[str, str] = {
    "reference": "the reference photo",
    "identity": "the saved identity",
    "pose_image": "the pose image",
    "init_image": "the init image",
    "preset": "the pose preset",
}

#: insightface's ArcFace alignment template: where the 5 keypoints sit in the 112×112 face crop.
_ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
_ARCFACE_CROP = 112.0


@dataclass(frozen=True)
class FacePose:
    """Keypoints (and face box) of one face in an image of ``size``: the pose IdentityNet follows."""

    kps: np.ndarray  # float32 (5, 2)
    size: Size  # (width, height) of the image they were found in
    bbox: np.ndarray | None = None  # float32 (4,)
    origin: PoseOrigin = "reference"

    def place(self, frame: Frame) -> PlacedPose:
        """This pose on the canvas ``frame`` maps its image onto."""
        kps = frame.map_points(self.kps)
        if np.asarray(self.kps).dtype.kind == "f":
            kps = kps.astype(np.asarray(self.kps).dtype)  # keeps draw_kps bit-exact for identity frames
        bbox = None if self.bbox is None else frame.map_box(self.bbox)
        return PlacedPose(kps, bbox, frame.size, self.origin)


@dataclass(frozen=True)
class PlacedPose:
    """A pose on the sampled canvas: the keypoints and box exactly where the sampler sees them."""

    kps: np.ndarray  # (5, 2) canvas pixels, may lie outside the canvas
    bbox: np.ndarray | None  # (4,) canvas pixels, unclipped
    size: Size
    origin: PoseOrigin = "reference"

    def then(self, frame: Frame) -> PlacedPose:
        """This pose carried on by ``frame`` (e.g. onto the hires canvas)."""
        kps = frame.map_points(self.kps).astype(np.asarray(self.kps).dtype)
        bbox = None if self.bbox is None else frame.map_box(self.bbox)
        return PlacedPose(kps, bbox, frame.size, self.origin)

    def edited(self, edit: PoseEdit) -> PlacedPose:
        """Mirrored, rotated, scaled and moved on the canvas
        (:mod:`instantid_ext.method.pose_presets`); the box follows."""
        if edit.is_identity:
            return self
        kps = apply_edit(self.kps, self.size, edit)
        return PlacedPose(kps, kps_box(kps), self.size, self.origin)

    def hint(self) -> np.ndarray:
        """IdentityNet's keypoint image at the canvas size (RGB uint8), drawn as in training."""
        return np.asarray(draw_kps(self.size, self.kps))

    def region_mask(self) -> np.ndarray | None:
        """Float mask (H×W, 1 inside the face box), or None without a box."""
        if self.bbox is None:
            return None
        width, height = self.size
        clipped = np.clip(self.bbox, 0.0, [width, height, width, height])
        return face_mask(clipped, self.size).astype(np.float32) / 255.0

    @property
    def kps_inside(self) -> int:
        return int(points_inside(self.kps, self.size).sum())

    @property
    def box_visible(self) -> float:
        """Fraction of the face box on the canvas (1.0 without a box when all keypoints are in)."""
        if self.bbox is None:
            return 1.0 if self.kps_inside == len(self.kps) else self.kps_inside / len(self.kps)
        return visible_fraction(self.bbox, self.size)

    def problem(self) -> str | None:
        """A sentence when the face is partly or wholly off the canvas, else None."""
        inside, total = self.kps_inside, len(self.kps)
        visible = self.box_visible
        if inside == total and visible >= 0.999:
            return None
        width, height = self.size
        where = f"the {width}×{height} canvas"
        if inside == 0:
            what = f"none of the 5 face keypoints from {ORIGIN_TEXT[self.origin]} lie on {where}"
        else:
            what = (
                f"{total - inside} of the 5 face keypoints from {ORIGIN_TEXT[self.origin]} and "
                f"{100 * (1 - visible):.0f}% of the face box fall outside {where}"
            )
        return (
            f"{what[0].upper()}{what[1:]}, so IdentityNet cannot place the face fully. Use an output "
            "size closer to the photo's aspect ratio, another resize mode ('Resize and Fill' keeps "
            "the whole photo), or a pose image."
        )


@dataclass(frozen=True)
class FaceConditioning:
    """Everything a generation needs from the reference face(s), independent of the model."""

    embedding: np.ndarray  # float32 (512,): mean of the raw embeddings
    pose: FacePose | None  # None: no keypoints (pose source "none", or found later in the init image)
    source: str  # "identity:<name>" or "images:<short hash>" for the infotext
    source_count: int

    def with_pose(self, pose: FacePose | None) -> FaceConditioning:
        return FaceConditioning(self.embedding, pose, self.source, self.source_count)

    def hint_image(self, output_size: Size, mode: ResizeModeLike) -> np.ndarray:
        """The keypoint image with the pose's photo laid out on ``output_size`` by ``mode``.

        Black without a pose: IdentityNet then adds identity through the face tokens without
        constraining the pose (the "no keypoints" mode users ask for).
        """
        if self.pose is None:
            width, height = output_size
            return np.zeros((height, width, 3), dtype=np.uint8)
        return self.pose.place(Frame.resize(self.pose.size, output_size, mode)).hint()


def kps_box(kps: np.ndarray) -> np.ndarray:
    """A face box for keypoints that came without one (presets, edited poses).

    The box the ArcFace alignment crop covers: the similarity transform that takes
    insightface's 112×112 template keypoints onto ``kps`` (least squares), applied to the
    crop's corners. For a detected frontal face this is close to the detector's own box.
    """
    src = _ARCFACE_TEMPLATE
    dst = np.asarray(kps, dtype=np.float64)
    src_c, dst_c = src - src.mean(0), dst - dst.mean(0)
    # Least-squares similarity (Umeyama without reflection) as a complex ratio: dst ≈ a·src + t.
    zs, zd = src_c[:, 0] + 1j * src_c[:, 1], dst_c[:, 0] + 1j * dst_c[:, 1]
    a = np.vdot(zs, zd) / np.vdot(zs, zs)
    corners = np.array([0, _ARCFACE_CROP, _ARCFACE_CROP + 1j * _ARCFACE_CROP, 1j * _ARCFACE_CROP])
    centre_s = src.mean(0)[0] + 1j * src.mean(0)[1]
    mapped = a * (corners - centre_s) + (dst.mean(0)[0] + 1j * dst.mean(0)[1])
    return np.array([mapped.real.min(), mapped.imag.min(), mapped.real.max(), mapped.imag.max()])


def preset_pose(name: str, size: Size) -> PlacedPose:
    """A named pose preset drawn on a canvas of ``size``."""
    kps = preset_kps(name, size)
    return PlacedPose(kps, kps_box(kps), size, "preset")


def black_hint(size: Size) -> np.ndarray:
    """The hint without keypoints (pose source "none")."""
    width, height = size
    return np.zeros((height, width, 3), dtype=np.uint8)


def images_digest(images: Sequence[ImageLike]) -> str:
    """A short, stable hash of the reference pixels (for infotext and caches)."""
    digest = hashlib.sha256()
    for image in images:
        rgb = to_rgb_array(image)
        digest.update(str(rgb.shape).encode())
        digest.update(rgb.tobytes())
    return digest.hexdigest()[:10]


def pose_from_image(
    analyzer: FaceAnalyzer,
    image: ImageLike,
    origin: PoseOrigin,
    mode: ChoiceMode = "largest",
    index: int = 0,
    mask: np.ndarray | None = None,
) -> FacePose:
    """The pose of one face of ``image``: the one under ``mask`` if given, else by ``mode``/``index``.

    ``mask`` (H×W, nonzero = inside, the image's size) is an inpaint mask: the face whose box
    it covers most is the one being restyled.
    """
    label = ORIGIN_TEXT[origin]
    if mask is None:
        face = analyzer.analyze_one(image, mode, index, label=label)
    else:
        faces = analyzer.analyze(image, label=label)
        face = face_under_mask(faces, mask, label)
    return FacePose(face.kps, image_size(image), face.bbox, origin)


def face_under_mask(faces: Sequence[Face], mask: np.ndarray, label: str) -> Face:
    """The face whose box the inpaint mask covers most; :class:`NoFaceError` if none is covered."""
    inside = np.asarray(mask) > 0
    height, width = inside.shape[:2]
    best, best_cover = None, 0
    for face in faces:
        x1, y1, x2, y2 = (round(float(v)) for v in face.bbox)
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
        cover = int(inside[y1:y2, x1:x2].sum()) if x2 > x1 and y2 > y1 else 0
        if cover > best_cover:
            best, best_cover = face, cover
    if best is None:
        found = f"{len(faces)} face{'s' if len(faces) != 1 else ''} found there" if faces else "no face there"
        msg = (
            f"The inpaint mask covers no face in {label} ({found}). Paint the mask over the face to "
            "restyle, or set the pose source to 'reference'."
        )
        raise NoFaceError(msg)
    return best


def build_face_conditioning(
    args: InstantIDArgs,
    analyzer: Callable[[], FaceAnalyzer],
    identities: IdentityStore | None = None,
) -> FaceConditioning:
    """Analyse the references in ``args`` (or load the saved identity) and find the pose.

    ``analyzer`` is called only when a photo has to be analysed, so a saved identity with
    pose source "reference" or "none" never needs insightface. The face choice applies to the
    first reference photo; further photos (more pictures of the same person) use their largest
    face, and the pose image has a choice of its own. Pose source "init_image" (and "auto" in
    img2img) is resolved by the host, which knows the init image: the pose is None here then.
    """
    pose: FacePose | None = None
    wants_reference_pose = args.pose_source in ("reference", "auto")
    if args.identity:
        if identities is None:
            msg = "Saved identities are not available here; give a reference photo instead."
            raise InvalidInputError(msg)
        identity = identities.load(args.identity)
        embedding = identity.embedding
        source, count = f"identity:{identity.name}", identity.source_count
        if wants_reference_pose:
            if identity.kps is None or identity.image_size is None:
                if args.pose_source == "reference":
                    msg = (
                        f"The saved identity '{identity.name}' has no keypoints; choose a pose image "
                        "or the pose source 'none'."
                    )
                    raise InvalidInputError(msg)
            else:
                pose = FacePose(identity.kps, identity.image_size, identity.bbox, "identity")
    else:
        if not args.images:
            msg = "InstantID has no reference face: add a face photo or choose a saved identity."
            raise InvalidInputError(msg)
        faces: list[Face] = []
        for i, image in enumerate(args.images):
            label = f"reference image {i + 1}" if len(args.images) > 1 else "the reference image"
            mode, index = (args.face_choice, args.face_index) if i == 0 else ("largest", 0)
            faces.append(analyzer().analyze_one(image, mode, index, label=label))
        weights = list(args.image_weights) or None
        embedding = mean_embedding(faces, weights)
        source, count = f"images:{images_digest(args.images)}", len(faces)
        if wants_reference_pose:
            pose = FacePose(faces[0].kps, image_size(args.images[0]), faces[0].bbox, "reference")
    if args.pose_source == "pose_image":
        if args.pose_image is None:
            msg = "The pose source is 'pose image' but no pose image was given."
            raise InvalidInputError(msg)
        pose = pose_from_image(
            analyzer(), args.pose_image, "pose_image", args.pose_face_choice, args.pose_face_index
        )
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
    """The Resampler's output for both CFG branches, float32 on the CPU: ``cond`` ``[1, 16, 2048]``;
    ``uncond`` ``[1, 16, 2048]``, or ``[B, 16, 2048]`` with negative noise drawn per image (one
    set per image of the batch, in batch order)."""

    cond: torch.Tensor
    uncond: torch.Tensor

    @classmethod
    def from_embedding(
        cls,
        adapter: IPAdapter,
        embedding: np.ndarray,
        noise: float = 0.0,
        seed: int | Sequence[int] | None = None,
    ) -> FaceTokens:
        """cond = Resampler(embedding); uncond = Resampler(zeros), as the reference's CFG batch.

        With ``noise`` > 0, uncond = Resampler(noise · U[0, 1)^512) instead (see
        :func:`uncond_noise_embedding`), which needs the generation ``seed``: one seed gives
        ``[1, 16, 2048]``; a sequence of seeds (a batch's, one per image) gives one draw per
        seed, ``[B, 16, 2048]``, each exactly the tokens that seed gives alone. ``noise`` 0
        (the default) is exactly the zeros path, ``[1, 16, 2048]`` whatever the seeds.
        """
        value = check_noise(noise)
        cond = adapter.face_tokens(torch.tensor(np.asarray(embedding, dtype=np.float32)))
        if value == 0.0:
            uncond = adapter.uncond_tokens()
        else:
            if seed is None:
                msg = "The negative-embedding noise needs the generation seed; none was given."
                raise InvalidInputError(msg)
            seeds = list(seed) if isinstance(seed, list | tuple) else [seed]  # type: ignore[list-item]
            if not seeds:
                msg = "The negative-embedding noise needs the generation seed; none was given."
                raise InvalidInputError(msg)
            drawn: dict[object, torch.Tensor] = {}
            for one in seeds:
                if one not in drawn:  # Resampler one draw at a time: each equals its seed alone
                    drawn[one] = adapter.face_tokens(uncond_noise_embedding(value, one)).cpu()
            uncond = torch.cat([drawn[one] for one in seeds])
        return cls(cond=cond.cpu(), uncond=uncond.cpu())


__all__ = [
    "ORIGIN_TEXT",
    "FaceConditioning",
    "FacePose",
    "FaceTokens",
    "PlacedPose",
    "black_hint",
    "build_face_conditioning",
    "check_noise",
    "face_under_mask",
    "images_digest",
    "kps_box",
    "pose_from_image",
    "preset_pose",
    "uncond_noise_embedding",
]
