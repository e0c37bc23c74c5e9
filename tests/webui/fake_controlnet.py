"""A small stand-in for the parts of sd-webui-controlnet that our bridge touches.

It registers the same module names in ``sys.modules`` (``scripts.controlnet_version``,
``scripts.enums``, ``scripts.supported_preprocessor``, ``scripts.external_code`` and
``internal_controlnet.external_code``, ``scripts.global_state``, ``scripts.infotext``,
``scripts.ipadapter.ipadapter_model``, ``scripts.hook``) with the class, attribute and
function names and signatures of ControlNet 1.1.455 for what the bridge uses, and keeps
ControlNet's behaviour where the bridge depends on it:

- ``ControlNetUnit`` is a pydantic model that validates its module and resets
  out-of-range slider values (1.1.448+); with ``version=(1, 1, 444)`` it is the old
  dataclass whose ``enabled`` defaults to True, ``ResizeMode``/``ControlMode`` live in
  ``external_code``, ``get_enabled_units`` hands out shallow copies and
  ``ControlModelType.is_controlnet`` is a method.
- The ControlNet script's ``process`` follows ``controlnet_main_entry``: enabled units ->
  infotext -> one ``ControlParams`` per unit (model type guessed from the file path, as
  ``build_model_by_guess`` does) -> the InstantID-after-IP-Adapter assertion -> ``UnetHook``.
- ``UnetHook.forward`` selects each ControlNet's cross-attention context the way
  ``hook.py`` does: it strips the cond/uncond marker token (``unmark_prompt_context``),
  and an InstantID-typed unit gets ``control_context_override.eval(cond_mark)`` while every
  other unit gets the text context.

Versions older than 1.1.444 have no ``scripts.supported_preprocessor``. Nothing here is
copied from ControlNet; it is written from its documented behaviour.
"""

import copy
import dataclasses
import os
import sys
import types
from abc import ABC, abstractmethod
from collections import OrderedDict, namedtuple
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, NamedTuple

import cv2
import numpy as np
import pydantic
import torch

Version = tuple[int, int, int]

#: Every module name this stand-in may register.
MODULE_NAMES = (
    "scripts.controlnet_version",
    "scripts.enums",
    "scripts.supported_preprocessor",
    "scripts.global_state",
    "scripts.ipadapter.ipadapter_model",
    "scripts.ipadapter.plugable_ipadapter",
    "scripts.hook",
    "scripts.controlnet_model_guess",
    "scripts.infotext",
    "scripts.external_code",
    "internal_controlnet.external_code",
)

POSITIVE_MARK_TOKEN = 1024
NEGATIVE_MARK_TOKEN = -POSITIVE_MARK_TOKEN
MARK_EPS = 1e-3


# -- stand-ins for A1111's prompt conditioning (modules.prompt_parser) ---------------------
ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


@dataclass
class ComposableScheduledPromptConditioning:
    schedules: list
    weight: float = 1.0


@dataclass
class MulticondLearnedConditioning:
    shape: tuple
    batch: list


def sdxl_cond(crossattn: torch.Tensor, steps: int = 20) -> ScheduledPromptConditioning:
    """One SDXL prompt as the WebUI stores it: a dict of ``crossattn`` and ``vector``."""
    return ScheduledPromptConditioning(steps, {"crossattn": crossattn, "vector": torch.zeros(2816)})


def rows_of(cond: Any, uncond: Any) -> torch.Tensor:
    """The UNet context the CFG denoiser builds: cond rows first, then uncond rows."""
    conds = [c.schedules[0].cond["crossattn"] for batch in cond.batch for c in batch]
    unconds = [schedule[0].cond["crossattn"] for schedule in uncond]
    return torch.stack(conds + unconds)


class RecordingControlModel(torch.nn.Module):
    """A control model that records what each call received and returns SDXL-shaped residuals
    (9 down-block residuals at 1, 1/2 and 1/4 of the latent size, then the middle one)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.calls: list[dict[str, Any]] = []

    def forward(self, x, hint, timesteps, context, y, **kwargs):
        self.calls.append({"x": x, "hint": hint, "context": context, "y": y, **kwargs})
        b, _, h, w = x.shape
        sizes = [(h, w)] * 3 + [(h // 2, w // 2)] * 3 + [(h // 4, w // 4)] * 4
        return [torch.ones(b, 4, hh, ww) for hh, ww in sizes]


def _plugable_ipadapter() -> types.ModuleType:
    """``scripts.ipadapter.plugable_ipadapter``: an IP-Adapter unit replaces each attn2 layer's
    ``forward`` on the instance (``hack_blk``), remembering the one it found in the module-level
    ``all_hacks``; ``clear_all_ip_adapter`` puts them all back. Here the hacked forward adds each
    unit's term to the layer's output."""
    module = _module("scripts.ipadapter.plugable_ipadapter", all_hacks={}, current_model=None)

    def attn_forward_hacked(self, x, context=None, **kwargs):
        out = module.all_hacks[self](x, context=context, **kwargs)
        for function in self.ipadapter_hacks:
            out = out + function(self, x)
        return out

    def hack_blk(block, function, target_cls):
        if not hasattr(block, "ipadapter_hacks"):
            block.ipadapter_hacks = []
        if len(block.ipadapter_hacks) == 0:
            module.all_hacks[block] = block.forward
            block.forward = attn_forward_hacked.__get__(block, target_cls)
        block.ipadapter_hacks.append(function)

    def clear_all_ip_adapter():
        for block, forward in module.all_hacks.items():
            block.forward = forward
            block.ipadapter_hacks = []
        module.all_hacks = {}
        module.current_model = None

    module.hack_blk, module.clear_all_ip_adapter = hack_blk, clear_all_ip_adapter
    return module


class PlugableIPAdapter(torch.nn.Module):
    """An IP-Adapter unit's model: ``hook`` hacks every attn2 layer of the UNet."""

    def __init__(self, name: str, plugable: types.ModuleType) -> None:
        super().__init__()
        self.name = name
        self.plugable = plugable
        self.image_emb = None

    def hook(self, model, weight=1.0, **kwargs) -> None:
        for module in model.modules():
            to_k = getattr(module, "to_k", None)
            if type(module).__name__ == "CrossAttention" and to_k is not None and to_k.in_features == 2048:
                # attn2 (its keys come from the 2048-wide text context)
                self.plugable.hack_blk(module, lambda attn, x, w=weight: 0.01 * w * x, type(module))


