"""One person: the reference face's tokens, its pose placed where the sampler works, and the
face region.

:class:`OnePerson` and :class:`~instantid_ext.webui.people.People` answer the same questions
for :class:`~instantid_ext.webui.run.Run` (what to draw, which tokens go where, which mask
applies in which pass), so a run has one code path for one to four people. One person keeps
its own numbers: the user's pose edits, "Face region only" as an optional mask, and the
IdentityNet strength as the unit's weight rather than a region map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..args import InstantIDArgs
from ..errors import InstantIDError, InvalidInputError
from ..job.conditioning import (
    ORIGIN_TEXT,
    FaceConditioning,
    FacePose,
    FaceTokens,
    PlacedPose,
    black_hint,
    preset_pose,
)
from ..method.attention import IPIdentity
from ..method.ip_adapter import IPAdapter
from ..method.pose_presets import PoseEdit
from . import frames

PASSES = ("first", "hires")


class OnePerson:
    """One reference face and its layout on the first-pass and hires canvases."""

    people_mode = False
    """The face pass and per-person scores are for one person."""

    def __init__(
        self,
        args: InstantIDArgs,
        conditioning: FaceConditioning,
        tokens: FaceTokens,
        warn: Callable[[str], None],
        fail: Callable[[InstantIDError], None],
    ) -> None:
        self.args = args
        self.conditioning = conditioning
        self.tokens = [tokens]
        self._warn, self._fail = warn, fail
        self.placed: PlacedPose | None = None
        self.hr_placed: PlacedPose | None = None
        self.first_hint: np.ndarray | None = None
        self.masks: dict[str, torch.Tensor | None] = dict.fromkeys(PASSES)

    @property
    def pose(self) -> FacePose | None:
        return self.conditioning.pose

    # -- layout ------------------------------------------------------------------------------
    @property
    def laid_out(self) -> bool:
        return self.placed is not None or self.first_hint is not None

    def forget_layout(self) -> None:
        self.placed = self.hr_placed = self.first_hint = None
        self.masks = dict.fromkeys(PASSES)

    def place(self, p: Any) -> None:
        """The keypoints (with the user's edits) and the face mask on the canvases of ``p``."""
        canvas = frames.canvas_size(p)
        placed = self._placed_on(p, canvas)
        if placed is None:
            self.first_hint = black_hint(canvas)
            return
        self.placed = placed.edited(self.edit)
        self.first_hint = self.placed.hint()
        hires = frames.hires_frame(p)
        if hires is not None:
            self.hr_placed = self.placed.then(hires)
        self._check_placement()
        if self.args.face_region_only:
            self.masks["first"] = _as_tensor(self.placed.region_mask())
            if self.hr_placed is not None:
                self.masks["hires"] = _as_tensor(self.hr_placed.region_mask())

    def _placed_on(self, p: Any, canvas: tuple[int, int]) -> PlacedPose | None:
        """The pose on the first pass's canvas, before the user's edits."""
        if self.args.pose_source == "preset":
            return preset_pose(self.args.pose_preset, canvas)
        pose = self.pose
        if pose is None:
            return None
        if pose.origin == "init_image":
            return pose.place(frames.init_frame(p, pose.size))
        return pose.place(frames.layout_frame(p, pose.size, self.args.resize_mode))

    @property
    def edit(self) -> PoseEdit:
        a = self.args
        return PoseEdit(a.pose_mirror, a.pose_rotate, a.pose_scale, a.pose_offset_x, a.pose_offset_y)

    def _check_placement(self) -> None:
        assert self.placed is not None
        for placed in (self.placed, self.hr_placed):
            if placed is None:
                continue
            problem = placed.problem()
            if problem is None:
                continue
            if self.args.face_region_only and placed.box_visible <= 0.0:
                msg = (
                    f"'Face region only' is on, but the face box from {ORIGIN_TEXT[placed.origin]} lies "
                    f"entirely outside the {placed.size[0]}×{placed.size[1]} canvas, so InstantID would "
                    "change nothing. Use an output size closer to the photo's aspect ratio, the resize "
                    "mode 'Resize and Fill', a pose image, or turn 'Face region only' off."
                )
                self._fail(InvalidInputError(msg))
                return
            self._warn(problem)

    # -- what sampling needs -----------------------------------------------------------------
    def hint(self, name: str) -> np.ndarray | None:
        """The keypoint image IdentityNet gets in pass ``name`` (None: no hires hint)."""
        if name == "first":
            return self.first_hint
        return None if self.hr_placed is None else self.hr_placed.hint()

    def renoise(self, adapter: IPAdapter, noise: float, seeds: Sequence[int]) -> None:
        """Uncond tokens from seeded noise, one draw per image of the batch (``seeds`` in batch order)."""
        embedding = self.conditioning.embedding
        self.tokens = [FaceTokens.from_embedding(adapter, embedding, noise=noise, seed=seeds)]

    def context_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """IdentityNet's context: the face tokens, cond ``(1, 16, 2048)``, uncond ``(1, 16, 2048)``
        or, with negative noise, ``(B, 16, 2048)`` (one set per image)."""
        return self.tokens[0].cond, self.tokens[0].uncond

    def ip_identities(self, name: str = "first") -> list[IPIdentity]:
        """The face tokens for the UNet: one identity, masked with "Face region only"."""
        tokens = self.tokens[0]
        return [IPIdentity(tokens.cond, tokens.uncond, scale=self.args.id_weight, mask=self.masks[name])]

    def hires_masks(self) -> list[torch.Tensor | None] | None:
        """The UNet's masks for the hires pass, or None when they stay as they are."""
        return [self.masks["hires"]] if self.args.face_region_only else None

    def unit_mask(self, name: str) -> np.ndarray | None:
        """IdentityNet's residual mask for pass ``name`` (None: everywhere)."""
        mask = self.masks.get(name)
        return None if mask is None else mask.numpy()

    def mask_tensor(self, name: str) -> torch.Tensor | None:
        """The face mask of pass ``name``, ``(1, 1, H, W)`` (ControlNet's residual mask form)."""
        mask = self.masks.get(name)
        return None if mask is None else mask[None, None]

    def identitynet_hook(self, bridge: Any, unit: Any, name: str, current_pass: Callable[[], str]) -> Any:
        """On ControlNet 1.1.444-1.1.445 (no per-unit mask) a hook masking IdentityNet's residuals
        with the mask of the pass being sampled; else None."""
        tokens = int(self.tokens[0].cond.shape[1])
        return bridge.residual_mask_hook(unit, lambda: self.mask_tensor(current_pass()), tokens)

    def hint_images(self) -> list[Image.Image]:
        hints = [] if self.first_hint is None else [Image.fromarray(self.first_hint)]
        if self.hr_placed is not None:
            hints.append(Image.fromarray(self.hr_placed.hint()))
        return hints

    def infotext(self, extra: dict[str, str]) -> None:
        """Where the keypoints came from, when the user left it to InstantID or chose a preset."""
        pose = self.pose
        if self.args.pose_source == "preset":
            extra["InstantID keypoints from"] = f"preset {self.args.pose_preset}"
        elif self.args.pose_source == "auto":
            extra["InstantID keypoints from"] = "none" if pose is None else pose.origin.replace("_", " ")


def _as_tensor(mask: np.ndarray | None) -> torch.Tensor | None:
    return None if mask is None else torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
