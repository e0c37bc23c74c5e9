"""Per batch and pass: our unit runs IdentityNet on the face tokens, with our hint and mask."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...errors import DependencyError, InvalidInputError
from ...method.rows import images_in_order
from .access import ControlNetAccess
from .cleanup import HIRES_PROMPT_CACHES, forget_marked_prompts
from .unit import InjectedUnit, check_hint

logger = logging.getLogger(__name__)


_INFOTEXT_KEY = re.compile(r"ControlNet (\d+)")


class FaceContext(ControlNetAccess):
    """Switches our unit to the face tokens and keeps its hints, mask and infotext right."""

    def apply_face_context(
        self,
        p: Any,
        unit: InjectedUnit,
        cond_tokens: Any,
        uncond_tokens: Any,
        hint: Any = None,
        hr_hint: Any = None,
        region_mask: Any = None,
        images_of: Callable[[int], Sequence[int] | None] | None = None,
    ) -> None:
        """Make ControlNet feed IdentityNet the face tokens instead of the prompt, and our hint.

        Call it from ``process_batch``, i.e. after ControlNet's ``process`` (or, with a
        refiner, its ``before_process_batch``) built this batch's parameters and after
        ``p.init`` fixed the geometry. ``cond_tokens`` and ``uncond_tokens`` are
        ``(1, 16·k, 2048)``: the Resampler of the face embedding(s) and of zeros. ControlNet then
        computes, per UNet call, ``cond * mark + uncond * (1 - mark)`` with its per-row
        cond/uncond mark, so cond rows see the face and uncond rows the zero-face tokens.
        ``uncond_tokens`` may also be ``(B, 16·k, 2048)``, one set per image of the batch
        (negative noise drawn from each image's seed): ControlNet's ``ImageEmbed`` takes one
        row per row of the UNet call, whose row count changes from call to call (the whole
        batch, cond and uncond halves, chunks), so a subclass of it picks each row's set when
        ControlNet evaluates it: ``images_of(rows)`` says which image each row of the current
        UNet call belongs to (the attention patch's row router knows the denoiser's layout);
        without it, or when it does not know, the rows of each kind are taken as the batch's
        images in order, as in a call on the whole batch.
        ``hint``/``hr_hint`` (RGB uint8 at the first-pass and hires canvas) replace the hints
        ControlNet resized from the unit's image. ``region_mask`` (H×W in [0, 1]) scales
        IdentityNet's residuals where ControlNet supports a per-unit mask (1.1.446+); older
        versions get it from :meth:`residual_mask_hook` during sampling. Only our unit changes.
        """
        _check_tokens(cond_tokens, uncond_tokens)
        with self._internals("give IdentityNet its face tokens"):
            script = self._cn_script(p)
            network = script.latest_network
            if network is None:
                msg = (
                    "ControlNet did not set up its units for this generation (its own error is in the "
                    "console above), so IdentityNet cannot run."
                )
                raise DependencyError(msg)
            units = list(script.enabled_units)
            params = list(network.control_params)
            if len(units) != len(params):
                msg = f"{len(units)} enabled units but {len(params)} unit parameters"
                raise IndexError(msg)
            index = _find_unit(units, unit)
            param = params[index]
            types = self._hook.ControlModelType
            if param.control_model_type not in (types.ControlNet, types.InstantID):
                msg = (
                    f"ControlNet loaded the IdentityNet file '{unit.model_key}' as "
                    f"{param.control_model_type.name}, not as a ControlNet; check that it is InstantID's "
                    "IdentityNet (ControlNetModel) file."
                )
                raise InvalidInputError(msg)
            param.control_model_type = types.InstantID
            param.control_context_override = _image_embed(
                self._hook.ImageEmbed, cond_tokens, uncond_tokens, images_of
            )
            # xyz grid's "[ControlNet] …" axes rewrite every unit's weight and guidance.
            param.weight = unit.weight
            param.start_guidance_percent = unit.guidance_start
            param.stop_guidance_percent = unit.guidance_end
            if hint is not None:
                param.hint_cond = _hint_tensor(hint, like=param.hint_cond)
                param.used_hint_cond = None
            computed = getattr(param, "hr_hint_cond", None)
            like = computed if computed is not None else unit.hr_hint  # later batches: ours
            if hr_hint is not None and like is not None:
                # ControlNet tells the passes apart by comparing the latent's height with its two
                # hints' heights, which fails when hires fix changes only the width (it then feeds
                # the hires hint to the first pass). Keep one hint per pass instead: the hires one
                # is swapped in by enter_hires.
                unit.hr_hint = _hint_tensor(hr_hint, like=like)
                param.hr_hint_cond = None
            if region_mask is not None and hasattr(param, "effective_region_mask"):
                param.effective_region_mask = _mask_tensor(region_mask)
            unit.param = param
            _drop_infotext(p, unit, index)

    def drop_unit_infotext(self, p: Any, unit: InjectedUnit) -> None:
        """Remove our unit's "ControlNet N" infotext entry again if ControlNet wrote it since.

        ControlNet writes it in every ``process``; ADetailer re-runs that on a copy of ``p``
        (which shares its infotext dict) after a batch's last image, just before that image's
        infotext is made.
        """
        with self._internals("tidy ControlNet's infotext"):
            units = list(getattr(self._cn_script(p), "enabled_units", None) or [])
            if units:
                _drop_infotext(p, unit, _find_unit(units, unit))

    @staticmethod
    def enter_hires(unit: InjectedUnit) -> None:
        """``before_hr``: give our unit the hires hint (see :meth:`apply_face_context`)."""
        param = unit.param
        if param is None or unit.hr_hint is None:
            return
        param.hint_cond = unit.hr_hint
        for name in ("used_hint_cond", "used_hint_cond_latent", "used_hint_inpaint_hijack"):
            if hasattr(param, name):
                setattr(param, name, None)  # ControlNet re-reads the hint on its next call

    @staticmethod
    def set_region_mask(unit: InjectedUnit, region_mask: Any) -> None:
        """Swap the residual mask (before the hires pass, whose canvas may be cropped)."""
        param = unit.param
        if param is not None and hasattr(param, "effective_region_mask"):
            param.effective_region_mask = None if region_mask is None else _mask_tensor(region_mask)

    @staticmethod
    def residual_mask_hook(unit: InjectedUnit, mask_of: Callable[[], Any], tokens: int) -> Any:
        """For ControlNet 1.1.444-1.1.445 (no per-unit mask): a removable hook masking our residuals.

        ``mask_of`` returns the current ``(1, 1, H, W)`` mask tensor (or None). The hook sits on
        a network ControlNet may share with a user's unit, so it acts only on calls whose
        context holds ``tokens`` tokens (our face tokens); other calls pass untouched. Returns
        None when ControlNet applies the mask itself.
        """
        param = unit.param
        if param is None or hasattr(param, "effective_region_mask"):
            return None
        return param.control_model.register_forward_hook(_masking_hook(mask_of, tokens), with_kwargs=True)

    def mark_hires_conds(self, p: Any) -> None:
        """Mark the hires-fix prompts as cond/uncond for ControlNet; call it from ``before_hr``.

        ControlNet marks prompts only when sampling starts, but the WebUI computes the
        hires prompts later, inside sampling. Unmarked, ControlNet treats every row as a
        cond row, so uncond rows would get the face tokens. Marking is idempotent and in
        place; the class-level hires prompt cache is emptied so that a later job without
        ControlNet never gets our marked prompts, as ControlNet does for the first pass.
        """
        with self._internals("mark the hires-fix prompts"):
            if self._cn_script(p).latest_network is None:
                # ControlNet's UNet hook, which strips the marker token, is not in place:
                # a marked prompt would reach the UNet as is.
                logger.warning("ControlNet is not active in this generation; hires prompts left as they are")
                return
            mark = self._hook.mark_prompt_context
            for name, positive in (("hr_c", True), ("hr_uc", False)):
                conds = getattr(p, name, None)
                if conds is not None:
                    setattr(p, name, mark(conds, positive))
            forget_marked_prompts(p, HIRES_PROMPT_CACHES)


def _hint_tensor(hint: np.ndarray, like: Any) -> Any:
    """An RGB uint8 hint as ControlNet keeps it: ``(1, 3, H, W)`` float in [0, 1], on ``like``'s device."""
    import torch

    check_hint(hint)
    tensor = torch.from_numpy(np.array(hint, dtype=np.uint8)).float().div(255.0).permute(2, 0, 1)[None]
    if isinstance(like, torch.Tensor):
        tensor = tensor.to(device=like.device, dtype=like.dtype)
    return tensor


def _mask_tensor(region_mask: Any) -> Any:
    """``(1, 1, H, W)`` float mask, as ControlNet's ``effective_region_mask``."""
    import torch

    return torch.as_tensor(np.asarray(region_mask), dtype=torch.float32)[None, None]


def _masking_hook(mask_of: Callable[[], Any], tokens: int) -> Callable[..., Any]:
    """A forward hook multiplying each 4-D residual by the current mask resized to its size."""
    import torch
    import torch.nn.functional as F

    resized: dict[tuple, Any] = {}

    def scale(residual: Any, mask: Any) -> Any:
        if not isinstance(residual, torch.Tensor) or residual.ndim != 4:
            return residual
        key = (id(mask), tuple(residual.shape[-2:]), residual.device, residual.dtype)
        if key not in resized:
            small = F.interpolate(mask, size=residual.shape[-2:], mode="bilinear", align_corners=False)
            resized[key] = small.to(device=residual.device, dtype=residual.dtype)
        return residual * resized[key]

    def hook(module: Any, args: Any, kwargs: Any, output: Any) -> Any:
        context = kwargs.get("context")
        if context is None or context.shape[1] != tokens:
            return None  # another unit's call on the same network
        mask = mask_of()
        if mask is None:
            return None
        if isinstance(output, list | tuple):
            return type(output)(scale(r, mask) for r in output)
        return scale(output, mask)

    return hook


def _find_unit(units: list[Any], handle: InjectedUnit) -> int:
    """Our unit among ControlNet's enabled units.

    1.1.448+ keeps our object; 1.1.444-1.1.447 hands out shallow copies (same image
    object); the model key is the last resort.
    """
    for index, unit in enumerate(units):
        if unit is handle.unit:
            return index
    for match in (
        lambda u: getattr(u, "image", None) is handle.hint,
        lambda u: getattr(u, "model", None) == handle.model_key and getattr(u, "module", None) == "none",
    ):
        hits = [index for index, unit in enumerate(units) if match(unit)]
        if len(hits) == 1:
            return hits[0]
    msg = (
        "ControlNet is not running InstantID's unit in this generation (ControlNet batch mode from "
        "the img2img Batch tab is not supported with IdentityNet), so IdentityNet cannot run."
    )
    raise DependencyError(msg)


def _drop_infotext(p: Any, handle: InjectedUnit, index: int) -> None:
    """Remove ControlNet's "ControlNet <index>" entry for our unit and renumber the later ones.

    ControlNet numbers entries by position among enabled units and may write them again
    each batch (with a refiner), so the edit is redone only when the entries changed.
    """
    params = getattr(p, "extra_generation_params", None)
    if not isinstance(params, dict):
        return
    current = {k: v for k, v in params.items() if _INFOTEXT_KEY.fullmatch(str(k))}
    if handle._infotext_after is not None and current == handle._infotext_after:
        return
    if f"ControlNet {index}" in params:
        rebuilt: dict[Any, Any] = {}
        for key, value in params.items():
            match = _INFOTEXT_KEY.fullmatch(str(key))
            n = int(match[1]) if match else -1
            if n == index:
                continue
            rebuilt[f"ControlNet {n - 1}" if n > index else key] = value
        params.clear()
        params.update(rebuilt)
    handle._infotext_after = {k: v for k, v in params.items() if _INFOTEXT_KEY.fullmatch(str(k))}


def _check_tokens(cond: Any, uncond: Any) -> None:
    shapes = [tuple(getattr(t, "shape", ())) for t in (cond, uncond)]
    if any(len(s) != 3 or s[0] < 1 for s in shapes) or shapes[0][0] != 1 or shapes[0][1:] != shapes[1][1:]:
        msg = (
            "The face tokens must be a (1, N, C) cond tensor and a (1, N, C) or (B, N, C) uncond "
            f"tensor, got {shapes[0]} and {shapes[1]}."
        )
        raise InvalidInputError(msg)


_PER_IMAGE_EMBEDS: dict[type, type] = {}


def _image_embed(base: type, cond: Any, uncond: Any, images_of: Any) -> Any:
    """ControlNet's ``ImageEmbed(cond, uncond)``; with one uncond set per image, a subclass that
    gives each uncond row of a UNet call its own image's set (:func:`_per_image_embed`)."""
    if int(uncond.shape[0]) == 1:
        return base(cond, uncond)
    embed = _per_image_embed(base)(cond, uncond)
    embed.images_of = images_of
    return embed


def _per_image_embed(base: type) -> type:
    """A subclass of ControlNet's ``ImageEmbed`` (a NamedTuple, so ControlNet's ``isinstance``
    check holds) whose ``eval`` builds, per UNet call, one uncond row per row of the call, then
    lets ControlNet's own ``eval`` mix cond and uncond by its cond mark."""
    cached = _PER_IMAGE_EMBEDS.get(base)
    if cached is not None:
        return cached
    import torch

    class PerImageEmbed(base):  # type: ignore[misc, valid-type]
        images_of: Any = None

        def eval(self, cond_mark: Any) -> Any:
            rows = int(cond_mark.shape[0])
            images = None if self.images_of is None else self.images_of(rows)
            if images is None or len(images) != rows:
                images = images_in_order(
                    [int(flag) for flag in (cond_mark.reshape(rows, -1)[:, 0] > 0.5).tolist()]
                )
            uncond = self.uncond_emb
            last = int(uncond.shape[0]) - 1
            index = torch.tensor([min(int(i), last) for i in images], dtype=torch.long, device=uncond.device)
            cond = self.cond_emb.expand(rows, *self.cond_emb.shape[1:])
            return base(cond, uncond.index_select(0, index)).eval(cond_mark)

    _PER_IMAGE_EMBEDS[base] = PerImageEmbed
    return PerImageEmbed
