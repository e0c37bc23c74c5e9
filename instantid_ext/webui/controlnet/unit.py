"""Our ControlNet unit: built with ControlNet's own class and put into a free slot of the job's
arguments, and put back when the job closes."""

from __future__ import annotations

import dataclasses
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import InvalidInputError
from .access import INTERNAL_ERRORS, ControlNetAccess, Owner

logger = logging.getLogger(__name__)


_UNIT_COUNT_SETTING = "'Multi-ControlNet: ControlNet unit number' in Settings → ControlNet"


_REQUIRED_UNIT_FIELDS = frozenset(
    {"enabled", "module", "model", "weight", "image", "resize_mode", "low_vram", "processor_res"}
    | {"guidance_start", "guidance_end", "pixel_perfect", "control_mode"}
)


@dataclass(eq=False)
class InjectedUnit:
    """Our unit in one job: where it sits in ``p.script_args`` and what ControlNet made of it."""

    slot: int
    """Index in ``p.script_args``."""
    unit_index: int
    """Index among ControlNet's units (0 = "ControlNet Unit 0" in its panel)."""
    unit: Any
    """The ``ControlNetUnit`` we placed."""
    original: Any
    """What the slot held before."""
    hint: np.ndarray
    model_key: str
    weight: float
    guidance_start: float
    guidance_end: float
    param: Any = None
    """ControlNet's ``ControlParams`` for our unit, once :meth:`ControlNetBridge.apply_face_context` ran."""
    hr_hint: Any = None
    """The hires pass's hint tensor, swapped in by :meth:`ControlNetBridge.enter_hires`."""
    _infotext_after: dict[str, Any] | None = field(default=None, repr=False)


class UnitSlots(ControlNetAccess):
    """Puts our unit into a free ControlNet slot."""

    def _is_free(self, arg: Any) -> bool:
        """A slot we may take: empty, or a unit that ControlNet itself treats as disabled."""
        if arg is None:
            return True
        if not isinstance(arg, self._ec.ControlNetUnit | dict) and not hasattr(arg, "__dict__"):
            return False  # not a unit: someone else's business
        try:
            unit = self._ec.to_processing_unit(arg)
        except (*INTERNAL_ERRORS, RuntimeError):
            return False  # unreadable for ControlNet as well; never overwrite it
        return not bool(getattr(unit, "enabled", True))

    def _make_unit(self, hint: np.ndarray, weight: float, start: float, end: float, key: str) -> Any:
        """Our unit, built with ControlNet's own class and enums (works for 1.1.444-1.1.455).

        Module "none" (ControlNet's identity preprocessor, present in every version) with our
        finished hint, rather than our registered preprocessor: nothing needs guessing whether
        an image is already a keypoint drawing, unit validation (1.1.448+) does not depend on
        our registration having happened, and ControlNet's preprocessor cache is not involved.
        "Just Resize" is an exact no-op because the hint is drawn at the output size.
        """
        cls = self._ec.ControlNetUnit
        values: dict[str, Any] = {
            "enabled": True,
            "module": "none",
            "model": key,
            "weight": float(weight),
            "image": hint,
            "resize_mode": self._ec.ResizeMode.RESIZE,
            "low_vram": False,
            "processor_res": -1,
            "threshold_a": -1,
            "threshold_b": -1,
            "guidance_start": float(start),
            "guidance_end": float(end),
            "pixel_perfect": False,
            "control_mode": self._ec.ControlMode.BALANCED,
            "save_detected_map": False,  # no keypoint image appended to the outputs
            "inpaint_crop_input_image": False,  # "Only masked" must not crop our finished hint
        }
        fields = _unit_fields(cls)
        missing = _REQUIRED_UNIT_FIELDS - fields
        if missing:
            msg = f"ControlNetUnit has no field(s) {sorted(missing)}"
            raise AttributeError(msg)
        return cls(**{name: value for name, value in values.items() if name in fields})

    def inject_unit(
        self,
        owner: Owner,
        p: Any,
        hint: np.ndarray,
        weight: float,
        guidance_start: float,
        guidance_end: float,
        model_key: str,
    ) -> InjectedUnit:
        """Put our enabled unit into the last disabled ControlNet slot of ``p.script_args``.

        Call it from ``before_process`` (ControlNet reads the units in its ``process``).
        The argument tuple keeps its length, so no script's argument positions move; the
        user's units are not touched. ``hint`` is the keypoint image, RGB uint8, drawn at
        exactly the size ControlNet targets (:func:`hint_size`); :meth:`apply_face_context`
        replaces it once the WebUI has fixed the sampled geometry.
        """
        check_hint(hint)
        _check_schedule(weight, guidance_start, guidance_end)
        with self._internals("add InstantID's unit"):
            script = self._cn_script(p)
            args = p.script_args
            first, stop = int(script.args_from), int(script.args_to)
            if args is None or len(args) < stop:
                msg = "ControlNet's arguments are missing from this job"
                raise IndexError(msg)
            free = [i for i in range(first, stop) if self._is_free(args[i])]
            if not free:
                count = stop - first
                msg = (
                    f"All {count} ControlNet units are in use, so InstantID has none left for IdentityNet: "
                    f"raise {_UNIT_COUNT_SETTING} (then reload the UI) or turn one unit off."
                )
                raise InvalidInputError(msg)
            slot = free[-1]
            unit = self._make_unit(hint, weight, guidance_start, guidance_end, model_key)
            new = list(args)
            new[slot] = unit
            p.script_args = tuple(new) if isinstance(args, tuple) else new
        handle = InjectedUnit(
            slot=slot,
            unit_index=slot - first,
            unit=unit,
            original=args[slot],
            hint=hint,
            model_key=model_key,
            weight=float(weight),
            guidance_start=float(guidance_start),
            guidance_end=float(guidance_end),
        )
        owner.own(f"ControlNet unit {handle.unit_index}", lambda: _restore_slot(p, handle))
        w, h = hint.shape[1], hint.shape[0]
        logger.info("IdentityNet runs as ControlNet unit %d (%d×%d hint)", handle.unit_index, w, h)
        return handle


