"""IdentityNet through sd-webui-controlnet: one ControlNet unit that InstantID drives itself.

IdentityNet is an SDXL ControlNet whose cross-attention context is the 16 face tokens
instead of the prompt. ControlNet can run such a model (its own InstantID mode), but only
for files whose path contains ``instant_id`` and only right after an IP-Adapter unit. So a
job lets ControlNet run our file as a *plain* ControlNet, puts one enabled unit into a free
ControlNet slot, and once ControlNet has built its per-unit parameters switches that unit
(and only it) to ControlNet's InstantID context path with our face tokens and our hint,
drawn in the coordinates the sampler really uses.

One copy of IdentityNet in memory: when ControlNet lists the file under a name it types as
a plain ControlNet, the job uses that very name, so ControlNet's model cache holds one entry
shared with any unit of the user's. Otherwise (the file's path contains ``instant_id``) the
job registers a name of its own and, for the duration of the job, lets ControlNet's loader
build that name from the network ControlNet already holds for the same file, typed as a
plain ControlNet. No file is created or renamed.

ControlNet is reached only through ``sys.modules``: importing it by a dotted extension path
would create a second copy of its modules (and of its registries). If it is missing or
older than :data:`MIN_CONTROLNET`, :meth:`ControlNetBridge.detect` raises one
:class:`DependencyError` naming the version to install. Every change a job makes to the job
or to ControlNet is registered with that job (:class:`Owner`) and undone when it closes.

ControlNet internals used (identical from 1.1.444 to 1.1.455 unless noted):

- ``scripts.controlnet_version.version_flag`` ("v1.1.455").
- ``scripts.external_code``: ``ControlNetUnit``, ``ResizeMode``, ``ControlMode``,
  ``find_cn_script``, ``to_processing_unit`` (a dict without ``enabled`` is enabled at
  1.1.444-1.1.447 and disabled from 1.1.448 on).
- ``scripts.global_state.cn_models``: the model name -> file path dict ControlNet loads from.
- The ControlNet ``Script`` class: ``model_cache`` (name -> ``ControlModel(model, type)``)
  and the static ``build_control_model(p, unet, name)`` its ``load_control_model`` calls.
- ``scripts.supported_preprocessor.Preprocessor`` (added in 1.1.444): the preprocessor registry.
- ``scripts.hook``: ``ControlModelType``, ``ImageEmbed`` (the class ``UnetHook`` checks with
  ``isinstance``) and ``mark_prompt_context``; ``ControlParams.hint_cond`` (a setter that
  makes the hook re-read it), ``hr_hint_cond`` and, from 1.1.446, ``effective_region_mask``.
- The ControlNet script object: ``args_from``/``args_to``, ``enabled_units`` and
  ``latest_network.control_params`` (one ``ControlParams`` per enabled unit, same order).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from ..errors import DependencyError, InstantIDError, InvalidInputError, ModelFileError, NoFaceError
from ..method.keypoints import draw_kps
from ..models.discovery import DIFFUSERS_WEIGHTS, short_hash

logger = logging.getLogger(__name__)

Version = tuple[int, int, int]
FaceDetector = Callable[[np.ndarray], np.ndarray | None]

MIN_CONTROLNET: Version = (1, 1, 444)
#: Newest release checked against; newer ones are used with a warning.
TESTED_CONTROLNET: Version = (1, 1, 455)

PREPROCESSOR_NAME = "instantid_keypoints"
PREPROCESSOR_LABEL = "InstantID keypoints"
PREPROCESSOR_TAG = "Instant-ID"

#: ControlNet types a model as InstantID (and then demands an IP-Adapter unit before it)
#: when this appears anywhere in the lower-cased path of the file it loads.
CN_INSTANTID_PATH_MARK = "instant_id"
#: Stem of the model name a job registers when ControlNet's own name for the file would be
#: typed InstantID. "xl" makes ControlNet's version check see an SDXL model; no "instant_id",
#: "shuffle", "sd15" or punctuation that ControlNet's infotext refuses.
MODEL_KEY_STEM = "InstantID-IdentityNet-SDXL"

_INSTALL = (
    "Install sd-webui-controlnet {min} or newer from the Extensions tab (Available → ControlNet, "
    "or 'Install from URL' https://github.com/Mikubill/sd-webui-controlnet) and restart the WebUI"
)
_UNIT_COUNT_SETTING = "'Multi-ControlNet: ControlNet unit number' in Settings → ControlNet"

_MODULE_NAMES = {
    "version": "scripts.controlnet_version",
    "external_code": "scripts.external_code",
    "global_state": "scripts.global_state",
    "hook": "scripts.hook",
    "preprocessors": "scripts.supported_preprocessor",
}
_REQUIRED_UNIT_FIELDS = frozenset(
    {"enabled", "module", "model", "weight", "image", "resize_mode", "low_vram", "processor_res"}
    | {"guidance_start", "guidance_end", "pixel_perfect", "control_mode"}
)
_INFOTEXT_KEY = re.compile(r"ControlNet (\d+)")
#: What a mismatch with ControlNet's internals looks like; turned into one DependencyError.
_INTERNAL_ERRORS = (AttributeError, KeyError, IndexError, TypeError, ValueError, AssertionError)


class Owner(Protocol):
    """Who answers for a change (a job): ``own`` records how to undo it."""

    def own(self, what: str, undo: Callable[[], None]) -> None: ...


def _fmt(version: Version | None) -> str:
    return "of unknown version" if version is None else ".".join(map(str, version))


def _install_hint() -> str:
    return _INSTALL.format(min=_fmt(MIN_CONTROLNET))


def parse_version(flag: object) -> Version | None:
    """``(1, 1, 455)`` from ControlNet's ``version_flag`` ("v1.1.455"), or None."""
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", str(flag or ""))
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]))