class ControlModel(NamedTuple):
    """``scripts.controlnet_model_guess.ControlModel``: the cached network and its type."""

    model: torch.nn.Module
    type: Any


# -- building the modules ------------------------------------------------------------------
def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _mode_enums() -> tuple[type[Enum], type[Enum]]:
    """Fresh ``ResizeMode`` and ``ControlMode`` classes (ControlNet's members and values)."""

    class ResizeMode(Enum):
        RESIZE = "Just Resize"
        INNER_FIT = "Crop and Resize"
        OUTER_FIT = "Resize and Fill"

        def int_value(self) -> int:
            return list(ResizeMode).index(self)

    class ControlMode(Enum):
        BALANCED = "Balanced"
        PROMPT = "My prompt is more important"
        CONTROL = "ControlNet is more important"

    return ResizeMode, ControlMode


def _enums(version: Version) -> types.ModuleType:
    class ControlModelType(Enum):
        ControlNet = "ControlNet, Lvmin Zhang"
        T2I_Adapter = "T2I_Adapter, Chong Mou"
        ControlLoRA = "ControlLoRA, Wu Hecong"
        IPAdapter = "IPAdapter, Hu Ye"
        InstantID = "InstantID, Qixun Wang"
        ControlNetUnion = "ControlNetUnion, xinsir6"

    def is_controlnet(self) -> bool:
        return self in (
            ControlModelType.ControlNet,
            ControlModelType.ControlLoRA,
            ControlModelType.InstantID,
            ControlModelType.ControlNetUnion,
        )

    # A property from 1.1.454 on, a method before.
    ControlModelType.is_controlnet = property(is_controlnet) if version >= (1, 1, 454) else is_controlnet

    class HiResFixOption(Enum):
        BOTH = "Both"
        LOW_RES_ONLY = "Low res only"
        HIGH_RES_ONLY = "High res only"

    class InputMode(Enum):
        SIMPLE = "simple"
        BATCH = "batch"
        MERGE = "merge"

    ResizeMode, ControlMode = _mode_enums()
    return _module(
        "scripts.enums",
        ControlModelType=ControlModelType,
        HiResFixOption=HiResFixOption,
        InputMode=InputMode,
        ResizeMode=ResizeMode,
        ControlMode=ControlMode,
    )


def _preprocessors(version: Version) -> types.ModuleType:
    since_446 = version >= (1, 1, 446)
    since_449 = version >= (1, 1, 449)

    @dataclass
    class PreprocessorParameter:
        label: str = "EMPTY_LABEL"
        minimum: float = 0.0
        maximum: float = 1.0
        step: float = 0.01
        value: float = 0.5
        visible: bool = True

    @dataclass
    class Preprocessor(ABC):
        name: str
        _label: str = None
        tags: list[str] = field(default_factory=list)
        slider_resolution = PreprocessorParameter(
            label="Resolution", minimum=64, maximum=2048, value=512, step=8, visible=True
        )
        slider_1 = PreprocessorParameter(visible=False)
        slider_2 = PreprocessorParameter(visible=False)
        slider_3 = PreprocessorParameter(visible=False)
        returns_image: bool = True
        show_control_mode = True
        do_not_need_model = False
        sorting_priority = 0
        if since_446:
            accepts_mask: bool = False
            requires_mask: bool = False
            model: Any = None
        if since_449:
            preprocessor_deps: list[str] = field(default_factory=list)

        all_processors: ClassVar[dict[str, "Preprocessor"]] = {}
        all_processors_by_name: ClassVar[dict[str, "Preprocessor"]] = {}

        @property
        def label(self) -> str:
            return self._label if self._label is not None else self.name

        @classmethod
        def add_supported_preprocessor(cls, p: "Preprocessor") -> None:
            assert p.label not in cls.all_processors, f"{p.label} already registered!"
            cls.all_processors[p.label] = p
            assert p.name not in cls.all_processors_by_name, f"{p.name} already registered!"
            cls.all_processors_by_name[p.name] = p

        @classmethod
        def get_preprocessor(cls, name: str) -> "Preprocessor | None":
            return cls.all_processors.get(name, cls.all_processors_by_name.get(name, None))

        @classmethod
        def get_sorted_preprocessors(cls) -> list["Preprocessor"]:
            others = [p for k, p in cls.all_processors.items() if k != "none"]
            ranked = sorted(others, key=lambda x: str(x.sorting_priority).zfill(8) + x.label, reverse=True)
            return [cls.all_processors["none"], *ranked]

        @classmethod
        def get_all_preprocessor_tags(cls) -> list[str]:
            tags: set[str] = set()
            for p in cls.all_processors.values():
                tags.update(p.tags)
            return ["All", *sorted(tags)]

        if since_446:

            @classmethod
            def unload_unused(cls, active_processors: set) -> None:
                for p in cls.all_processors.values():
                    if p not in active_processors:
                        p.unload()

            class Result(NamedTuple):
                value: Any
                display_images: list

            def cached_call(self, input_image, *args, **kwargs):
                result = self(input_image, *args, **kwargs)
                if isinstance(result, Preprocessor.Result):
                    return result
                return Preprocessor.Result(
                    value=result, display_images=[result if self.returns_image else input_image]
                )

            def unload(self) -> bool:
                if self.model is not None:
                    if hasattr(self.model, "unload_model"):
                        self.model.unload_model()
                        return True
                    if hasattr(self.model, "to"):
                        self.model.to("cpu")
                        return True
                    raise Exception(f"Unable to unload model {self.model}")
                return False

        else:

            def cached_call(self, *args, **kwargs):
                return self(*args, **kwargs)

        def __hash__(self):
            return hash(self.name)

        def __eq__(self, other):
            return self.__hash__() == other.__hash__()

        @abstractmethod
        def __call__(
            self,
            input_image,
            resolution,
            slider_1=None,
            slider_2=None,
            slider_3=None,
            input_mask=None,
            **kwargs,
        ):
            pass

    class PreprocessorNone(Preprocessor):
        def __init__(self):
            super().__init__(name="none")
            self.sorting_priority = 10
            self.tags = ["InstructP2P"]

        def __call__(self, input_image, resolution, slider_1=None, slider_2=None, slider_3=None, **kwargs):
            return input_image

    class PreprocessorCanny(Preprocessor):
        def __init__(self):
            super().__init__(name="canny")
            self.tags = ["Canny"]
            self.slider_1 = PreprocessorParameter(minimum=1, maximum=255, step=1, value=100, label="Low")
            self.slider_2 = PreprocessorParameter(minimum=1, maximum=255, step=1, value=200, label="High")

        def __call__(self, input_image, resolution, slider_1=None, slider_2=None, slider_3=None, **kwargs):
            edges = cv2.Canny(input_image, int(slider_1), int(slider_2))
            return np.stack([edges] * 3, axis=-1)

    Preprocessor.add_supported_preprocessor(PreprocessorNone())
    Preprocessor.add_supported_preprocessor(PreprocessorCanny())
    return _module(
        "scripts.supported_preprocessor",
        Preprocessor=Preprocessor,
        PreprocessorParameter=PreprocessorParameter,
    )


