"""Every use of the WebUI's own modules, in one place, with the version differences handled.

Supported hosts: AUTOMATIC1111 1.6.0 to 1.10.1, Forge Classic and reForge (:func:`is_forge`);
Forge and Forge Neo are recognised and refused (:func:`forge_message`). The rest of
:mod:`instantid_ext.webui` asks this module for paths, options, model checks, the protection
of our HTTP routes (the WebUI's own ``--api-auth``/``--gradio-auth``) and the WebUI's hash
cache instead of importing ``modules.*``, which keeps the glue testable with a small stand-in
of these few names.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from secrets import compare_digest
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from modules import paths, script_callbacks, shared

from ..errors import DependencyError, IncompatibleModelError, InstantIDError
from ..job.resources import Locations
from ..method.sdxl_layers import sdxl_attn2_layers
from ..models.file_hashes import set_hash_store

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


# -- HTTP protection --------------------------------------------------------------------------
UNAUTHORIZED = "Incorrect username or password"
GRADIO_TOKEN_COOKIES = ("access-token", "access-token-unsecure")
"""The cookies gradio 3.41 sets at the WebUI's login page; ``app.tokens`` maps them to users."""


def _parse_credentials(text: str | None) -> dict[str, str]:
    """``"u1:p1,u2:p2"`` (the format of ``--api-auth`` and ``--gradio-auth``) as a dict."""
    users: dict[str, str] = {}
    for item in str(text or "").split(","):
        item = item.strip()
        if ":" in item:
            user, password = item.split(":", 1)
            users[user] = password
    return users


def api_credentials() -> dict[str, str]:
    """The users of ``--api-auth``."""
    return _parse_credentials(cmd_opt("api_auth"))


def gradio_auth_enabled() -> bool:
    """Whether the WebUI's page asks for a login (``--gradio-auth`` or ``--gradio-auth-path``)."""
    return bool(cmd_opt("gradio_auth") or cmd_opt("gradio_auth_path"))


def gradio_credentials() -> dict[str, str]:
    """The users of ``--gradio-auth`` and ``--gradio-auth-path``, read as the WebUI reads them
    (an unreadable file gives no users: only the login cookie is then accepted)."""
    try:
        from modules import initialize_util

        pairs = list(initialize_util.get_gradio_auth_creds())
    except (ImportError, AttributeError):  # not in this WebUI (a stand-in host): same format, parsed here
        pairs = None
    except OSError as err:
        logger.error("Cannot read the --gradio-auth-path file (%s).", err)
        return {}
    if pairs is not None:
        return {str(pair[0]): str(pair[1]) for pair in pairs if len(pair) == 2}
    users = _parse_credentials(cmd_opt("gradio_auth"))
    auth_path = cmd_opt("gradio_auth_path")
    if auth_path:
        try:
            lines = Path(auth_path).read_text(encoding="utf8").splitlines()
        except OSError as err:
            logger.error("Cannot read the --gradio-auth-path file %s (%s).", auth_path, err)
            return users
        for line in lines:
            users.update(_parse_credentials(line))
    return users


def _ui_login_user(request: Any) -> str | None:
    """The user logged in to the WebUI's page (gradio's login cookie), or None."""
    tokens = getattr(request.app, "tokens", None)
    if not isinstance(tokens, dict):
        return None
    for name in GRADIO_TOKEN_COOKIES:
        token = request.cookies.get(name)
        if token and token in tokens:
            return str(tokens[token])
    return None


def api_dependencies() -> list[Any]:
    """FastAPI dependencies that protect our routes the way the WebUI protects itself.

    * ``--api-auth``: HTTP basic with those users, exactly like the WebUI's ``/sdapi`` routes;
    * otherwise ``--gradio-auth``/``--gradio-auth-path``: the UI's users, either as HTTP basic
      or through the login cookie a browser got at the WebUI's login page;
    * neither: open, like the WebUI's own API.

    Credentials are read once, when the routes are registered (the WebUI does the same).
    """

    def matches(users: dict[str, str], credentials: HTTPBasicCredentials | None) -> bool:
        if credentials is None:
            return False
        password = users.get(credentials.username)
        return password is not None and compare_digest(credentials.password.encode(), password.encode())

    def refuse(credentials: HTTPBasicCredentials | None) -> HTTPException:
        detail = UNAUTHORIZED if credentials is not None else "Not authenticated"  # as FastAPI's HTTPBasic
        return HTTPException(401, detail, headers={"WWW-Authenticate": "Basic"})

    api_users = api_credentials()
    if api_users:

        def check_api(credentials: HTTPBasicCredentials = Depends(HTTPBasic())) -> None:  # noqa: B008
            if not matches(api_users, credentials):
                raise refuse(credentials)

        return [Depends(check_api)]
    if gradio_auth_enabled():
        ui_users = gradio_credentials()
        optional_basic = HTTPBasic(auto_error=False)

        def check_ui(
            request: Request,
            credentials: HTTPBasicCredentials | None = Depends(optional_basic),  # noqa: B008
        ) -> None:
            if matches(ui_users, credentials) or _ui_login_user(request) is not None:
                return
            raise refuse(credentials)

        return [Depends(check_ui)]
    return []


