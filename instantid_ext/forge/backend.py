"""The Forge family's own API for InstantID: its UNet patcher, its ControlNet and their loader.

What is used (Forge Classic and reForge; file:line at Forge Classic 5136ce20):

- ``p.sd_model.forge_objects.unet``: the host's ``UnetPatcher``. A sampling pass uses whatever
  UNet patcher that attribute holds after the scripts' ``process_before_every_sampling``
  (``modules/processing.py:1298``, hires ``:1411``, img2img ``:1730``); a patched *clone* is
  put there, so the shared one is never changed, and the host puts a fresh one back per batch
  (``:886``) and, with a LoRA, per pass (``:1294``).
- ``UnetPatcher.set_model_attn2_replace(patch, block, number, transformer_index)``
  (``ldm_patched/modules/model_patcher.py:166``) for the 70 attn2 layers.
- ``modules_forge.shared.try_load_supported_control_model(path)`` (``:55``): the host's
  ControlNet loader (diffusers-format IdentityNet included); ``.model_patcher`` is the
  ``ControlNet``.
- ``modules_forge.controlnet.apply_controlnet_advanced(unet, control, hint, strength, start,
  end)`` (``:4``): copies the ControlNet, sets its hint and range, and returns a clone of
  ``unet`` with it at the head of the ControlNet chain. Its ``advanced_mask_weighting`` is not
  used: reForge's ControlNet ignores it (the node masks its own residuals).
- ``ldm_patched.ldm.modules.attention.optimized_attention(q, k, v, heads)``: the attention the
  host runs in every attn2 layer; the text part of a patched layer is computed by it, so a
  layer's text attention is what it is without InstantID.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DependencyError, IncompatibleModelError
from ..method.attn2_replace import Attn2FacePatch, FaceAttention, ReplacePatch
from .identitynet import FaceContext, identitynet_node

logger = logging.getLogger(__name__)


class ForgeBackend:
    """The host functions InstantID needs, found once; :meth:`detect` says what is missing."""

    def __init__(self, apply_controlnet: Any, load_control_model: Any, attention_module: Any) -> None:
        self._apply_controlnet = apply_controlnet
        self._load_control_model = load_control_model
        self._attention = attention_module
        self._lock = threading.Lock()
        self._identitynet: tuple[tuple[str, int, int], Any] | None = None

    @classmethod
    def detect(cls) -> ForgeBackend:
        """The backend of the running Forge-family host; raises :class:`DependencyError` if this
        build lacks the API (a Forge whose backend moved: Forge 2 and Neo use ``backend.*``)."""
        try:
            from ldm_patched.ldm.modules import attention
            from modules_forge.controlnet import apply_controlnet_advanced
            from modules_forge.shared import try_load_supported_control_model
            from modules_forge.unet_patcher import UnetPatcher
        except ImportError as err:
            msg = (
                f"This Forge build lacks the UNet patcher and ControlNet API InstantID uses ({err}); "
                "InstantID runs on Forge Classic, reForge and AUTOMATIC1111 1.6.0 to 1.10.1."
            )
            raise DependencyError(msg) from err
        if not callable(getattr(UnetPatcher, "set_model_attn2_replace", None)):
            msg = "This Forge build's UNet patcher has no attn2 replace patch API; InstantID needs one."
            raise DependencyError(msg)
        return cls(apply_controlnet_advanced, try_load_supported_control_model, attention)

    def text_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        """The host's attention (read per call: the host chooses it at start)."""
        return self._attention.optimized_attention(q, k, v, heads)

    # -- IdentityNet ----------------------------------------------------------------------
    def load_identitynet(self, path: Path) -> Any:
        """The host's ``ControlNet`` for the IdentityNet file at ``path``, loaded once and kept
        while the file is unchanged (one copy: about 5 GB in float32)."""
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if self._identitynet is not None and self._identitynet[0] == key:
                return self._identitynet[1]
            self._identitynet = None  # a changed or other file: let the old one go first
            logger.info("Loading IdentityNet %s with the host's ControlNet loader", path.name)
            patcher = self._load_control_model(str(path))
            control = getattr(patcher, "model_patcher", None)
            if control is None or not callable(getattr(control, "get_control", None)):
                msg = (
                    f"The host's ControlNet loader could not load {path.name} as a ControlNet; use the "
                    "IdentityNet file of InstantID (diffusion_pytorch_model.safetensors)."
                )
                raise IncompatibleModelError(msg)
            if not hasattr(control, "control_model"):
                kind = type(control).__name__
                msg = f"{path.name} loads as a {kind}, not as a ControlNet; it is not IdentityNet."
                raise IncompatibleModelError(msg)
            self._identitynet = (key, control)
            return control

    # -- one sampling pass ----------------------------------------------------------------
    def patched_unet(self, unet: Any, face: FaceAttention, identitynet: IdentityNetPass | None) -> Any:
        """A clone of the host's UNet patcher ``unet`` with the face attention on its 70 attn2
        layers (after any replace patch already there, but never after one of ours from an
        earlier pass) and IdentityNet at the head of its ControlNet chain."""
        patched = unet.clone()
        for key, patch in face.patches(_earlier_patches(patched)).items():
            patched.set_model_attn2_replace(patch, *key)
        if identitynet is None:
            return patched
        # The face mask goes to the node, not to the host (reForge ignores the host's).
        node = identitynet_node(identitynet.control, identitynet.face, identitynet.mask)
        return self._apply_controlnet(
            patched, node, identitynet.hint, identitynet.strength, identitynet.start, identitynet.end
        )


class IdentityNetPass:
    """What IdentityNet gets in one sampling pass: the host's loaded ControlNet, the face
    context, the keypoint hint ``(1, 3, H, W)`` in 0…1, the weight, the start/end fractions and
    an optional residual mask ``(1, 1, H, W)``."""

    __slots__ = ("control", "end", "face", "hint", "mask", "start", "strength")

    def __init__(
        self,
        control: Any,
        face: FaceContext,
        hint: np.ndarray,
        strength: float,
        start: float,
        end: float,
        mask: torch.Tensor | None = None,
    ) -> None:
        self.control = control
        self.face = face
        self.hint = torch.from_numpy(np.array(hint, dtype=np.float32)).div(255.0).permute(2, 0, 1)[None]
        self.strength = float(strength)
        self.start, self.end = float(start), float(end)
        self.mask = None if mask is None else mask.float()


def _earlier_patches(unet: Any) -> dict[Any, ReplacePatch]:
    """The attn2 replace patches already on ``unet``, ours from an earlier pass taken off."""
    options: Mapping[str, Any] = getattr(unet, "model_options", None) or {}
    replace = options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    earlier: dict[Any, ReplacePatch] = {}
    for key, patch in replace.items():
        while isinstance(patch, Attn2FacePatch):
            patch = patch.prior
        if patch is not None:
            earlier[key] = patch
    return earlier


@functools.cache
def backend() -> ForgeBackend:
    """The running host's backend, found on first use (a refusal is not kept: it raises again)."""
    return ForgeBackend.detect()