def _image_embed() -> type:
    class ImageEmbed(NamedTuple):
        """(cond, uncond) tokens; ``eval`` picks per row by ControlNet's cond mark."""

        cond_emb: torch.Tensor
        uncond_emb: torch.Tensor

        def eval(self, cond_mark: torch.Tensor) -> torch.Tensor:
            assert cond_mark.ndim == 4  # (B, 1, 1, 1), 1.0 on cond rows
            assert self.cond_emb.ndim == self.uncond_emb.ndim == 3
            assert self.uncond_emb.shape[0] == 1 or self.cond_emb.shape[0] == self.uncond_emb.shape[0]
            assert self.cond_emb.shape[0] == 1 or self.cond_emb.shape[0] == cond_mark.shape[0]
            mark = cond_mark[:, :, :, 0].to(self.cond_emb)  # (B, 1, 1) broadcast over tokens and dim
            cond = self.cond_emb.to(device=mark.device, dtype=mark.dtype)
            uncond = self.uncond_emb.to(device=mark.device, dtype=mark.dtype)
            return cond * mark + uncond * (1 - mark)

    return ImageEmbed


def _hook(version: Version, enums: types.ModuleType, image_embed: type) -> types.ModuleType:
    ControlModelType = enums.ControlModelType
    HiResFixOption = enums.HiResFixOption

    def is_controlnet(model_type) -> bool:
        return model_type.is_controlnet if version >= (1, 1, 454) else model_type.is_controlnet()

    def prompt_context_is_marked(x: torch.Tensor) -> bool:
        first = x[..., 0, :]
        return float(torch.mean(torch.abs(torch.abs(first) - POSITIVE_MARK_TOKEN))) < MARK_EPS

    def mark_prompt_context(x, positive):
        if isinstance(x, list):
            for i in range(len(x)):
                x[i] = mark_prompt_context(x[i], positive)
            return x
        if isinstance(x, MulticondLearnedConditioning):
            x.batch = mark_prompt_context(x.batch, positive)
            return x
        if isinstance(x, ComposableScheduledPromptConditioning):
            x.schedules = mark_prompt_context(x.schedules, positive)
            return x
        if isinstance(x, ScheduledPromptConditioning):
            is_dict = isinstance(x.cond, dict)
            cond = x.cond["crossattn"] if is_dict else x.cond
            if prompt_context_is_marked(cond):
                return x
            mark = POSITIVE_MARK_TOKEN if positive else NEGATIVE_MARK_TOKEN
            cond = torch.cat([torch.zeros_like(cond)[:1] + mark, cond], dim=0)
            new = {"crossattn": cond, "vector": x.cond["vector"]} if is_dict else cond
            return ScheduledPromptConditioning(end_at_step=x.end_at_step, cond=new)
        return x

    def unmark_prompt_context(x: torch.Tensor):
        if not prompt_context_is_marked(x):
            # Unmarked: ControlNet cannot tell the rows apart and takes all as cond rows.
            return torch.ones(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device), [], [], x
        mark = torch.mean(torch.abs(x[:, 0, :] - NEGATIVE_MARK_TOKEN), dim=1)
        mark = (mark > MARK_EPS).float()
        rows = mark.tolist()
        uc_indices = [i for i, m in enumerate(rows) if m < 0.5]
        c_indices = [i for i, m in enumerate(rows) if m >= 0.5]
        return mark[:, None, None, None].to(x.dtype).to(x.device), uc_indices, c_indices, x[:, 1:, :]

    class ControlParams:
        def __init__(
            self,
            control_model,
            preprocessor,
            hint_cond,
            weight,
            guidance_stopped,
            start_guidance_percent,
            stop_guidance_percent,
            advanced_weighting,
            control_model_type,
            hr_hint_cond,
            global_average_pooling,
            soft_injection,
            cfg_injection,
            hr_option=HiResFixOption.BOTH,
            control_context_override=None,
            effective_region_mask=None,
            **kwargs,
        ):
            self.control_model = control_model
            self.preprocessor = preprocessor
            self._hint_cond = hint_cond
            self.weight = weight
            self.guidance_stopped = guidance_stopped
            self.start_guidance_percent = start_guidance_percent
            self.stop_guidance_percent = stop_guidance_percent
            self.advanced_weighting = advanced_weighting
            self.control_model_type = control_model_type
            self.global_average_pooling = global_average_pooling
            self.hr_hint_cond = hr_hint_cond
            self.hr_option = hr_option
            self.control_context_override = control_context_override
            self.used_hint_cond = None
            self.soft_injection = soft_injection
            self.cfg_injection = cfg_injection
            if version >= (1, 1, 446):  # per-unit residual masks (PR #2818)
                self.effective_region_mask = effective_region_mask

        @property
        def hint_cond(self):
            return self._hint_cond

        @hint_cond.setter
        def hint_cond(self, value) -> None:
            # As ControlNet does: a new hint is re-read by the hook at the next step.
            self._hint_cond = value
            self.used_hint_cond = None

        def apply_effective_region_mask(self, out: torch.Tensor) -> torch.Tensor:
            mask = getattr(self, "effective_region_mask", None)
            if mask is None:
                return out
            small = torch.nn.functional.interpolate(mask.to(out.device), size=out.shape[-2:], mode="bilinear")
            return out * small

        def disabled_by_hr_option(self, is_in_high_res_fix: bool) -> bool:
            if self.hr_option == HiResFixOption.LOW_RES_ONLY:
                return is_in_high_res_fix
            if self.hr_option == HiResFixOption.HIGH_RES_ONLY:
                return not is_in_high_res_fix
            return False

    class UnetHook:
        def __init__(self, lowvram=False) -> None:
            self.lowvram = lowvram
            self.model = None
            self.control_params = None
            self.cond_mark = None
            self.residuals: list[list[torch.Tensor]] = []
            self.hint_sizes: list[tuple[tuple[int, int], tuple[int, int]]] = []
            """Per IdentityNet call: (the canvas of the latent, x8; the hint's size), to check passes."""

        def guidance_schedule_handler(self, x) -> None:
            if not self.control_params:
                return
            for param in self.control_params:
                percent = x.sampling_step / x.total_sampling_steps
                param.guidance_stopped = (
                    percent < param.start_guidance_percent or percent > param.stop_guidance_percent
                )

        def hook(self, model, sd_ldm, control_params, process, **kwargs) -> None:
            """As ``UnetHook.hook``: wraps ``process.sample`` (once per ``p``) and replaces the UNet's
            ``forward`` on the instance, keeping whatever was there as ``_original_forward``, even
            when that is another network's hijacked forward. Only :meth:`restore` puts it back."""
            self.model = model
            self.control_params = control_params
            outer = self

            def process_sample(*args, **kwargs):
                # CN marks the prompts when sampling starts; hr_c/hr_uc are usually None then.
                mark_prompt_context(kwargs.get("conditioning", []), positive=True)
                mark_prompt_context(kwargs.get("unconditional_conditioning", []), positive=False)
                mark_prompt_context(getattr(process, "hr_c", []), positive=True)
                mark_prompt_context(getattr(process, "hr_uc", []), positive=False)
                return process.sample_before_CN_hack(*args, **kwargs)

            if getattr(process, "sample_before_CN_hack", None) is None:
                process.sample_before_CN_hack = process.sample
            process.sample = process_sample
            if isinstance(model, torch.nn.Module):
                unet_forward = type(model).forward

                def forward_webui(unet, x, timesteps=None, context=None, y=None, **kw):
                    # ControlNet's own UNet loop: its units run on every call (their residuals go
                    # into the skip connections; here each unit adds a small constant made from
                    # them), and the forward it replaced is not called.
                    context, effect = outer.forward(x, timesteps, context, y)
                    return unet_forward(unet, x, timesteps, context, y, **kw) + effect

                model._original_forward = model.forward
                model.forward = forward_webui.__get__(model, type(model))
            callbacks = sys.modules.get("modules.script_callbacks")
            if callbacks is not None:
                callbacks.on_cfg_denoiser(self.guidance_schedule_handler)

        def restore(self) -> None:
            """As ``UnetHook.restore``: ``p.sample`` stays wrapped; the UNet gets back whatever
            forward this network found, if the attribute is still there."""
            callbacks = sys.modules.get("modules.script_callbacks")
            if callbacks is not None:
                callbacks.remove_callbacks_for_function(self.guidance_schedule_handler)
            self.control_params = None
            if self.model is not None and hasattr(self.model, "_original_forward"):
                self.model.forward = self.model._original_forward
                del self.model._original_forward

        def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
            """The context selection of ControlNet's hijacked UNet forward; returns the text
            context for the UNet and the units' effect on its output."""
            cond_mark, _uc, _c, context = unmark_prompt_context(context)
            self.cond_mark = cond_mark
            self.residuals = []
            for param in self.control_params:
                if param.used_hint_cond is None:
                    param.used_hint_cond = param.hint_cond
                hr = param.hr_hint_cond
                if isinstance(hr, torch.Tensor) and isinstance(param.hint_cond, torch.Tensor):
                    # The hint whose height is nearer to the latent's (x8) is the one of this pass.
                    h = x.shape[-2] * 8
                    near_lr = abs(h - param.hint_cond.shape[-2]) < abs(h - hr.shape[-2])
                    param.used_hint_cond = param.hint_cond if near_lr else hr
            for param in self.control_params:
                if param.guidance_stopped or param.disabled_by_hr_option(False):
                    continue
                if not (
                    is_controlnet(param.control_model_type) or param.control_model_type.name == "T2I_Adapter"
                ):
                    continue
                hint = param.used_hint_cond
                self.hint_sizes.append(((x.shape[-2] * 8, x.shape[-1] * 8), tuple(hint.shape[-2:])))
                if param.control_model_type == ControlModelType.InstantID:
                    assert isinstance(param.control_context_override, image_embed)
                    controlnet_context = param.control_context_override.eval(cond_mark).to(
                        x.device, dtype=x.dtype
                    )
                else:
                    controlnet_context = context
                if tuple(hint.shape[-2:]) != (x.shape[-2] * 8, x.shape[-1] * 8):
                    # ControlNet adds the hint's embedding (1/8 of its size) to the latent's features.
                    msg = (
                        f"The size of tensor a ({hint.shape[-1] // 8}) must match the size of tensor b "
                        f"({x.shape[-1]}) at non-singleton dimension 3"
                    )
                    raise RuntimeError(msg)
                control = param.control_model(
                    x=x, hint=hint, timesteps=timesteps, context=controlnet_context, y=y
                )
                self.residuals.append([param.apply_effective_region_mask(c * param.weight) for c in control])
            # Per row, as ControlNet adds each row's residuals to that row only.
            effect = sum(
                (1e-3 * r.mean(dim=(1, 2, 3))[:, None, None, None] for unit in self.residuals for r in unit),
                0.0,
            )
            return context, effect

    return _module(
        "scripts.hook",
        ControlModelType=ControlModelType,
        HiResFixOption=HiResFixOption,
        ImageEmbed=image_embed,
        POSITIVE_MARK_TOKEN=POSITIVE_MARK_TOKEN,
        NEGATIVE_MARK_TOKEN=NEGATIVE_MARK_TOKEN,
        prompt_context_is_marked=prompt_context_is_marked,
        mark_prompt_context=mark_prompt_context,
        unmark_prompt_context=unmark_prompt_context,
        ControlParams=ControlParams,
        UnetHook=UnetHook,
    )


