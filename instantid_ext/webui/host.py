"""Every use of the WebUI's own modules, in one place, with the version differences handled.

Supported hosts: AUTOMATIC1111 1.6.0 to 1.10.1. The rest of :mod:`instantid_ext.webui`
asks this module for paths, options and model checks instead of importing ``modules.*``,
which keeps the glue testable with a small stand-in of these few names.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from modules import paths, script_callbacks, shared

from ..errors import IncompatibleModelError, InstantIDError
from ..resources import Locations
from ..sdxl_layers import sdxl_attn2_layers

logger = logging.getLogger(__name__)

SDXL_VECTOR = 2816
"""Width of SDXL base's ``y`` (pooled text + size/crop embeddings); the refiner uses 2560."""


def cmd_opt(name: str, default: Any = None) -> Any:
    return getattr(shared.cmd_opts, name, default) or default


def opt(name: str, default: Any = None) -> Any:
    return getattr(shared.opts, name, default)


def models_dir() -> Path:
    return Path(paths.models_path)


def controlnet_extension_dir() -> Path | None:
    """sd-webui-controlnet's folder, found through a module of its that is really imported.

    The WebUI runs ``scripts/controlnet.py`` under the bare name "controlnet.py", so that
    name is not in ``sys.modules``; the modules ControlNet imports itself
    (``from scripts import external_code``) are, as ``scripts.external_code`` etc.
    """
    for name in ("scripts.external_code", "scripts.controlnet_version", "scripts.global_state"):
        file = getattr(sys.modules.get(name), "__file__", None)
        if file:
            return Path(file).resolve().parent.parent
    return None


def controlnet_annotator_dir() -> Path | None:
    """Where ControlNet keeps annotator downloads (it stores antelopev2 below ``insightface``)."""
    configured = opt("control_net_modules_path") or cmd_opt("controlnet_annotator_models_path")
    if configured:
        return Path(configured)
    ext = controlnet_extension_dir()
    return ext / "annotator" / "downloads" if ext else None


def locations() -> Locations:
    """Model folders in search order: ours first (where users are told to put files)."""
    ours = Path(cmd_opt("instantid_models_dir") or models_dir() / "instantid")
    controlnet_dirs = [models_dir() / "ControlNet", cmd_opt("controlnet_dir"), opt("control_net_models_path")]
    ext = controlnet_extension_dir()
    if ext:
        controlnet_dirs.append(ext / "models")
    extra = [
        Path(p.strip()) for p in str(opt("instantid_extra_model_dirs", "") or "").split(";") if p.strip()
    ]
    model_dirs = [ours, *extra, *(Path(d) for d in controlnet_dirs if d)]
    insightface = [cmd_opt("instantid_insightface_dir"), models_dir() / "insightface"]
    annotator = controlnet_annotator_dir()
    if annotator:
        insightface.append(annotator / "insightface")
    providers = opt("instantid_providers") or cmd_opt("instantid_providers", "cpu")
    return Locations(
        model_dirs=tuple(dict.fromkeys(Path(p) for p in model_dirs)),
        insightface_roots=tuple(dict.fromkeys(Path(p) for p in insightface if p)),
        identity_dir=ours / "identities",
        providers=str(providers),
    )


def check_sdxl_base(model: Any) -> None:
    """Refuse anything but an SDXL base UNet (SD1.x/2.x, refiner, SSD-1B, SD3), naming it."""
    if model is None:
        msg = "No Stable Diffusion checkpoint is loaded; load an SDXL model first."
        raise IncompatibleModelError(msg)
    name = getattr(getattr(model, "sd_checkpoint_info", None), "name_for_extra", None) or "the loaded model"
    if getattr(model, "is_sd3", False):
        msg = f"InstantID works with SDXL models; {name} is Stable Diffusion 3. Load an SDXL checkpoint."
        raise IncompatibleModelError(msg)
    if not getattr(model, "is_sdxl", False):
        family = "SD2.x" if getattr(model, "is_sd2", False) else "SD1.x"
        msg = (
            f"InstantID works only with SDXL models, but {name} is {family}. Load an SDXL checkpoint "
            "(e.g. SDXL base or a fine-tune of it) to use InstantID."
        )
        raise IncompatibleModelError(msg)
    if getattr(model, "is_ssd", False):
        msg = f"{name} is SSD-1B, a distilled SDXL with fewer attention layers; InstantID needs SDXL base."
        raise IncompatibleModelError(msg)
    unet = unet_of(model)
    label_emb = getattr(unet, "label_emb", None)
    try:
        vector = label_emb[0][0].in_features
    except (TypeError, IndexError, AttributeError):
        vector = SDXL_VECTOR
    if vector != SDXL_VECTOR:
        msg = f"{name} is the SDXL refiner; InstantID needs an SDXL base model (use it before the refiner)."
        raise IncompatibleModelError(msg)
    sdxl_attn2_layers(unet)


@contextlib.contextmanager
def cfg_denoiser_callback(callback: Callable[[Any], None]) -> Iterator[None]:
    """Have the WebUI call ``callback`` before every denoiser step while the block runs.

    Registered for one sampling call and removed after it (also on error), so each job's
    callback serves that job alone and nothing of it outlives the job.
    """
    script_callbacks.on_cfg_denoiser(callback)
    try:
        yield
    finally:
        script_callbacks.remove_callbacks_for_function(callback)