def _restore_slot(p: Any, handle: InjectedUnit) -> None:
    """Put the slot's original argument back if our unit is still there."""
    args = getattr(p, "script_args", None)
    if args is None or not 0 <= handle.slot < len(args) or args[handle.slot] is not handle.unit:
        return
    new = list(args)
    new[handle.slot] = handle.original
    p.script_args = tuple(new) if isinstance(args, tuple) else new


def hint_size(p: Any) -> tuple[int, int]:
    """``(width, height)`` ControlNet resizes hints to: the job size floored to a multiple of 8."""
    return int(p.width) // 8 * 8, int(p.height) // 8 * 8


def _unit_fields(cls: type) -> set[str]:
    fields = getattr(cls, "model_fields", None) or getattr(cls, "__fields__", None)  # pydantic (1.1.448+)
    if isinstance(fields, dict):
        return set(fields)
    if dataclasses.is_dataclass(cls):  # 1.1.444-1.1.447
        return {f.name for f in dataclasses.fields(cls)}
    return set(inspect.signature(cls).parameters)


def check_hint(hint: Any) -> None:
    if not isinstance(hint, np.ndarray) or hint.dtype != np.uint8 or hint.ndim != 3 or hint.shape[2] != 3:
        got = f"{hint.dtype} {hint.shape}" if isinstance(hint, np.ndarray) else type(hint).__name__
        msg = f"The IdentityNet hint must be an RGB uint8 array of shape (H, W, 3), got {got}."
        raise InvalidInputError(msg)


def _check_schedule(weight: float, start: float, end: float) -> None:
    if not 0.0 <= float(weight) <= 2.0:
        msg = f"The IdentityNet weight must be between 0 and 2, got {weight}."
        raise InvalidInputError(msg)
    if not 0.0 <= float(start) <= float(end) <= 1.0:
        msg = f"IdentityNet start and end must satisfy 0 ≤ start ≤ end ≤ 1, got {start} and {end}."
        raise InvalidInputError(msg)