def _unit_class_455(enums: types.ModuleType, preprocessor: type) -> type:
    InputMode, ResizeMode = enums.InputMode, enums.ResizeMode
    ControlMode, HiResFixOption = enums.ControlMode, enums.HiResFixOption

    class ControlNetUnit(pydantic.BaseModel):
        class Config:
            arbitrary_types_allowed = True
            extra = "ignore"

        cls_match_module: ClassVar[Callable[[str], bool]]
        cls_get_preprocessor: ClassVar[Callable[[str], Any]]

        is_ui: bool = False
        input_mode: InputMode = InputMode.SIMPLE
        batch_images: Any | None = None
        enabled: bool = False
        module: str = "none"
        model: str = "None"
        weight: float = pydantic.Field(1.0, ge=0.0, le=2.0)
        image: Any | None = None
        resize_mode: ResizeMode = ResizeMode.INNER_FIT
        low_vram: bool = False
        processor_res: int = -1
        threshold_a: float = -1
        threshold_b: float = -1
        guidance_start: float = pydantic.Field(0.0, ge=0.0, le=1.0)
        guidance_end: float = pydantic.Field(1.0, ge=0.0, le=1.0)
        pixel_perfect: bool = False
        control_mode: ControlMode = ControlMode.BALANCED
        inpaint_crop_input_image: bool = True
        hr_option: HiResFixOption = HiResFixOption.BOTH
        save_detected_map: bool = True
        advanced_weighting: list[float] | None = None
        effective_region_mask: Any | None = None
        ipadapter_input: list[Any] | None = None
        mask: Any | None = None

        @pydantic.validator("module", always=True, pre=True, allow_reuse=True)
        def check_module(cls, value):  # noqa: N805 (a pydantic validator)
            if not ControlNetUnit.cls_match_module(value):
                raise ValueError(f"module({value}) not found in supported modules.")
            return value

        @pydantic.validator("resize_mode", always=True, pre=True, allow_reuse=True)
        def check_resize_mode(cls, value):  # noqa: N805 (a pydantic validator)
            if isinstance(value, str):
                return ResizeMode(value)
            assert isinstance(value, ResizeMode)
            return value

        @pydantic.root_validator(allow_reuse=True)
        def bound_check_params(cls, values):  # noqa: N805 (a pydantic validator)
            if not values.get("enabled") or not values.get("module"):
                return values
            found = cls.cls_get_preprocessor(values["module"])
            assert found is not None
            for unit_param, param in zip(
                ("processor_res", "threshold_a", "threshold_b"),
                ("slider_resolution", "slider_1", "slider_2"),
                strict=True,
            ):
                cfg = getattr(found, param)
                if not cfg.minimum <= values.get(unit_param) <= cfg.maximum:
                    values[unit_param] = cfg.value
            return values

        @pydantic.root_validator(allow_reuse=True)
        def guidance_check(cls, values):  # noqa: N805 (a pydantic validator)
            if values.get("guidance_start") > values.get("guidance_end"):
                raise ValueError("guidance_start > guidance_end")
            return values

        @property
        def accepts_multiple_inputs(self) -> bool:
            found = ControlNetUnit.cls_get_preprocessor(self.module)
            return found is not None and "IP-Adapter" in found.tags

        def get_actual_preprocessors(self) -> list:
            found = ControlNetUnit.cls_get_preprocessor(self.module)
            return [found] + [ControlNetUnit.cls_get_preprocessor(d) for d in found.preprocessor_deps]

        @classmethod
        def from_dict(cls, values: dict) -> "ControlNetUnit":
            return ControlNetUnit(**copy.copy(values))

        @staticmethod
        def infotext_fields() -> tuple[str, ...]:
            return (
                "module",
                "model",
                "weight",
                "resize_mode",
                "processor_res",
                "threshold_a",
                "threshold_b",
                "guidance_start",
                "guidance_end",
                "pixel_perfect",
                "control_mode",
            )

        def serialize(self) -> str:
            def text(v):
                return v.value if isinstance(v, Enum) else str(v)

            items = {
                " ".join(w.capitalize() for w in f.split("_")): text(getattr(self, f))
                for f in ControlNetUnit.infotext_fields()
            }
            if any("," in v or ":" in v for v in items.values()):
                return ""
            return ", ".join(f"{k}: {v}" for k, v in items.items())

        def __copy__(self):
            return self.copy()

    ControlNetUnit.cls_match_module = lambda module: preprocessor.get_preprocessor(module) is not None
    ControlNetUnit.cls_get_preprocessor = preprocessor.get_preprocessor
    return ControlNetUnit


