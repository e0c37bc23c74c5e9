"""A small, faithful stand-in for the parts of the AUTOMATIC1111 WebUI our script touches.

Same module names (``modules.scripts``, ``modules.shared``, ``modules.paths``,
``modules.script_callbacks``, ``modules.processing``), same class and attribute names, and the
same order of events as ``process_images`` in 1.6–1.10: every script's ``before_process``,
then the unwrapped ``p.setup_prompts()``, ``process``, per batch ``process_batch`` and
``p.sample`` (whose CFG denoiser fires ``on_cfg_denoiser`` and calls the UNet in any of the
WebUI's batching modes), and finally ``postprocess``. Exceptions raised inside script hooks
are caught and reported, as the WebUI does.
"""

from __future__ import annotations

import sys
import types
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageFilter

HOOK_ERRORS: list[BaseException] = []


# -- modules.scripts -----------------------------------------------------------------------
class Script:
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None

    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        return []


AlwaysVisible = object()

ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])


class ScriptRunner:
    """Calls each always-on script's hooks with its slice of ``p.script_args``, catching errors."""

    def __init__(self, scripts: list[Script]) -> None:
        self.alwayson_scripts = scripts
        self.scripts = scripts

    def _each(self, hook: str, p: Any, *extra: Any, **kwargs: Any) -> None:
        for script in self.alwayson_scripts:
            method = getattr(script, hook, None)
            if method is None:
                continue
            try:
                method(p, *extra, *p.script_args[script.args_from : script.args_to], **kwargs)
            except Exception as err:  # the WebUI's errors.report(): logged, never raised
                HOOK_ERRORS.append(err)

    def before_process(self, p):
        self._each("before_process", p)

    def process(self, p):
        self._each("process", p)

    def process_batch(self, p, **kwargs):
        self._each("process_batch", p, **kwargs)

    def before_hr(self, p):
        self._each("before_hr", p)

    def postprocess_image(self, p, pp):
        self._each("postprocess_image", p, pp)

    def postprocess(self, p, processed):
        self._each("postprocess", p, processed)


# -- modules.shared ------------------------------------------------------------------------
class Options(types.SimpleNamespace):
    def add_option(self, key, info):
        setattr(self, key, info.default)


@dataclass
class OptionInfo:
    default: Any = None
    label: str = ""
    component: Any = None
    component_args: Any = None
    section: Any = None


# -- modules.script_callbacks --------------------------------------------------------------
CALLBACKS: dict[str, list[Callable]] = {}


def _register(name: str) -> Callable:
    def register(fn: Callable) -> None:
        CALLBACKS.setdefault(name, []).append(fn)

    return register


def remove_callbacks_for_function(fn: Callable) -> None:
    for callbacks in CALLBACKS.values():
        while fn in callbacks:
            callbacks.remove(fn)


@dataclass
class CFGDenoiserParams:
    x: torch.Tensor
    image_cond: Any
    sigma: torch.Tensor
    sampling_step: int
    total_sampling_steps: int
    text_cond: Any
    text_uncond: Any
    denoiser: Any = None


# -- a fake SDXL model and processing object ------------------------------------------------
def fake_sd_model(unet: torch.nn.Module, *, is_sdxl: bool = True, **flags: Any) -> Any:
    flags.setdefault("sd_model_hash", "5dfd9e0c" if is_sdxl else "cc6cb27103")
    return types.SimpleNamespace(
        is_sdxl=is_sdxl,
        is_sd2=False,
        is_ssd=False,
        is_sd3=False,
        model=types.SimpleNamespace(diffusion_model=unet),
        sd_checkpoint_info=types.SimpleNamespace(name_for_extra="fake_sdxl"),
        **flags,
    )


