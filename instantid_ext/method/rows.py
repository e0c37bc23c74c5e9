"""Which rows of a UNet call are conditional, and which image of the batch each belongs to.

The face attention and IdentityNet's context both need, per UNet call, the cond/uncond kind
of every row (cond rows see the face tokens, uncond rows the negative ones) and, where the
negative tokens differ per image, the image each row belongs to. The host tells the
:class:`RowRouter` the denoiser's layout once per denoiser call; a forward pre-hook on the UNet
then hands each UNet call its rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

UNCOND, COND = 0, 1

# sd-webui-controlnet prepends one token filled with ±1024 to every crossattn context to tell
# cond rows (+) from uncond rows (-); its UNet forward strips it before the blocks.
CN_MARK_TOKEN = 1024.0
CN_MARK_EPS = 1e-3


def cond_flags_from_cn_marker(context: torch.Tensor | None) -> torch.Tensor | None:
    """``[B]`` long flags (1 = cond) read from ControlNet's marker token, or None if unmarked."""
    if context is None or context.ndim != 3 or context.shape[1] < 2:
        return None
    first = context[:, 0, :].float()
    if float((first.abs() - CN_MARK_TOKEN).abs().mean()) >= CN_MARK_EPS:
        return None
    return (first.mean(dim=1) > 0).long()


class RowRouter:
    """Tells the hooks, per UNet call, which rows are conditional and how far sampling is.

    The WebUI's CFG denoiser lays a step's batch out as all cond rows, then the uncond rows,
    and calls the UNet on consecutive slices of it: once on everything (``batch_cond_uncond``),
    in chunks, cond and uncond separately (prompts of different lengths), or cond only (uncond
    skipped). :meth:`begin_step` is called once per denoiser call with the layout; each UNet
    call then takes the next rows. Without layout information ControlNet's marker token is
    read; failing both, all rows count as conditional.
    """

    def __init__(self) -> None:
        self.progress = 0.0
        self.flags: torch.Tensor | None = None
        """Long ``[B]`` for the current UNet call (1 = cond)."""
        self.uniform: int | None = None
        """COND or UNCOND when the current call holds only one kind of row."""
        self.images: tuple[int, ...] = ()
        """For each row of the current UNet call, the image of the batch it belongs to."""
        self.latent_size: tuple[int, int] | None = None
        self._n_cond: int | None = None
        self._n_total = 0
        self._offset = 0
        self._warned = False
        self._pattern: tuple[int, ...] = ()
        self._flag_tensors: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}
        self._slot_tensors: dict[tuple, torch.Tensor] = {}

    def begin_step(self, n_cond: int, n_total: int, progress: float | None = None) -> None:
        """Declare the next denoiser call: ``n_cond`` cond rows first, ``n_total`` rows in all."""
        self._n_cond, self._n_total, self._offset = n_cond, n_total, 0
        if progress is not None:
            self.progress = progress

    def route(self, batch: int, device: torch.device, context: torch.Tensor | None = None) -> None:
        """Set :attr:`flags` and :attr:`images` for a UNet call of ``batch`` rows."""
        pattern: tuple[int, ...] | None = None
        images: tuple[int, ...] | None = None
        if self._n_cond is not None and self._offset + batch <= self._n_total:
            rows = range(self._offset, self._offset + batch)
            pattern = tuple(int(r < self._n_cond) for r in rows)
            images = tuple(self._image_of(r) for r in rows)
            self._offset += batch
        if pattern is None:
            marked = cond_flags_from_cn_marker(context)
            pattern = None if marked is None else tuple(marked.tolist())
        if pattern is None:
            if not self._warned and self._n_cond is not None:
                logger.warning("UNet called outside the denoiser's layout; treating its rows as conditional")
                self._warned = True
            pattern = (COND,) * batch
        self._pattern = pattern
        self.images = images if images is not None else images_in_order(pattern)
        self.uniform = pattern[0] if len(set(pattern)) == 1 else None
        # The same few layouts repeat every step: keep their device tensors, copy once.
        key = (pattern, device)
        flags = self._flag_tensors.get(key)
        if flags is None:
            flags = self._flag_tensors[key] = torch.tensor(pattern, dtype=torch.long, device=device)
        self.flags = flags

    def _image_of(self, row: int) -> int:
        """The image a row of the denoiser's layout belongs to: the uncond rows are the batch's
        images in order; the cond rows too, or (several prompts per image) spread over them."""
        n_cond = self._n_cond or 0
        n_uncond = self._n_total - n_cond
        if row >= n_cond:
            return row - n_cond
        if n_uncond <= 0 or n_uncond == n_cond:
            return row
        return row * n_uncond // n_cond

    def images_for(self, batch: int) -> tuple[int, ...] | None:
        """:attr:`images` when the current UNet call has ``batch`` rows, else None."""
        return self.images if len(self.images) == batch else None

    def slots(self, count: int, device: torch.device) -> torch.Tensor:
        """Long ``[B]`` for the current call: which of ``count`` uncond token sets (one per image)
        each uncond row takes, and ``count`` (the cond set) for a cond row."""
        key = (self._pattern, self.images, count, device)
        slots = self._slot_tensors.get(key)
        if slots is None:
            values = [
                count if flag == COND else min(image, count - 1)
                for flag, image in zip(self._pattern, self.images, strict=True)
            ]
            slots = self._slot_tensors[key] = torch.tensor(values, dtype=torch.long, device=device)
        return slots

    def unet_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """``UNetModel.forward(x, timesteps, context, y)`` pre-hook: route this call's rows."""
        x = args[0] if args else kwargs.get("x")
        context = kwargs.get("context", args[2] if len(args) > 2 else None)
        if x is None:
            return
        self.latent_size = (int(x.shape[-2]), int(x.shape[-1]))
        self.route(int(x.shape[0]), x.device, context)


def images_in_order(pattern: Sequence[int]) -> tuple[int, ...]:
    """The image of each row when a call holds whole halves of the batch (ControlNet's marker
    without the denoiser's layout): the cond rows in order, the uncond rows in order."""
    seen = [0, 0]
    images = []
    for flag in pattern:
        images.append(seen[flag])
        seen[flag] += 1
    return tuple(images)