def _unit_class_444(
    enums: types.ModuleType, resize_modes: type, control_modes: type, preprocessor: type
) -> type:
    HiResFixOption = enums.HiResFixOption

    @dataclass
    class ControlNetUnit:
        enabled: bool = True
        module: str = "none"
        model: str = "None"
        weight: float = 1.0
        image: Any = None
        resize_mode: Any = resize_modes.INNER_FIT
        low_vram: bool = False
        processor_res: int = -1
        threshold_a: float = -1
        threshold_b: float = -1
        guidance_start: float = 0.0
        guidance_end: float = 1.0
        pixel_perfect: bool = False
        control_mode: Any = control_modes.BALANCED
        inpaint_crop_input_image: bool = True
        hr_option: Any = HiResFixOption.BOTH
        save_detected_map: bool = True
        advanced_weighting: list[float] | None = None
        ipadapter_input: list[Any] | None = None

        def __eq__(self, other):
            return isinstance(other, ControlNetUnit) and vars(self) == vars(other)

        def accepts_multiple_inputs(self) -> bool:
            return self.module in ("ip-adapter_clip_sdxl", "instant_id_face_embedding")

        def bound_check_params(self) -> None:
            found = preprocessor.get_preprocessor(self.module)
            for unit_param, param in zip(
                ("processor_res", "threshold_a", "threshold_b"),
                ("slider_resolution", "slider_1", "slider_2"),
                strict=True,
            ):
                if getattr(self, unit_param) < 0:
                    setattr(self, unit_param, getattr(found, param).value)

    return ControlNetUnit