@dataclass
class Processing:
    """``StableDiffusionProcessingTxt2Img`` reduced to what the hooks and sampler use."""

    # The WebUI's class-level prompt caches (ControlNet marks the prompts in them in place).
    cached_c: ClassVar[list] = [None, None]
    cached_uc: ClassVar[list] = [None, None]
    cached_hr_c: ClassVar[list] = [None, None]
    cached_hr_uc: ClassVar[list] = [None, None]

    sd_model: Any
    script_args: tuple = ()
    scripts: Any = None
    width: int = 64
    height: int = 64
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 2
    cfg_scale: float = 4.0
    seed: int = 1
    cfg_mode: str = "together"  # together | chunked | separate | skip_uncond
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    extra_generation_params: dict = field(default_factory=dict)
    comments: dict = field(default_factory=dict)
    setup_prompts_called: bool = False
    closed: bool = False
    prompt: str = "a photo"
    negative_prompt: str = ""
    sampler_name: str = "Euler"
    subseed: int = -1
    subseed_strength: float = 0.0
    base_image: Any = None
    """The picture a txt2img job "generates" (the stand-in has no VAE)."""
    hr_upscale_to_x: int = 0
    hr_upscale_to_y: int = 0
    truncate_x: int = 0
    truncate_y: int = 0
    model_after_before_process: Any = None
    """The checkpoint the WebUI loads between ``before_process`` and ``process`` (None: no change)."""

    def setup_prompts(self) -> None:
        self.setup_prompts_called = True

    def comment(self, text: str) -> None:
        self.comments[text] = 1

    def close(self) -> None:
        self.closed = True

    def init(self, all_prompts=None, all_seeds=None, all_subseeds=None) -> None:
        """The hires target of ``calculate_target_resolution`` (1.6–1.10)."""
        if not self.enable_hr:
            return
        if self.hr_resize_x == 0 and self.hr_resize_y == 0:
            self.hr_upscale_to_x = int(self.width * self.hr_scale)
            self.hr_upscale_to_y = int(self.height * self.hr_scale)
        elif self.hr_resize_y == 0:
            self.hr_upscale_to_x = self.hr_resize_x
            self.hr_upscale_to_y = self.hr_resize_x * self.height // self.width
        elif self.hr_resize_x == 0:
            self.hr_upscale_to_x = self.hr_resize_y * self.width // self.height
            self.hr_upscale_to_y = self.hr_resize_y
        else:
            if self.width / self.height < self.hr_resize_x / self.hr_resize_y:
                self.hr_upscale_to_x = self.hr_resize_x
                self.hr_upscale_to_y = self.hr_resize_x * self.height // self.width
            else:
                self.hr_upscale_to_x = self.hr_resize_y * self.width // self.height
                self.hr_upscale_to_y = self.hr_resize_y
            self.truncate_x = (self.hr_upscale_to_x - self.hr_resize_x) // 8
            self.truncate_y = (self.hr_upscale_to_y - self.hr_resize_y) // 8

    def _conds(self, rows: int, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {
            "crossattn": torch.randn(rows, 77, 2048, generator=g),
            "vector": torch.randn(rows, 2816, generator=g),
        }

    def _denoise(self, x: torch.Tensor, step: int, steps: int, c: dict, uc: dict) -> torch.Tensor:
        unet = self.sd_model.model.diffusion_model
        n = x.shape[0]
        x_in = torch.cat([x, x])
        params = CFGDenoiserParams(
            x_in, None, torch.full((2 * n,), 1.0), step, steps, c, uc, types.SimpleNamespace(p=self)
        )
        for fn in CALLBACKS.get("cfg_denoiser", []):
            fn(params)
        cond_in = {k: torch.cat([c[k], uc[k]]) for k in c}
        t = torch.full((2 * n,), 999.0 - step * 100)

        def call(rows: slice) -> torch.Tensor:
            return unet(
                x_in[rows], timesteps=t[rows], context=cond_in["crossattn"][rows], y=cond_in["vector"][rows]
            )

        if self.cfg_mode == "together":
            out = call(slice(0, 2 * n))
        elif self.cfg_mode == "skip_uncond":
            cond = call(slice(0, n))
            out = torch.cat([cond, cond])
        else:  # chunked by batch size, and cond/uncond separately, are the same slices here
            out = torch.cat([call(slice(0, n)), call(slice(n, 2 * n))])
        cond, uncond = out[:n], out[n:]
        return x - 0.1 * (uncond + self.cfg_scale * (cond - uncond))

    def _sample_pass(self, x: torch.Tensor) -> torch.Tensor:
        c, uc = self._conds(x.shape[0], 11), self._conds(x.shape[0], 12)
        with torch.no_grad():
            for step in range(self.steps):
                x = self._denoise(x, step, self.steps, c, uc)
        return x

    def _noise(self) -> torch.Tensor:
        """The job's noise, as ``rng.randn``: torch's global generator seeded with the seed."""
        torch.manual_seed(self.seed)
        return torch.randn(self.batch_size, 4, self.height // 8, self.width // 8)

    def sample(
        self, conditioning=None, unconditional_conditioning=None, seeds=None, **kwargs
    ) -> torch.Tensor:
        x = self._sample_pass(self._noise())
        if self.enable_hr:
            self.scripts.before_hr(self)
            up = (self.hr_upscale_to_y // 8, self.hr_upscale_to_x // 8)
            x = torch.nn.functional.interpolate(x, size=up)
            tx, ty = self.truncate_x, self.truncate_y
            x = x[:, :, ty // 2 : x.shape[2] - (ty + 1) // 2, tx // 2 : x.shape[3] - (tx + 1) // 2]
            x = self._sample_pass(x)
        return x


@dataclass
class ProcessingImg2Img(Processing):
    """``StableDiffusionProcessingImg2Img``: init image, inpaint mask and "Only masked" crop."""

    init_images: list = field(default_factory=list)
    image_mask: Any = None
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: int = 0
    resize_mode: int = 0
    denoising_strength: float = 0.75
    paste_to: tuple | None = None
    mask: Any = None
    """The constructor's name for the inpaint mask (stored as ``image_mask``, as the WebUI does)."""
    mask_blur: int = 4
    inpainting_fill: int = 1
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    styles: list = field(default_factory=list)
    outpath_samples: Any = None
    outpath_grids: Any = None

    def __post_init__(self) -> None:
        if self.image_mask is None:
            self.image_mask = self.mask

    init_latent: Any = None

    def init(self, all_prompts=None, all_seeds=None, all_subseeds=None) -> None:
        """The "Only masked" crop, then the init latent: the VAE's posterior *sample*, drawn from
        torch's global generator as sgm's ``DiagonalGaussianDistribution.sample`` does (the job
        has not seeded it yet)."""
        self._crop_only_masked()
        shape = (self.batch_size, 4, self.height // 8, self.width // 8)
        self.init_latent = 0.5 + 0.1 * torch.randn(shape)

    def sample(self, conditioning=None, unconditional_conditioning=None, seeds=None, **kw) -> torch.Tensor:
        x = self.init_latent + self.denoising_strength * self._noise()
        return self._sample_pass(x)

    def _crop_only_masked(self) -> None:
        """The "Only masked" crop: the mask's box plus padding, widened to the output's aspect ratio."""
        if self.image_mask is None or not self.inpaint_full_res:
            return
        mask = np.asarray(self.image_mask.convert("L")) > 127
        if self.inpainting_mask_invert:
            mask = ~mask
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            self.inpaint_full_res = False
            return
        img_h, img_w = mask.shape
        pad = self.inpaint_full_res_padding
        x1, y1 = max(int(xs.min()) - pad, 0), max(int(ys.min()) - pad, 0)
        x2, y2 = min(int(xs.max()) + 1 + pad, img_w), min(int(ys.max()) + 1 + pad, img_h)
        x1, x2 = _widen(x1, x2, (y2 - y1) * self.width / self.height, img_w)
        y1, y2 = _widen(y1, y2, (x2 - x1) * self.height / self.width, img_h)
        self.paste_to = (x1, y1, x2 - x1, y2 - y1)


def _widen(lo: int, hi: int, want: float, limit: int) -> tuple[int, int]:
    """Grow ``[lo, hi)`` symmetrically to at least ``want`` pixels, shifted to stay inside ``[0, limit)``."""
    grow = int(want - (hi - lo))
    if grow <= 0:
        return lo, hi
    lo, hi = lo - grow // 2, hi + grow - grow // 2
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, min(hi - lo, limit)
    return lo, hi


@dataclass
class Processed:
    images: list
    """One PIL image per output, after every script's ``postprocess_image`` (as the WebUI's)."""
    extra_generation_params: dict
    latents: torch.Tensor | None = None
    """The last batch's final latents (what the stand-in's sampler computed)."""
    infotexts: list = field(default_factory=list)
    """Per output: ``extra_generation_params`` as the WebUI reads them for that image's infotext."""


@dataclass
class PostprocessImageArgs:
    image: Image.Image


RENDERER: Callable[[Any, Image.Image], Image.Image] | None = None
"""What the stand-in "model" paints into an img2img canvas (tests set it); None: the canvas as is."""


def _latent_picture(latent: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """A picture standing in for the VAE decode: the latent's first 3 channels, upscaled."""
    rgb = latent[:3].float()
    rgb = (rgb - rgb.min()) / (rgb.max() - rgb.min() + 1e-6) * 255
    array = rgb.permute(1, 2, 0).numpy().astype(np.uint8)
    return Image.fromarray(array).resize(size, Image.NEAREST)


def _decode(p: Processing, samples: torch.Tensor) -> list[Image.Image]:
    """The pictures of one batch: txt2img's ``base_image`` or latents; img2img paints and pastes back."""
    size = (int(p.width), int(p.height))
    if not isinstance(p, ProcessingImg2Img) or not p.init_images:
        base = getattr(p, "base_image", None)
        return [base.copy() if base is not None else _latent_picture(s, size) for s in samples]
    init = p.init_images[0].convert("RGB")
    if p.paste_to is None:
        canvas = init.resize(size, Image.LANCZOS)
        painted = RENDERER(p, canvas) if RENDERER is not None else canvas
        return [painted for _ in samples]
    x, y, w, h = p.paste_to
    canvas = init.crop((x, y, x + w, y + h)).resize(size, Image.LANCZOS)
    painted = RENDERER(p, canvas) if RENDERER is not None else canvas
    # apply_overlay: the sampled crop goes back into the picture, only where the mask is.
    pasted = init.copy()
    pasted.paste(painted.resize((w, h), Image.LANCZOS), (x, y))
    mask = p.image_mask.convert("L")
    if p.mask_blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(p.mask_blur))
    return [Image.composite(pasted, init, mask) for _ in samples]


def process_images(p: Processing) -> Processed:
    p.scripts.before_process(p)
    swap = getattr(p, "model_after_before_process", None)
    if swap is not None:  # the job's checkpoint (override_settings, after a refiner job) loads now
        p.sd_model = swap
    p.setup_prompts()
    p.all_seeds = [p.seed + i for i in range(p.batch_size * p.n_iter)]
    p.all_prompts = [p.prompt] * len(p.all_seeds)
    p.all_negative_prompts = [p.negative_prompt] * len(p.all_seeds)
    p.scripts.process(p)
    p.init(p.all_prompts, p.all_seeds, [0] * len(p.all_seeds))
    samples = None
    outputs, infotexts = [], []
    for n in range(p.n_iter):
        p.iteration = n
        p.seeds = p.all_seeds[n * p.batch_size : (n + 1) * p.batch_size]
        p.scripts.process_batch(p, batch_number=n, prompts=[""], seeds=p.seeds, subseeds=[0])
        samples = p.sample(conditioning=None, unconditional_conditioning=None, seeds=p.seeds)
        for i, picture in enumerate(_decode(p, samples)):
            p.batch_index = i
            pp = PostprocessImageArgs(picture)
            p.scripts.postprocess_image(p, pp)
            outputs.append(pp.image)
            infotexts.append(dict(p.extra_generation_params))  # the image's infotext is written now
    processed = Processed(outputs, dict(p.extra_generation_params), samples, infotexts)
    p.scripts.postprocess(p, processed)
    return processed


def run_job(p: Processing) -> Processed:
    """What the WebUI's txt2img/img2img/API do: ``with closing(p): process_images(p)``."""
    try:
        return process_images(p)
    finally:
        p.close()


# -- installing the stand-in -----------------------------------------------------------------
def install(models_path: Path) -> dict[str, types.ModuleType]:
    """Put the stand-in modules into ``sys.modules``; returns them (call :func:`uninstall` after)."""
    HOOK_ERRORS.clear()
    CALLBACKS.clear()
    modules = types.ModuleType("modules")
    modules.__path__ = []
    scripts = types.ModuleType("modules.scripts")
    scripts.Script, scripts.AlwaysVisible, scripts.ScriptRunner = Script, AlwaysVisible, ScriptRunner
    scripts.ScriptClassData, scripts.scripts_data = ScriptClassData, []  # what load_scripts() found
    shared = types.ModuleType("modules.shared")
    shared.opts = Options()
    shared.cmd_opts = types.SimpleNamespace()
    shared.OptionInfo = OptionInfo
    shared.sd_model = None
    paths = types.ModuleType("modules.paths")
    paths.models_path = str(models_path)
    callbacks = types.ModuleType("modules.script_callbacks")
    for name in (
        "cfg_denoiser",
        "script_unloaded",
        "app_started",
        "ui_settings",
        "before_ui",
        "model_loaded",
    ):
        setattr(callbacks, f"on_{name}", _register(name))
    callbacks.CFGDenoiserParams = CFGDenoiserParams
    callbacks.remove_callbacks_for_function = remove_callbacks_for_function
    processing = types.ModuleType("modules.processing")
    processing.process_images = process_images
    processing.PostprocessImageArgs = PostprocessImageArgs
    processing.StableDiffusionProcessingTxt2Img = Processing
    processing.StableDiffusionProcessingImg2Img = ProcessingImg2Img
    installed = {
        "modules": modules,
        "modules.scripts": scripts,
        "modules.shared": shared,
        "modules.paths": paths,
        "modules.script_callbacks": callbacks,
        "modules.processing": processing,
    }
    for name, module in installed.items():
        sys.modules[name] = module
        if name != "modules":
            setattr(modules, name.split(".", 1)[1], module)
    return installed


def uninstall() -> None:
    for name in list(sys.modules):
        if name == "modules" or name.startswith(("modules.", "instantid_ext.webui")):
            del sys.modules[name]