def unet_of(model: Any) -> Any:
    """The sgm ``UNetModel`` inside the WebUI's model wrapper."""
    try:
        return model.model.diffusion_model
    except AttributeError as err:
        msg = (
            "This model has no accessible UNet (a TensorRT or other custom UNet?); InstantID cannot hook it."
        )
        raise IncompatibleModelError(msg) from err


def as_http_error(error: InstantIDError) -> InstantIDError:
    """The same error, also typed as FastAPI's ``HTTPException`` with status 422.

    The WebUI's API answers ``vars(e)["status_code"]`` and prints a full traceback for any
    exception that is not an ``HTTPException``; a user mistake (no face, wrong model) deserves
    a 422 and one log line, not a traceback. The class keeps its name and message, so the
    UI still shows e.g. "NoFaceError: No face was found …".
    """
    try:
        from fastapi import HTTPException
    except ImportError:  # not in a WebUI process: the plain error with the attributes will do
        error.status_code = 422  # type: ignore[attr-defined]
        error.detail = str(error)  # type: ignore[attr-defined]
        return error
    if isinstance(error, HTTPException):
        return error
    message = str(error)
    http_type = type(type(error).__name__, (type(error), HTTPException), {"__str__": lambda self: message})
    wrapped = Exception.__new__(http_type)
    Exception.__init__(wrapped, message)
    wrapped.status_code, wrapped.detail, wrapped.headers = 422, message, None
    wrapped.__cause__ = error
    return wrapped


def abort_job(p: Any, error: InstantIDError) -> None:
    """Stop the job with ``error`` shown to the user (UI) or as HTTP 422 (API).

    The WebUI catches and only logs exceptions raised in script hooks, so raising there
    would let the job run without InstantID. ``p.setup_prompts()`` is the first call of
    ``process_images_inner`` that is not wrapped (1.6–1.10) and runs before any other
    script's ``process``: shadowing it on the instance aborts before anything is hooked.
    """
    error = as_http_error(error)

    def raise_error(*args: Any, **kwargs: Any) -> None:
        raise error

    p.setup_prompts = raise_error


def nested_inpaint(
    p: Any,
    *,
    image: Any,
    mask: Any,
    mask_blur: int,
    padding: int,
    size: int,
    strength: float,
    prompt: str,
    negative_prompt: str,
    seed: int,
    subseed: int,
) -> Any:
    """An "Only masked" img2img inpaint of ``image`` with ``p``'s sampler settings, not saved.

    The WebUI crops the mask's box plus ``padding``, samples it at ``size``×``size`` and pastes
    the masked (``mask_blur``-feathered) pixels back into the full image. Only the keyword
    arguments this WebUI's processing class takes are passed (1.6 has no ``scheduler``).
    """
    import inspect

    from modules import processing

    values: dict[str, Any] = {
        "sd_model": p.sd_model,
        "outpath_samples": getattr(p, "outpath_samples", None),
        "outpath_grids": getattr(p, "outpath_grids", None),
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "styles": [],
        "seed": seed,
        "subseed": subseed,
        "subseed_strength": getattr(p, "subseed_strength", 0),
        "sampler_name": getattr(p, "sampler_name", None),
        "scheduler": getattr(p, "scheduler", None),
        "batch_size": 1,
        "n_iter": 1,
        "steps": int(p.steps),
        "cfg_scale": float(p.cfg_scale),
        "width": int(size),
        "height": int(size),
        "init_images": [image],
        "mask": mask,
        "mask_blur": int(mask_blur),
        "inpainting_fill": 1,  # "original": start from the face that is there
        "resize_mode": 0,
        "denoising_strength": float(strength),
        "inpaint_full_res": True,
        "inpaint_full_res_padding": int(padding),
        "inpainting_mask_invert": 0,
        "do_not_save_samples": True,
        "do_not_save_grid": True,
    }
    cls = processing.StableDiffusionProcessingImg2Img
    accepted = set(inspect.signature(cls).parameters)
    return cls(**{name: value for name, value in values.items() if name in accepted and value is not None})


def process_nested(p: Any) -> Any:
    """Run a nested generation and close it, as the WebUI does with its own (``closing(p)``)."""
    from modules import processing

    try:
        return processing.process_images(p)
    finally:
        p.close()


def webui_version() -> str:
    """The WebUI's version tag (e.g. ``v1.10.1``), or "unknown"."""
    try:
        from modules import launch_utils

        return str(launch_utils.git_tag())
    except Exception:  # version lookup must never break a request
        return "unknown"


def api_dependencies() -> list[Any]:
    """FastAPI dependencies enforcing the WebUI's ``--api-auth`` on our routes too."""
    auth = cmd_opt("api_auth")
    if not auth:
        return []
    from secrets import compare_digest

    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic, HTTPBasicCredentials

    users = dict(item.split(":", 1) for item in str(auth).split(",") if ":" in item)

    def check(credentials: HTTPBasicCredentials = Depends(HTTPBasic())) -> None:  # noqa: B008
        password = users.get(credentials.username)
        if password is not None and compare_digest(credentials.password, password):
            return
        raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    return [Depends(check)]