# -- the keypoint preprocessor ------------------------------------------------------------
def keypoint_image(image: np.ndarray, detector: FaceDetector | None) -> np.ndarray:
    """The IdentityNet hint for ``image``: its largest face's keypoints drawn at its size.

    Used by "InstantID keypoints" when someone picks it in ControlNet's own panel; our
    own unit never goes through it (see :meth:`ControlNetBridge.inject_unit`). ``detector``
    takes an RGB uint8 image and returns the 5×2 keypoints of its largest face, or None.
    """
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        msg = f"InstantID keypoints needs an 8-bit image, got {array.dtype} of shape {array.shape}."
        raise InvalidInputError(msg)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    rgb = np.ascontiguousarray(array[..., :3])  # the /detect route may hand over RGBA
    if detector is None:
        msg = (
            "InstantID keypoints cannot detect faces: InstantID's face analysis is not set up "
            "(see the InstantID messages in the console)."
        )
        raise DependencyError(msg)
    kps = detector(rgb)
    if kps is None:
        msg = "InstantID keypoints found no face in the ControlNet input image; use a clear face photo."
        raise NoFaceError(msg)
    height, width = rgb.shape[:2]
    return np.array(draw_kps((width, height), kps), dtype=np.uint8)


def _keypoint_preprocessor_class(base: type, parameter: type) -> type:
    """A subclass of ControlNet's own ``Preprocessor`` (built at run time: it lives in CN).

    Deliberately **not** a dataclass: ``@dataclass`` would generate ``__eq__`` and drop the
    base's name-based ``__hash__``, breaking ControlNet's lru-cache and its
    ``unload_unused`` set. The face detector lives on the instance, which ControlNet's
    registry keeps for the life of the process.
    """

    class InstantIDKeypoints(base):  # type: ignore[misc, valid-type]
        instantid_owned = True

        def __init__(self, detector: FaceDetector | None) -> None:
            super().__init__(name=PREPROCESSOR_NAME)
            self._label = PREPROCESSOR_LABEL
            self.tags = [PREPROCESSOR_TAG]
            self.returns_image = True
            self.detector = detector
            # The keypoints are drawn at the input's own size; a resolution would do nothing.
            self.slider_resolution = parameter(
                label="Resolution", minimum=64, maximum=2048, value=512, step=8, visible=False
            )

        def __call__(
            self,
            input_image: np.ndarray,
            resolution: Any = None,
            slider_1: Any = None,
            slider_2: Any = None,
            slider_3: Any = None,
            input_mask: Any = None,
            **kwargs: Any,
        ) -> np.ndarray:
            # A plain ndarray, not ``Preprocessor.Result``: the latter only exists from 1.1.446.
            return keypoint_image(input_image, self.detector)

        def unload(self) -> bool:
            # ControlNet calls unload() on every preprocessor each run (1.1.446+); our
            # detector is not ControlNet's to move around.
            return False

    return InstantIDKeypoints


