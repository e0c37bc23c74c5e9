"""Several people in one generation: the WebUI side of :mod:`instantid_ext.job.people`.

A :class:`People` object belongs to one :class:`~instantid_ext.webui.run.Run`. It analyses each
person and the faces of the pose/init image in ``before_process``, lays the regions and
keypoints out on the sampled canvas once ``p.init`` fixed it (and on the hires canvas), and
builds what sampling needs: one face-token set per person for the UNet (each confined to its
region), the people's tokens side by side as IdentityNet's context with its region-bound
attention, and the per-region IdentityNet strengths as the residual map.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from ..args import InstantIDArgs
from ..faces.analysis import Face
from ..job.conditioning import FaceTokens
from ..job.people import (
    PersonConditioning,
    PersonPlacement,
    canvas_faces,
    describe,
    person_conditioning,
    place_people,
)
from ..job.resources import Resources
from ..method.attention import IPIdentity
from ..method.geometry import Frame
from ..method.identitynet_regions import (
    RegionalIdentityNet,
    identity_context,
    multi_identity_hint,
    region_strength_map,
)
from ..method.ip_adapter import IPAdapter
from . import frames

logger = logging.getLogger(__name__)


PoseFaces = tuple[list["Face"], str, tuple[int, int]]


@dataclass
class Pass:
    """One sampling pass's layout: canvas size, hint, and each person's region and keypoints."""

    size: tuple[int, int]
    hint: np.ndarray
    masks: list[np.ndarray]  # float32 H×W per person

    def strength_map(self, strengths: list[float]) -> np.ndarray:
        """``Σ strength_r · mask_r``: IdentityNet's residual multiplier (the unit's weight is 1)."""
        return region_strength_map(self.masks, strengths).numpy()


@dataclass
class People:
    """The people of one generation and their layout."""

    args: InstantIDArgs
    conditionings: list[PersonConditioning]
    tokens: list[FaceTokens]
    pose_faces: PoseFaces | None
    """Faces of the pose or init image, which one ("pose_image"/"init_image"), its size."""
    passes: dict[str, Pass] = field(default_factory=dict)
    placements: list[PersonPlacement] = field(default_factory=list)

    @classmethod
    def prepare(cls, args: InstantIDArgs, p: Any, resources: Resources, adapter: IPAdapter) -> People:
        identities = resources.identities()
        conditionings = [
            person_conditioning(person, number, resources.analyzer, identities)
            for number, person in enumerate(args.people, start=1)
        ]
        tokens = [FaceTokens.from_embedding(adapter, c.embedding) for c in conditionings]
        return cls(args, conditionings, tokens, _pose_faces(args, p, resources))

    # -- layout ------------------------------------------------------------------------------
    def place(self, p: Any) -> None:
        """Regions, keypoints and hints on the first-pass canvas and, with hires fix, the hires one."""
        canvas = frames.canvas_size(p)
        faces = None
        if self.pose_faces is not None:
            found, origin, size = self.pose_faces
            if origin == "init_image":
                frame = frames.init_frame(p, size)
            else:
                frame = frames.layout_frame(p, size, self.args.resize_mode)
            faces = canvas_faces(found, frame.map_points)
        self.placements = place_people(self.args, self.conditionings, canvas, faces, self.args.resize_mode)
        kps = [placed.kps for placed in self.placements if placed.kps is not None]
        masks = [placed.region.mask.astype(np.float32) for placed in self.placements]
        self.passes["first"] = Pass(canvas, multi_identity_hint(canvas, kps), masks)
        hires = frames.hires_frame(p)
        if hires is not None:
            hr_kps = [hires.map_points(k).astype(np.float32) for k in kps]
            hr_masks = [warp_mask(mask, hires) for mask in masks]
            self.passes["hires"] = Pass(hires.size, multi_identity_hint(hires.size, hr_kps), hr_masks)

    # -- what sampling needs -----------------------------------------------------------------------
    @property
    def weights(self) -> list[float]:
        return [person.id_weight for person in self.args.people]

    @property
    def strengths(self) -> list[float]:
        return [person.control_weight for person in self.args.people]

    def ip_identities(self, name: str = "first") -> list[IPIdentity]:
        masks = self.passes[name].masks
        return [
            IPIdentity(t.cond, t.uncond, scale=w, mask=torch.from_numpy(m))
            for t, w, m in zip(self.tokens, self.weights, masks, strict=True)
        ]

    def masks(self, name: str) -> list[torch.Tensor]:
        return [torch.from_numpy(m) for m in self.passes[name].masks]

    def context_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """IdentityNet's context: the people's tokens side by side, ``(1, 16·k, 2048)`` each; with
        negative noise the uncond half is ``(B, 16·k, 2048)``, one row per image of the batch."""
        cond = identity_context([t.cond for t in self.tokens])
        images = max(int(t.uncond.shape[0]) for t in self.tokens)
        if images == 1:
            return cond, identity_context([t.uncond for t in self.tokens])
        rows = [identity_context([_row(t.uncond, image) for t in self.tokens]) for image in range(images)]
        return cond, torch.cat(rows)

    # -- what a run asks of its people (as of :class:`~.person.OnePerson`) ---------------------
    people_mode = True
    """The face pass and per-person scores are for one person: with people they are skipped or per region."""

    @property
    def laid_out(self) -> bool:
        return bool(self.passes)

    def forget_layout(self) -> None:
        self.passes.clear()

    def hint(self, name: str) -> np.ndarray | None:
        """The keypoint image IdentityNet gets in pass ``name`` (None: no such pass)."""
        layout = self.passes.get(name)
        return None if layout is None else layout.hint

    def renoise(self, adapter: IPAdapter, noise: float, seeds: Sequence[int]) -> None:
        """Each person's uncond tokens from seeded noise, one draw per image of the batch."""
        self.tokens = [
            FaceTokens.from_embedding(adapter, c.embedding, noise=noise, seed=seeds)
            for c in self.conditionings
        ]

    def hires_masks(self) -> list[torch.Tensor] | None:
        """The UNet's region masks for the hires pass, or None without hires fix."""
        return self.masks("hires") if "hires" in self.passes else None

    def unit_mask(self, name: str) -> np.ndarray | None:
        """IdentityNet's residual multiplier for pass ``name``: each region's strength."""
        layout = self.passes.get(name)
        return None if layout is None else layout.strength_map(self.strengths)

    def identitynet_hook(self, bridge: Any, unit: Any, name: str, current_pass: Any) -> RegionalIdentityNet:
        """IdentityNet's attention bound to each person's region for pass ``name`` (and, on ControlNet
        1.1.444-1.1.445, which has no per-unit mask, the strengths as a residual map)."""
        param = unit.param
        assert param is not None
        strengths = None if hasattr(param, "effective_region_mask") else self.strengths
        return RegionalIdentityNet(param.control_model, self.masks(name), strengths)

    def hint_images(self) -> list[Image.Image]:
        return [Image.fromarray(self.passes[name].hint) for name in ("first", "hires") if name in self.passes]

    def infotext(self, extra: dict[str, str]) -> None:
        """Each person's source and settings instead of one source."""
        del extra["InstantID source"]
        extra["InstantID people"] = describe(self.args, self.conditionings)