def _external_code(version: Version, enums, sp, global_state) -> types.ModuleType:
    old = version < (1, 1, 448)
    Preprocessor = sp.Preprocessor
    if old:
        # Before 1.1.448 these lived in external_code: classes of their own, same members.
        ResizeMode, ControlMode = _mode_enums()
        ControlNetUnit = _unit_class_444(enums, ResizeMode, ControlMode, Preprocessor)

        def to_processing_unit(unit):
            if isinstance(unit, dict):
                unit = ControlNetUnit(**{k: v for k, v in unit.items() if k in vars(ControlNetUnit)})
            return unit

    else:
        ResizeMode, ControlMode = enums.ResizeMode, enums.ControlMode
        ControlNetUnit = _unit_class_455(enums, Preprocessor)

        def to_processing_unit(unit):
            if isinstance(unit, dict):
                return ControlNetUnit.from_dict(unit)
            assert isinstance(unit, ControlNetUnit)
            return unit

    def resize_mode_from_value(value):
        if isinstance(value, str):
            return ResizeMode(value)
        if isinstance(value, int):
            return list(ResizeMode)[value]
        return value

    def control_mode_from_value(value):
        if isinstance(value, str):
            return ControlMode(value)
        if isinstance(value, int):
            return list(ControlMode)[value]
        return value

    def is_cn_script(script) -> bool:
        return script.title().lower() == "controlnet"

    def find_cn_script(script_runner):
        if script_runner is None:
            return None
        for script in script_runner.alwayson_scripts:
            if is_cn_script(script):
                return script
        return None

    def get_all_units_from(script_args):
        def is_controlnet_unit(arg) -> bool:
            return isinstance(arg, ControlNetUnit | dict) or (
                hasattr(arg, "__dict__") and set(vars(ControlNetUnit())).issubset(set(vars(arg)))
            )

        return [to_processing_unit(arg) for arg in script_args if is_controlnet_unit(arg)]

    def get_all_units(script_runner, script_args):
        cn_script = find_cn_script(script_runner)
        if cn_script:
            return get_all_units_from(script_args[cn_script.args_from : cn_script.args_to])
        return []

    def get_all_units_in_processing(p):
        return get_all_units(p.scripts, p.script_args)

    return _module(
        "internal_controlnet.external_code",
        ControlNetUnit=ControlNetUnit,
        ResizeMode=ResizeMode,
        ControlMode=ControlMode,
        Preprocessor=Preprocessor,
        global_state=global_state,
        resize_mode_from_value=resize_mode_from_value,
        control_mode_from_value=control_mode_from_value,
        to_processing_unit=to_processing_unit,
        find_cn_script=find_cn_script,
        is_cn_script=is_cn_script,
        get_all_units_from=get_all_units_from,
        get_all_units=get_all_units,
        get_all_units_in_processing=get_all_units_in_processing,
    )


def _global_state() -> types.ModuleType:
    state = _module("scripts.global_state", cn_models=OrderedDict(), cn_models_names={}, on_disk={})

    def update_cn_models() -> None:
        """Rescan: runtime additions are dropped (the refresh button, the API, xyz)."""
        state.cn_models.clear()
        state.cn_models.update({"None": None, **state.on_disk})
        state.cn_models_names.clear()
        for key, path in state.cn_models.items():
            if path is not None:
                state.cn_models_names[os.path.splitext(os.path.basename(path))[0].lower()] = key

    state.update_cn_models = update_cn_models
    update_cn_models()
    return state


def _infotext(version: Version, ec: types.ModuleType) -> types.ModuleType:
    class Infotext:
        @staticmethod
        def unit_prefix(unit_index: int) -> str:
            return f"ControlNet {unit_index}"

        @staticmethod
        def write_infotext(units, p) -> None:
            p.extra_generation_params.update(
                {
                    Infotext.unit_prefix(i): _serialize(version, unit)
                    for i, unit in enumerate(units)
                    if unit.enabled
                }
            )

    return _module("scripts.infotext", Infotext=Infotext)


def _serialize(version: Version, unit: Any) -> str:
    if version >= (1, 1, 448):
        return unit.serialize()
    excluded = {"image", "enabled", "advanced_weighting", "ipadapter_input", "inpaint_crop_input_image"}
    items = {
        " ".join(w.capitalize() for w in f.name.split("_")): getattr(unit, f.name)
        for f in dataclasses.fields(unit)
        if f.name not in excluded and getattr(unit, f.name) != -1
    }
    return ", ".join(f"{k}: {v}" for k, v in items.items())