# -- a job's unit -------------------------------------------------------------------------
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


# -- the bridge ---------------------------------------------------------------------------
class ControlNetBridge:
    """The one door to sd-webui-controlnet; get it with :meth:`detect`."""

    def __init__(self, version: Version | None, modules: dict[str, ModuleType]) -> None:
        self.version = version
        self._ec = modules["external_code"]
        self._gs = modules["global_state"]
        self._hook = modules["hook"]

    @property
    def version_text(self) -> str:
        return _fmt(self.version)

    # -- detection ----------------------------------------------------------------------
    @classmethod
    def detect(cls) -> ControlNetBridge:
        """The bridge to the ControlNet this WebUI runs; :class:`DependencyError` if unusable."""
        ec = sys.modules.get(_MODULE_NAMES["external_code"])
        if ec is None or not hasattr(ec, "ControlNetUnit"):
            msg = (
                "IdentityNet needs the ControlNet extension, which is not installed or not enabled. "
                f"{_install_hint()}."
            )
            raise DependencyError(msg)
        version_module = sys.modules.get(_MODULE_NAMES["version"])
        version = parse_version(getattr(version_module, "version_flag", None))
        has_registry = _MODULE_NAMES["preprocessors"] in sys.modules
        if (version is not None and version < MIN_CONTROLNET) or (version is None and not has_registry):
            msg = f"ControlNet {_fmt(version)} is too old for InstantID's IdentityNet. {_install_hint()}."
            raise DependencyError(msg)
        modules: dict[str, ModuleType] = {"external_code": ec}
        for role in ("global_state", "hook"):
            module = sys.modules.get(_MODULE_NAMES[role])
            if module is None:
                msg = (
                    f"ControlNet {_fmt(version)} is loaded without its '{_MODULE_NAMES[role]}' module, "
                    f"so IdentityNet cannot run through it. Reinstall it: {_install_hint()}."
                )
                raise DependencyError(msg)
            modules[role] = module
        if version is not None and version > TESTED_CONTROLNET:
            logger.warning(
                "ControlNet %s is newer than the %s InstantID was checked with; report problems with it.",
                _fmt(version),
                _fmt(TESTED_CONTROLNET),
            )
        return cls(version, modules)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Whether IdentityNet can run through ControlNet, and a sentence for the UI/API."""
        try:
            bridge = cls.detect()
        except DependencyError as err:
            return False, str(err)
        return True, f"ControlNet {bridge.version_text} found: IdentityNet runs through it."

    @contextlib.contextmanager
    def _internals(self, action: str) -> Iterator[None]:
        """Turn a surprise inside ControlNet into one readable :class:`DependencyError`."""
        try:
            yield
        except InstantIDError:
            raise
        except _INTERNAL_ERRORS as err:
            msg = (
                f"Could not {action} in ControlNet {self.version_text} ({type(err).__name__}: {err}). "
                f"InstantID works with sd-webui-controlnet {_fmt(MIN_CONTROLNET)} to "
                f"{_fmt(TESTED_CONTROLNET)}; update both extensions, and report this if it persists."
            )
            raise DependencyError(msg) from err

    # -- preprocessor -------------------------------------------------------------------
    def register_preprocessor(self, detector: FaceDetector | None) -> bool:
        """Add "InstantID keypoints" to ControlNet's preprocessors; True if it is there now.

        Idempotent (the WebUI re-runs registration on every UI reload while ControlNet's
        registry survives: the registered instance then gets the new ``detector``), and a
        no-op if the registry is missing.
        """
        sp = sys.modules.get(_MODULE_NAMES["preprocessors"])
        if sp is None:
            return False
        with self._internals(f"register the '{PREPROCESSOR_LABEL}' preprocessor"):
            registry = sp.Preprocessor
            taken = [
                registry.all_processors.get(PREPROCESSOR_LABEL),
                registry.all_processors_by_name.get(PREPROCESSOR_NAME),
            ]
            if any(entry is not None for entry in taken):
                if all(getattr(entry, "instantid_owned", False) for entry in taken):
                    for entry in taken:
                        entry.detector = detector
                    return True
                logger.warning(
                    "Another extension already registered a ControlNet preprocessor named '%s'; "
                    "InstantID's is not added.",
                    PREPROCESSOR_LABEL,
                )
                return False
            cls = _keypoint_preprocessor_class(registry, sp.PreprocessorParameter)
            registry.add_supported_preprocessor(cls(detector))
        logger.info("Added the '%s' preprocessor to ControlNet", PREPROCESSOR_LABEL)
        return True

    # -- model ----------------------------------------------------------------------------
    def identitynet_model_key(self, owner: Owner, p: Any, path: Path) -> str:
        """The model name for our unit, with ControlNet set up to load ``path`` under it once.

        ``path`` is a single diffusers-format ``.safetensors`` or a diffusers folder. When
        ControlNet lists the file under a name it types as a plain ControlNet, that name is
        returned: ControlNet's cache then holds one model for our unit and the user's.
        Otherwise a name of our own is registered for the job, and ControlNet's loader is
        patched for the job to build it from the network it already caches for the same file
        (any name), or else to load it once, typed as a plain ControlNet.
        """
        weights = _weights_file(Path(path))
        with self._internals("register the IdentityNet model"):
            models = self._gs.cn_models
            for name, listed in list(models.items()):
                if _same_file(listed, weights) and CN_INSTANTID_PATH_MARK not in str(listed).lower():
                    return str(name)
            key = f"{MODEL_KEY_STEM} [{short_hash(weights)[:8]}]"
            self._set_model_entry(owner, key, str(weights.absolute()))
            script_cls = type(self._cn_script(p))
            self._drop_duplicate(script_cls, key, weights)
            self._patch_loader(owner, script_cls, key, weights)
        return key

    def share_model_cache(self, p: Any) -> None:
        """Let this tab's ControlNet use the models the other tab cached for the same checkpoint.

        ControlNet's model cache is one per process, but each tab's script remembers on its own
        the checkpoint it last ran with, and empties the whole cache when that differs from the
        job's (it starts with none): the first ControlNet job of the second tab reloaded
        IdentityNet from disk though the cache held it for the very checkpoint in use. When the
        other tab's script last ran with this checkpoint, this tab's script is told so: the value
        its own ``process`` is about to write anyway.
        """
        script = self._cn_script(p)
        current = getattr(getattr(p, "sd_model", None), "sd_model_hash", None)
        if current is None or getattr(script, "latest_model_hash", current) == current:
            return
        runners = sys.modules.get("modules.scripts")
        for name in ("scripts_txt2img", "scripts_img2img"):
            other = self._ec.find_cn_script(getattr(runners, name, None))
            if other not in (None, script) and getattr(other, "latest_model_hash", None) == current:
                script.latest_model_hash = current
                return

    def _set_model_entry(self, owner: Owner, key: str, path: str) -> None:
        models = self._gs.cn_models
        if models.get(key) == path:
            return
        missing = object()
        previous = models.get(key, missing)
        models[key] = path

        def undo() -> None:
            if models.get(key) != path:
                return
            if previous is missing:
                del models[key]
            else:
                models[key] = previous

        owner.own(f"ControlNet's model list entry '{key}'", undo)

    def _cached_entry(self, script_cls: type, weights: Path, exclude: str) -> Any:
        """The ``ControlModel`` ControlNet's cache holds for this file under another name, or None."""
        models = self._gs.cn_models
        for name, entry in list(getattr(script_cls, "model_cache", {}).items()):
            if name == exclude:
                continue
            listed = models.get(name)
            if listed is not None and _same_file(listed, weights):
                return entry
        return None

    def _drop_duplicate(self, script_cls: type, key: str, weights: Path) -> None:
        """Forget our cache entry if it holds a second copy of a network cached under another name."""
        cache = getattr(script_cls, "model_cache", None)
        if not cache or key not in cache:
            return
        other = self._cached_entry(script_cls, weights, exclude=key)
        if other is not None and other.model is not cache[key].model:
            del cache[key]
            logger.info("Dropped a second copy of IdentityNet from ControlNet's model cache")

    def _patch_loader(self, owner: Owner, script_cls: type, key: str, weights: Path) -> None:
        """For this job, make ControlNet build ``key`` as a plain ControlNet sharing a cached network."""
        original = script_cls.__dict__.get("build_control_model")
        if original is None:
            msg = "ControlNet's Script has no build_control_model"
            raise AttributeError(msg)
        build = original.__func__ if isinstance(original, staticmethod) else original
        plain = self._hook.ControlModelType.ControlNet
        active = [True]

        def build_control_model(p: Any, unet: Any, model: Any) -> Any:
            if not active[0] or model != key:
                return build(p, unet, model)
            shared = self._cached_entry(script_cls, weights, exclude=key)
            if shared is not None:
                logger.info("IdentityNet shares the network ControlNet already holds for %s", weights.name)
                return shared._replace(type=plain)
            return build(p, unet, model)._replace(type=plain)

        patched = staticmethod(build_control_model)
        script_cls.build_control_model = patched

        def undo() -> None:
            active[0] = False  # a later patch may wrap ours: then ours just passes through
            if script_cls.__dict__.get("build_control_model") is patched:
                script_cls.build_control_model = original

        owner.own("ControlNet's model loader", undo)

    # -- the unit ---------------------------------------------------------------------------
    def _cn_script(self, p: Any) -> Any:
        script = self._ec.find_cn_script(getattr(p, "scripts", None))
        if script is None:
            msg = (
                f"ControlNet {self.version_text} is installed but not active for this generation "
                "(was it disabled in the Extensions tab?), so IdentityNet cannot run; enable it and restart."
            )
            raise DependencyError(msg)
        return script

    def has_script(self, p: Any) -> bool:
        """Whether ControlNet runs in this generation (a nested one may leave it out)."""
        return self._ec.find_cn_script(getattr(p, "scripts", None)) is not None

    def _is_free(self, arg: Any) -> bool:
        """A slot we may take: empty, or a unit that ControlNet itself treats as disabled."""
        if arg is None:
            return True
        if not isinstance(arg, self._ec.ControlNetUnit | dict) and not hasattr(arg, "__dict__"):
            return False  # not a unit: someone else's business
        try:
            unit = self._ec.to_processing_unit(arg)
        except (*_INTERNAL_ERRORS, RuntimeError):
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
        _check_hint(hint)
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

    # -- per batch ------------------------------------------------------------------------
    def apply_face_context(
        self,
        p: Any,
        unit: InjectedUnit,
        cond_tokens: Any,
        uncond_tokens: Any,
        hint: Any = None,
        hr_hint: Any = None,
        region_mask: Any = None,
    ) -> None:
        """Make ControlNet feed IdentityNet the face tokens instead of the prompt, and our hint.

        Call it from ``process_batch``, i.e. after ControlNet's ``process`` (or, with a
        refiner, its ``before_process_batch``) built this batch's parameters and after
        ``p.init`` fixed the geometry. ``cond_tokens`` and ``uncond_tokens`` are
        ``(1, 16·k, 2048)``: the Resampler of the face embedding(s) and of zeros. ControlNet then
        computes, per UNet call, ``cond * mark + uncond * (1 - mark)`` with its per-row
        cond/uncond mark, so cond rows see the face and uncond rows the zero-face tokens.
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
            param.control_context_override = self._hook.ImageEmbed(cond_tokens, uncond_tokens)
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

    @contextlib.contextmanager
    def preserved(self, p: Any) -> Iterator[None]:
        """Run a generation nested in ``p``'s and give ControlNet back its state for ``p`` after.

        ControlNet keeps one job's state on its (shared) script object and hooks the UNet for
        it; a nested generation's ``process`` unhooks the outer job and replaces that state.
        Afterwards the nested network is unhooked, the outer job's units, detected maps and
        post-processors are put back and, if the outer job was hooked, it is hooked again with
        its own parameters, so the outer job's next batch samples as before. The user's
        IP-Adapter and ControlLLLite units, which ControlNet hooks outside its network and the
        nested job cleared, are hooked back as they were.
        """
        script = self._ec.find_cn_script(getattr(p, "scripts", None))
        if script is None:
            yield
            return
        names = ("latest_network", "enabled_units", "detected_map", "post_processors", "noise_modifier")
        missing = object()
        saved = {name: getattr(script, name, missing) for name in names}
        outer = saved["latest_network"]
        outer_params = getattr(outer, "control_params", None) if outer not in (None, missing) else None
        secondary = _saved_secondary_models()
        try:
            yield
        finally:
            with self._internals("restore ControlNet after a nested generation"):
                current = getattr(script, "latest_network", None)
                if current is not None and current is not outer:
                    current.restore()
                for name, value in saved.items():
                    if value is not missing:
                        setattr(script, name, value)
                if outer_params is not None and getattr(outer, "control_params", None) is None:
                    separate, style_align = _batch_options(script, self._ec)
                    outer.hook(
                        model=host_unet(p),
                        sd_ldm=p.sd_model,
                        control_params=outer_params,
                        process=p,
                        batch_option_uint_separate=separate,
                        batch_option_style_align=style_align,
                    )
                for restore in secondary:
                    restore()

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


# -- a job that failed ----------------------------------------------------------------------
class _NoOutput:
    """What ControlNet's ``postprocess`` reads of ``processed`` when there is no output."""

    def __init__(self) -> None:
        self.images: list[Any] = []
        self.extra_generation_params: dict[str, Any] = {}