def _pose_faces(
    args: InstantIDArgs, p: Any, resources: Resources
) -> tuple[list[Face], str, tuple[int, int]] | None:
    """The faces the people's regions and keypoints may follow: the pose image's, else the init image's."""
    from ..images import image_size

    if args.pose_source == "pose_image" and args.pose_image is not None:
        faces = resources.analyzer().analyze(args.pose_image, label="the pose image")
        return faces, "pose_image", image_size(args.pose_image)
    if args.pose_source in ("auto", "init_image") and frames.is_img2img(p):
        image = frames.init_image(p)
        faces = resources.analyzer().analyze(image, label="the init image")
        return faces, "init_image", image_size(image)
    return None


def _row(tokens: torch.Tensor, image: int) -> torch.Tensor:
    """One image's ``(16, 2048)`` tokens of a ``(B, 16, 2048)`` set (its only row when B is 1)."""
    return tokens[min(image, int(tokens.shape[0]) - 1)]


def warp_mask(mask: np.ndarray, frame: Frame) -> np.ndarray:
    """A canvas mask carried onto another canvas by ``frame`` (nearest neighbour, as the latents)."""
    (sx, sy), (bx, by) = frame.scale, frame.offset
    matrix = np.array([[sx, 0.0, bx], [0.0, sy, by]], dtype=np.float64)
    return cv2.warpAffine(mask, matrix, frame.size, flags=cv2.INTER_NEAREST, borderValue=0.0)