# -- file hashes in the WebUI's cache -------------------------------------------------------------
class WebUIHashStore:
    """The WebUI's own hash cache (``cache.json`` / ``cache/`` in its data folder), which keeps
    checkpoint and LoRA hashes across restarts, keyed by a title and the file's mtime.

    Titles are ``instantid/<absolute path>``: unique per file, so two files of the same name
    in different folders never share an entry. With ``--no-hashing`` the WebUI's function
    returns nothing; the digest is then computed and kept in memory only.
    """

    @staticmethod
    def title(path: Path) -> str:
        return f"instantid/{Path(path).resolve().as_posix()}"

    def lookup(self, path: Path) -> str | None:
        from modules import hashes

        value = hashes.sha256(str(path), self.title(path))
        return str(value) if value else None

    def record(self, path: Path, sha256: str) -> None:
        """Nothing: the WebUI keeps what it computes itself, and keeps nothing under --no-hashing."""


def use_webui_hash_cache() -> None:
    """Keep InstantID's model hashes (for infotexts) in the WebUI's persistent hash cache."""
    try:
        from modules import hashes
    except ImportError:
        return
    if callable(getattr(hashes, "sha256", None)):
        set_hash_store(WebUIHashStore())


# -- Forge and its forks ----------------------------------------------------------------------------
_FORGE_VERSION = re.compile(r"""^\s*version\s*=\s*['"]([^'"]*)['"]""", re.MULTILINE)


def _forge_version() -> str:
    """``modules_forge.forge_version.version``, read without importing Forge's modules."""
    module = sys.modules.get("modules_forge.forge_version")
    if module is not None:
        return str(getattr(module, "version", "") or "")
    try:
        spec = importlib.util.find_spec("modules_forge")
    except (ImportError, ValueError):
        return ""
    locations = list(getattr(spec, "submodule_search_locations", None) or [])
    for folder in locations:
        try:
            match = _FORGE_VERSION.search((Path(folder) / "forge_version.py").read_text(encoding="utf8"))
        except OSError:
            continue
        if match:
            return match.group(1)
    return ""


def _is_forge_family() -> bool:
    if "modules_forge" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("modules_forge") is not None
    except (ImportError, ValueError):
        return False


def _builtin_extension_names() -> list[str]:
    root = getattr(paths, "script_path", None)
    if not root:
        return []
    try:
        return [entry.name for entry in (Path(root) / "extensions-builtin").iterdir()]
    except OSError:
        return []


def forge_name() -> str | None:
    """ "Forge", "reForge", "Forge Classic" or "Forge Neo" (with its version) when the WebUI is
    one of them, else None.

    All of them ship the ``modules_forge`` package, which AUTOMATIC1111 does not have. reForge
    is told apart by its built-in ``reForge-…`` extensions; Haoming02's forks by their version
    string ("classic"/"neo").
    """
    if not _is_forge_family():
        return None
    version = _forge_version()
    lowered = version.lower()
    if lowered.startswith("neo"):
        name = "Forge Neo"
    elif lowered.startswith("classic"):
        name = "Forge Classic"
    elif any("reforge" in entry.lower() for entry in _builtin_extension_names()):
        name = "reForge"
    else:
        name = "Forge"
    return f"{name} ({version})" if version and lowered not in ("neo", "classic") else name


SUPPORTED_FORGE = ("Forge Classic", "reForge")
"""The Forge-family hosts InstantID runs on (their backend: :mod:`instantid_ext.forge`)."""


def is_forge() -> bool:
    """Whether the WebUI is one of :data:`SUPPORTED_FORGE` (else AUTOMATIC1111, or refused)."""
    name = forge_name()
    return name is not None and name.startswith(SUPPORTED_FORGE)


def check_supported() -> None:
    """Raise :class:`DependencyError` with the one sentence when the WebUI is a Forge that
    InstantID does not run on."""
    message = forge_message()
    if message is not None:
        raise DependencyError(message)


def forge_message() -> str | None:
    """The one sentence shown on a Forge InstantID does not run on (console, every job,
    /status), else None (AUTOMATIC1111, Forge Classic, reForge)."""
    name = forge_name()
    if name is None or is_forge():
        return None
    return (
        f"InstantID does not support Stable Diffusion WebUI {name} yet: it runs in Forge Classic, reForge "
        "and the AUTOMATIC1111 WebUI 1.6.0 to 1.10.1, so use one of them."
    )