def finish_failed_job(p: Any) -> None:
    """Do for ``p``'s ControlNet what its ``postprocess`` would have done, had the job not failed.

    ControlNet hooks the (shared) UNet in its ``process`` and undoes that only in its
    ``postprocess``, which the WebUI skips when a generation raises, or at the next ``process``
    of the *same* tab. A job stopped after ControlNet's ``process`` (our refusal at batch start
    or sampling, or any error) would leave its network on the UNet: the other tab's next job
    then samples through it (stale units, a hint of the wrong size), and a later hook stacks on
    it so that unhooking leaves a network without parameters behind. Its marked prompts would
    stay in the WebUI's prompt caches. Called when such a job closes; a no-op without ControlNet.
    """
    forget_marked_prompts(p)
    ec = sys.modules.get(_MODULE_NAMES["external_code"])
    find = getattr(ec, "find_cn_script", None)
    script = find(getattr(p, "scripts", None)) if callable(find) else None
    if script is None or getattr(script, "latest_network", None) is None:
        return
    args = tuple(getattr(p, "script_args", None) or ())[script.args_from : script.args_to]
    try:
        script.postprocess(p, _NoOutput(), *args)
    except Exception:  # never mask the job's own error
        logger.exception("Could not undo ControlNet's hooks after the failed generation")
        network = getattr(script, "latest_network", None)
        if network is not None:
            network.restore()
            script.latest_network = None
    else:
        logger.info("Undid ControlNet's hooks of the failed generation")