# -- the ControlNet script -------------------------------------------------------------------
def _script_class(version: Version, m: dict[str, types.ModuleType]) -> type:
    ec, gs, hook, sp, enums = (m[k] for k in ("ec", "gs", "hook", "sp", "enums"))
    ipadapter = m["ipadapter"]

    def clear_all_secondary_control_models(unet) -> None:
        ipadapter.clear_all_ip_adapter()

    Infotext = m["infotext"].Infotext
    ControlModelType = enums.ControlModelType

    def get_enabled_units(p):
        units = ec.get_all_units_in_processing(p)
        enabled = []
        for unit in units:
            if not unit.enabled:
                continue
            if version >= (1, 1, 448):
                enabled.append(unit)  # unfold_merged() of a SIMPLE unit: the same object
            else:
                enabled.append(copy.copy(unit))
        Infotext.write_infotext(enabled, p)
        return enabled

    def detectmap_proc(detected_map: np.ndarray, resize_mode, h: int, w: int) -> torch.Tensor:
        if resize_mode == ec.ResizeMode.RESIZE:
            if detected_map.shape[:2] != (h, w):
                detected_map = cv2.resize(detected_map, (w, h), interpolation=cv2.INTER_NEAREST)
        else:  # Crop and Resize: cover, then centre-crop
            k = max(h / detected_map.shape[0], w / detected_map.shape[1])
            size = (round(detected_map.shape[1] * k), round(detected_map.shape[0] * k))
            detected_map = cv2.resize(detected_map, size, interpolation=cv2.INTER_NEAREST)
            top, left = (detected_map.shape[0] - h) // 2, (detected_map.shape[1] - w) // 2
            detected_map = detected_map[top : top + h, left : left + w]
        return torch.from_numpy(detected_map.copy()).float().div(255.0).permute(2, 0, 1)[None]

    class Script:
        model_cache: ClassVar[OrderedDict] = OrderedDict()
        #: ``control_net_model_cache_size`` (default 2).
        cache_size: ClassVar[int] = 2
        #: Every file ``build_control_model`` read, in order (a stand-in for memory and load time).
        loads: ClassVar[list] = []

        def __init__(self) -> None:
            self.latest_network = None
            self.latest_model_hash = ""
            self.enabled_units = []
            self.detected_map = []
            self.args_from = self.args_to = None

        def title(self) -> str:
            return "ControlNet"

        @staticmethod
        def get_enabled_units(p):
            return get_enabled_units(p)

        @staticmethod
        def load_control_model(p, unet, model: str) -> ControlModel:
            """As ControlNet: a cache hit, else evict the oldest entry when full, build, cache."""
            if model in Script.model_cache:
                return Script.model_cache[model]
            size = Script.cache_size
            if Script.model_cache and len(Script.model_cache) >= size:
                Script.model_cache.popitem(last=False)
            loaded = Script.build_control_model(p, unet, model)
            if size > 0:
                Script.model_cache[model] = loaded
            return loaded

        @staticmethod
        def build_control_model(p, unet, model: str) -> ControlModel:
            """Reads the file (recorded in ``loads``) and types it by its path, as build_model_by_guess."""
            path = gs.cn_models.get(model)
            if path is None:
                raise RuntimeError(f"model not found: {model}")
            if not os.path.exists(path):
                raise ValueError(f"file not found: {path}")
            Script.loads.append(path)
            torch.randn(16)  # building the network initialises its layers from torch's generator
            if "ip-adapter" in path.lower() or "ip_adapter" in path.lower():
                return ControlModel(PlugableIPAdapter(model, ipadapter), ControlModelType.IPAdapter)
            is_iid = "instant_id" in path.lower()
            model_type = ControlModelType.InstantID if is_iid else ControlModelType.ControlNet
            return ControlModel(RecordingControlModel(model), model_type)

        def process(self, p, *args, **kwargs) -> None:
            unet = getattr(getattr(getattr(p, "sd_model", None), "model", None), "diffusion_model", None)
            if self.latest_network is not None:
                self.latest_network.restore()
            clear_all_secondary_control_models(unet)
            self.enabled_units = Script.get_enabled_units(p)
            if not self.enabled_units:
                self.latest_network = None
                return
            self.latest_network = None
            if not getattr(getattr(p, "sd_model", None), "is_sdxl", True):
                # check_sd_version_compatible: the stand-in's ControlNet models are all SDXL.
                unit = self.enabled_units[0]
                msg = (
                    f"ControlNet model {unit.model}(StableDiffusionVersion.SDXL) is not compatible with "
                    "sd model(StableDiffusionVersion.SD1x)"
                )
                raise Exception(msg)
            # The model cache is one per process; the checkpoint it was built for, one per tab.
            model_hash = getattr(getattr(p, "sd_model", None), "sd_model_hash", None)
            if self.latest_model_hash != model_hash:
                Script.model_cache.clear()
            self.latest_model_hash = model_hash
            if version >= (1, 1, 446):
                sp.Preprocessor.unload_unused(
                    {q for unit in self.enabled_units for q in unit.get_actual_preprocessors()}
                    if version >= (1, 1, 449)
                    else {sp.Preprocessor.get_preprocessor(unit.module) for unit in self.enabled_units}
                )
            h, w = p.height // 8 * 8, p.width // 8 * 8
            hires = bool(getattr(p, "enable_hr", False))
            if hires:
                hr_w = int(p.hr_resize_x or p.width * p.hr_scale) // 8 * 8
                hr_h = int(p.hr_resize_y or p.height * p.hr_scale) // 8 * 8
            forward_params = []
            self.detected_map = []
            for unit in self.enabled_units:
                if version < (1, 1, 448):
                    unit.bound_check_params()
                preprocessor = sp.Preprocessor.get_preprocessor(unit.module)
                assert preprocessor is not None
                model_net, model_type = Script.load_control_model(p, None, unit.model)
                image = unit.image
                if image is None:
                    raise ValueError("controlnet is enabled but no input image is given")
                result = preprocessor.cached_call(
                    image,
                    resolution=unit.processor_res,
                    slider_1=unit.threshold_a,
                    slider_2=unit.threshold_b,
                    low_vram=False,
                    model=unit.model,
                )
                detected = result.value if version >= (1, 1, 446) else result
                resize_mode = ec.resize_mode_from_value(unit.resize_mode)
                control = detectmap_proc(detected, resize_mode, h, w)
                hr_control = detectmap_proc(detected, resize_mode, hr_h, hr_w) if hires else None
                if unit.save_detected_map:
                    self.detected_map.append((detected, unit.module))
                control_mode = ec.control_mode_from_value(unit.control_mode)
                forward_params.append(
                    hook.ControlParams(
                        control_model=model_net,
                        preprocessor={"name": unit.module, "threshold_a": unit.threshold_a},
                        hint_cond=control,
                        weight=unit.weight,
                        guidance_stopped=False,
                        start_guidance_percent=unit.guidance_start,
                        stop_guidance_percent=unit.guidance_end,
                        advanced_weighting=None,
                        control_model_type=model_type,
                        global_average_pooling=False,
                        hr_hint_cond=hr_control,
                        hr_option=enums.HiResFixOption.BOTH,
                        soft_injection=control_mode != ec.ControlMode.BALANCED,
                        cfg_injection=control_mode == ec.ControlMode.CONTROL,
                    )
                )
            for i, param in enumerate(forward_params):
                if param.control_model_type == ControlModelType.InstantID:
                    assert i > 0, "InstantID control model should follow ipadapter model."
                    ip_param = forward_params[i - 1]
                    assert ip_param.control_model_type == ControlModelType.IPAdapter, (
                        "InstantID control model should follow ipadapter model."
                    )
                    param.control_context_override = ip_param.control_model.image_emb
            for param in forward_params:
                if param.control_model_type == ControlModelType.IPAdapter:
                    param.control_model.hook(model=unet, weight=param.weight)
            self.latest_network = hook.UnetHook()
            sd_model = getattr(p, "sd_model", None)
            self.latest_network.hook(model=unet, sd_ldm=sd_model, control_params=forward_params, process=p)

        def postprocess(self, p, processed, *args) -> None:
            clear_all_secondary_control_models(None)
            self.enabled_units.clear()
            if self.latest_network is None:
                return
            self.latest_network.restore()
            self.latest_network = None

    return Script