# -- helpers ----------------------------------------------------------------------------------
PROMPT_CACHES = ("cached_c", "cached_uc")
HIRES_PROMPT_CACHES = ("cached_hr_c", "cached_hr_uc")


def forget_marked_prompts(p: Any, names: tuple[str, ...] = PROMPT_CACHES + HIRES_PROMPT_CACHES) -> None:
    """Empty the WebUI's class-level prompt caches (``StableDiffusionProcessing.cached_c`` …).

    ControlNet marks the cached prompts in place when sampling starts and empties the caches
    on the UNet's first call. A job stopped in between (by InstantID, when a batch turned out
    unusable) would leave marked prompts that the next job with the same prompt reuses: a
    plain generation would no longer be bit-identical.
    """
    for cls in type(p).__mro__:
        for name in names:
            if name in vars(cls):
                setattr(cls, name, [None, None])


def host_unet(p: Any) -> Any:
    return p.sd_model.model.diffusion_model


SECONDARY_MODELS = (
    ("scripts.ipadapter.plugable_ipadapter", "all_hacks", "ipadapter_hacks"),
    ("scripts.controlnet_lllite", "all_hack", "lllite_list"),
)
"""ControlNet's models hooked on the UNet's layers outside its network: the module, its table
of hacked layers (layer -> the forward it replaced) and each layer's list of hacks."""


def _saved_secondary_models() -> list[Callable[[], None]]:
    """What IP-Adapter and ControlLLLite units have hooked on the UNet now, and how to put it back.

    ControlNet's ``process`` and ``postprocess`` clear them (``clear_all_secondary_control_models``)
    for every job, a nested one included; each returned function first undoes what is hooked
    then, then re-installs each layer's hacked ``forward``, its hacks and the module's table.
    """
    restores: list[Callable[[], None]] = []
    for module_name, table_name, hacks_name in SECONDARY_MODELS:
        module = sys.modules.get(module_name)
        table = getattr(module, table_name, None)
        if not isinstance(table, dict):
            continue
        layers = {
            layer: (vars(layer).get("forward"), list(getattr(layer, hacks_name, []))) for layer in table
        }
        saved_table = dict(table)
        extra = {name: getattr(module, name) for name in ("current_model",) if hasattr(module, name)}
        hooked = functools.partial(_rehook, module, table_name, hacks_name, layers, saved_table, extra)
        restores.append(hooked)
    return restores


def _rehook(
    module: Any, table_name: str, hacks_name: str, layers: dict[Any, tuple], table: dict, extra: dict
) -> None:
    """Undo the secondary hooks there now, then put back ``layers`` (layer -> its hacked forward
    and hacks, as :func:`_saved_secondary_models` found them), the module's ``table`` (layer ->
    the forward it replaced) and its other state."""
    for layer, forward in list(getattr(module, table_name, {}).items()):
        layer.forward = forward
        setattr(layer, hacks_name, [])
    for layer, (forward, hacks) in layers.items():
        if forward is not None:
            layer.forward = forward
        setattr(layer, hacks_name, hacks)
    setattr(module, table_name, dict(table))
    for name, value in extra.items():
        setattr(module, name, value)