# -- a job -----------------------------------------------------------------------------------
class OtherScript:
    """Some other AlwaysVisible script, to show argument positions stay put."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.args_from = self.args_to = None

    def title(self) -> str:
        return self.name


class ScriptRunner:
    def __init__(self, scripts: list[Any]) -> None:
        self.alwayson_scripts = scripts


class Processing:
    """Stand-in for ``StableDiffusionProcessingTxt2Img``: the attributes the bridge uses."""

    cached_hr_c: ClassVar[list] = [None, None]
    cached_hr_uc: ClassVar[list] = [None, None]

    def __init__(
        self, scripts: ScriptRunner, script_args: tuple, width: int = 1024, height: int = 1024
    ) -> None:
        self.scripts = scripts
        self.script_args_value = script_args
        self.width, self.height = width, height
        self.extra_generation_params: dict[str, Any] = {}
        self.hr_c = None
        self.hr_uc = None

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value) -> None:
        self.script_args_value = value

    def sample(self, *args, **kwargs):
        raise NotImplementedError("tests replace p.sample")


@dataclass
class FakeControlNet:
    version: Version
    modules: dict[str, types.ModuleType]
    Script: type | None

    @property
    def ec(self) -> types.ModuleType:
        return self.modules["scripts.external_code"]

    @property
    def global_state(self) -> types.ModuleType:
        return self.modules["scripts.global_state"]

    @property
    def hook(self) -> types.ModuleType:
        return self.modules["scripts.hook"]

    @property
    def Preprocessor(self) -> type:
        return self.modules["scripts.supported_preprocessor"].Preprocessor

    def unit(self, **kwargs: Any) -> Any:
        return self.ec.ControlNetUnit(**kwargs)

    def job(self, units: list[Any], width: int = 1024, height: int = 1024) -> Processing:
        """A txt2img job with another script before ControlNet and ours after it."""
        before, cn, ours = OtherScript("Before"), self.Script(), OtherScript("InstantID")
        before.args_from, before.args_to = 0, 2
        cn.args_from, cn.args_to = 2, 2 + len(units)
        ours.args_from, ours.args_to = cn.args_to, cn.args_to + 2
        args = ("before-a", "before-b", *units, False, "instantid-arg")
        return Processing(ScriptRunner([before, cn, ours]), args, width, height)

    @staticmethod
    def cn_script(p: Processing) -> Any:
        return p.scripts.alwayson_scripts[1]


def build(version: Version = (1, 1, 455)) -> FakeControlNet:
    """Fresh ControlNet modules of ``version``, not yet installed."""
    flag = f"v{version[0]}.{version[1]}.{version[2]}"
    modules = {"scripts.controlnet_version": _module("scripts.controlnet_version", version_flag=flag)}
    enums = _enums(version)
    modules["scripts.enums"] = enums
    if version < (1, 1, 444):
        gs = _global_state()
        modules["scripts.global_state"] = gs
        modules["scripts.external_code"] = _module("scripts.external_code", ControlNetUnit=object)
        return FakeControlNet(version, modules, None)
    sp = _preprocessors(version)
    gs = _global_state()
    embed = _image_embed()
    hook = _hook(version, enums, embed)
    plugable = _plugable_ipadapter()
    internal = _external_code(version, enums, sp, gs)
    # scripts/external_code.py is a star import of internal_controlnet.external_code.
    public = _module("scripts.external_code", **{k: v for k, v in vars(internal).items() if k[0] != "_"})
    modules.update(
        {
            "scripts.supported_preprocessor": sp,
            "scripts.global_state": gs,
            "scripts.ipadapter.ipadapter_model": _module(
                "scripts.ipadapter.ipadapter_model", ImageEmbed=embed
            ),
            "scripts.ipadapter.plugable_ipadapter": plugable,
            "scripts.hook": hook,
            "scripts.controlnet_model_guess": _module(
                "scripts.controlnet_model_guess", ControlModel=ControlModel
            ),
            "internal_controlnet.external_code": internal,
            "scripts.external_code": public,
            "scripts.infotext": _infotext(version, internal),
        }
    )
    script = _script_class(
        version,
        {
            "ec": public,
            "gs": gs,
            "hook": hook,
            "sp": sp,
            "enums": enums,
            "infotext": modules["scripts.infotext"],
            "ipadapter": plugable,
        },
    )
    return FakeControlNet(version, modules, script)


def install(monkeypatch: Any, version: Version = (1, 1, 455)) -> FakeControlNet:
    """Put a fresh fake ControlNet into ``sys.modules`` for one test (undone by ``monkeypatch``)."""
    fake = build(version)
    for name in MODULE_NAMES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    for name, module in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return fake


def install_with_network(monkeypatch: Any, network: Any) -> FakeControlNet:
    """:func:`install`, with every unit's model built around ``network`` (a small IdentityNet of
    the real layer structure, so that hooks on its layers run); ``fake.network`` is it."""
    fake = install(monkeypatch)

    def build_model(p: Any, unet: Any, model: Any) -> ControlModel:
        return ControlModel(network, fake.hook.ControlModelType.ControlNet)

    monkeypatch.setattr(fake.Script, "build_control_model", staticmethod(build_model))
    fake.network = network
    return fake


def uninstall(monkeypatch: Any) -> None:
    """No ControlNet at all (as when the extension is not installed)."""
    for name in MODULE_NAMES:
        monkeypatch.delitem(sys.modules, name, raising=False)