SEPARATE_BATCH_OPTION = "Each ControlNet unit for each image in a batch"
"""``BatchOption.SEPARATE.value`` (``scripts.enums`` from 1.1.448, ``external_code`` before)."""


def _batch_options(script: Any, external_code: Any = None) -> tuple[bool, bool]:
    """ControlNet's "unit separate" and "style align" batch options, as its process reads them."""
    state = getattr(script, "ui_batch_option_state", None) or ["", False]
    option = getattr(sys.modules.get("scripts.enums"), "BatchOption", None)
    option = option or getattr(external_code, "BatchOption", None)
    separate_value = getattr(getattr(option, "SEPARATE", None), "value", SEPARATE_BATCH_OPTION)
    return state[0] == separate_value, bool(state[1])


def _restore_slot(p: Any, handle: InjectedUnit) -> None:
    """Put the slot's original argument back if our unit is still there."""
    args = getattr(p, "script_args", None)
    if args is None or not 0 <= handle.slot < len(args) or args[handle.slot] is not handle.unit:
        return
    new = list(args)
    new[handle.slot] = handle.original
    p.script_args = tuple(new) if isinstance(args, tuple) else new


def _same_file(listed: object, path: Path) -> bool:
    """Whether a path from ControlNet's model list is ``path`` (quotes trimmed, as ControlNet does)."""
    text = str(listed)
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1]
    try:
        return Path(text).samefile(path)
    except OSError:
        return os.path.normcase(Path(text).absolute()) == os.path.normcase(path.absolute())


def _hint_tensor(hint: np.ndarray, like: Any) -> Any:
    """An RGB uint8 hint as ControlNet keeps it: ``(1, 3, H, W)`` float in [0, 1], on ``like``'s device."""
    import torch

    _check_hint(hint)
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


def _check_hint(hint: Any) -> None:
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


def _check_tokens(cond: Any, uncond: Any) -> None:
    shapes = [tuple(getattr(t, "shape", ())) for t in (cond, uncond)]
    if any(len(s) != 3 or s[0] != 1 for s in shapes) or shapes[0] != shapes[1]:
        msg = f"The face tokens must be two (1, N, C) tensors of one shape, got {shapes[0]} and {shapes[1]}."
        raise InvalidInputError(msg)


def _weights_file(path: Path) -> Path:
    """The file ControlNet should load: ``path`` itself, or a diffusers folder's weights."""
    if path.is_dir():
        found = next((path / name for name in DIFFUSERS_WEIGHTS if (path / name).is_file()), None)
        if found is None:
            msg = f"The IdentityNet folder '{path}' has no '{DIFFUSERS_WEIGHTS[0]}'; put the file there."
            raise ModelFileError(msg)
        return found
    if not path.is_file():
        msg = f"The IdentityNet file '{path}' does not exist."
        raise ModelFileError(msg)
    if path.suffix.lower() != ".safetensors":
        msg = f"The IdentityNet file '{path.name}' must be a .safetensors file for ControlNet to load it."
        raise ModelFileError(msg)
    return path
