"""HTTP routes under ``/instantid/v1/``: version, status, arguments schema, face analysis, identities.

The WebUI glue calls :func:`register_routes` from ``on_app_started`` and passes in everything
the routes need as callables, so this module imports nothing from ``modules.*`` and is tested
on a plain FastAPI app.

Error contract, the same under the WebUI's own API exception handlers and without them:

* an :class:`InstantIDError` (no face, bad image, unknown or duplicate identity name, missing
  or damaged model files, missing packages) → **422** ``{"detail": "<one sentence>"}``;
* a deleted identity that does not exist → **404** ``{"detail": ...}``;
* a body that does not match the request model → FastAPI's own **422** (a list of field errors);
* anything else → **500** ``{"detail": ...}`` and the traceback in the console.

Our errors are turned into responses inside the route (see :class:`_InstantIDRoute`), never
raised to the app: the WebUI installs app-wide handlers that would rewrite the body of a
raised ``HTTPException`` and print a traceback for any other exception.

The routes are plain ``def`` functions, so FastAPI runs them in its thread pool and face
analysis never blocks the event loop; the face analyzer serialises calls to each loaded
model itself.

The models use pydantic's 1.x API (``pydantic.v1`` under pydantic 2). FastAPI validates and
documents them only where it runs on pydantic 1 (AUTOMATIC1111, Forge Classic, reForge). Where
it runs on pydantic 2 (Forge 2.x: FastAPI 0.104, pydantic 2.8) it cannot take them: bodies are
then parsed here (the same 422 field list) and responses sent as plain JSON, so the WebUI's own
``/docs`` and ``/openapi.json`` keep working (see :func:`fastapi_takes_models`).
"""

from __future__ import annotations

import inspect
import io
import logging
import math
import re
import warnings
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import fastapi
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from PIL import Image
from starlette.exceptions import HTTPException

from ..args import InstantIDArgs
from ..args.choices import spell_choice
from ..args.ranges import MAX_FACE_INDEX
from ..errors import InstantIDError, InvalidInputError
from ..faces.analysis import ChoiceMode, Face, choose_face
from ..faces.identity import STORE_LOCK, SUFFIX, check_identity_name, save_from_photos
from ..images import MAX_IMAGE_PIXELS, b64decode_lenient, decode_image, encode_image_png_base64
from ..job.resources import Resources
from ..method.keypoints import draw_kps

try:
    from pydantic.v1 import BaseModel, Extra, Field, ValidationError, root_validator, validator
except ImportError:  # pydantic < 1.10.17 has no v1 alias
    from pydantic import (  # type: ignore[assignment, no-redef]
        BaseModel,
        Extra,
        Field,
        ValidationError,
        root_validator,
        validator,
    )

logger = logging.getLogger(__name__)

PREFIX = "/instantid/v1"
TAG = "InstantID"
#: Most photos one identity may be averaged from.
MAX_IDENTITY_IMAGES = 32

_DATA_URL = re.compile(r"^data:[\w.+/-]*(?:;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/\-_]*={0,2}$")
_WHITESPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------------------
# Request and response models
# --------------------------------------------------------------------------------------


class _Request(BaseModel):
    class Config:
        extra = Extra.forbid


class AnalyzeRequest(_Request):
    """Find the faces in one image and show which one InstantID would use."""

    image: str = Field(
        ..., description="The image as base64 (PNG/JPEG/WebP) or a data:image/...;base64, URL."
    )
    face_choice: ChoiceMode = Field("largest", description="Which face to use when there are several.")
    face_index: int = Field(
        0,
        ge=0,
        le=MAX_FACE_INDEX,
        description="With face_choice 'index': faces counted left to right from 0.",
    )
    return_kps_image: bool = Field(
        True, description="Also return the IdentityNet keypoint image (base64 PNG)."
    )
    return_embedding: bool = Field(False, description="Also return each face's raw 512-d embedding.")

    _face_choice = validator("face_choice", pre=True, allow_reuse=True)(spell_choice)


class FaceModel(BaseModel):
    """One detected face, in the analysed image's pixels."""

    index: int = Field(..., description="Position from the left, from 0 (what face_index counts).")
    bbox: list[float] = Field(..., description="x1, y1, x2, y2")
    kps: list[list[float]] = Field(..., description="5 × [x, y]: eyes, nose tip, mouth corners.")
    score: float
    area: float
    embedding: list[float] | None = Field(None, description="Raw 512-d embedding, with return_embedding.")


class AnalyzeResponse(BaseModel):
    faces: list[FaceModel] = Field(..., description="Every face found, left to right.")
    chosen: int = Field(..., description="Index of the face InstantID would use with this face_choice.")
    width: int
    height: int
    kps_image: str | None = Field(
        None, description="base64 PNG of the chosen face's keypoints at the image size (IdentityNet's hint)."
    )


class IdentityInfo(BaseModel):
    name: str
    file: str = Field(..., description="File name in the identity folder.")
    source_count: int | None = Field(None, description="How many photos were averaged.")
    created: str | None = Field(None, description="When it was saved (ISO 8601, UTC).")
    problem: str | None = Field(None, description="Why the file cannot be used, if it cannot.")


class IdentityList(BaseModel):
    identities: list[IdentityInfo]


class CreateIdentityRequest(_Request):
    """Average the faces of one person's photos into a reusable identity file."""

    name: str = Field(..., description="1-64 letters, digits, spaces, '-', '_' or '.'; the file name.")
    images: list[str] = Field(
        ...,
        min_items=1,
        max_items=MAX_IDENTITY_IMAGES,
        description="Photos of the same person as base64 or data:image/...;base64, URLs.",
    )
    weights: list[float] | None = Field(None, description="Weight of each photo in the average (≥ 0).")
    face_choice: ChoiceMode = Field("largest", description="Which face to use in each photo.")
    face_index: int = Field(0, ge=0, le=MAX_FACE_INDEX, description="With face_choice 'index'.")
    overwrite: bool = Field(False, description="Replace an identity of the same name.")

    _face_choice = validator("face_choice", pre=True, allow_reuse=True)(spell_choice)

    @root_validator(skip_on_failure=True)
    @classmethod
    def _one_weight_per_image(cls, values: dict[str, Any]) -> dict[str, Any]:
        weights, images = values.get("weights"), values.get("images") or []
        if weights is None:
            return values
        if len(weights) != len(images):
            msg = f"give one weight per image: got {len(weights)} weights for {len(images)} images"
            raise ValueError(msg)
        if any(not math.isfinite(w) or w < 0 for w in weights) or not any(weights):
            msg = f"weights must be ≥ 0 and not all 0, got {weights}"
            raise ValueError(msg)
        return values


class CreateIdentityResponse(BaseModel):
    name: str
    file: str = Field(..., description="File name in the identity folder.")
    source_count: int
    created: str


class DeleteIdentityResponse(BaseModel):
    deleted: bool


class ErrorResponse(BaseModel):
    detail: str


# --------------------------------------------------------------------------------------
# Error handling
# --------------------------------------------------------------------------------------


class _NotFoundError(Exception):
    """A named thing the request addresses does not exist (404)."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message})


class _InstantIDRoute(APIRoute):
    """Turns our exceptions into responses before they reach the app's exception handlers."""

    def get_route_handler(self) -> Callable[[fastapi.Request], Coroutine[Any, Any, fastapi.Response]]:
        handler = super().get_route_handler()

        async def guarded(request: fastapi.Request) -> fastapi.Response:
            try:
                return await handler(request)
            except (RequestValidationError, HTTPException):
                raise  # FastAPI's 422 with the field list; 401 from an auth dependency
            except InstantIDError as err:
                logger.warning("API %s %s: %s", request.method, request.url.path, err)
                return _error(422, str(err))
            except _NotFoundError as err:
                return _error(404, str(err))
            except Exception as err:
                logger.exception("API %s %s failed unexpectedly", request.method, request.url.path)
                text = str(err)
                text = f": {text[:200]}" if text else ""
                return _error(
                    500,
                    f"InstantID failed unexpectedly ({type(err).__name__}{text}); "
                    "the traceback is in the WebUI console.",
                )

        return guarded


_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "An InstantID error (one sentence) or a malformed body"},
    500: {"model": ErrorResponse, "description": "An unexpected failure; the traceback is in the console"},
}


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


def _base64_bytes(value: str, field: str) -> bytes:
    """The bytes of a base64 string or data URL. File paths and URLs are refused: the API
    must not read files on the server or go to the network on a caller's behalf."""
    text = value.strip()
    if not text:
        msg = f"{field} is empty: send the image as base64 (for example the output of `base64 -w0 face.png`)."
        raise InvalidInputError(msg)
    if text[:5].lower() == "data:":
        match = _DATA_URL.match(text)
        if match is None:
            msg = f"{field} is a data URL but not a base64 one: use data:image/png;base64,<data>."
            raise InvalidInputError(msg)
        text = text[match.end() :]
    payload = _WHITESPACE.sub("", text)
    if not _BASE64_CHARS.match(payload):
        where = "a URL" if payload[:8].lower().startswith(("http:", "https:")) else "not base64"
        msg = (
            f"{field} is {where}: send the image itself as base64 (plain or as a data:image/png;base64, "
            "URL). The API reads neither URLs nor files on the server."
        )
        raise InvalidInputError(msg)
    try:
        return b64decode_lenient(payload)
    except ValueError as err:
        msg = f"{field} is not valid base64 ({err})."
        raise InvalidInputError(msg) from err


def _check_pixels(data: bytes, field: str) -> None:
    """Refuse oversized images from their header, before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
    except Image.DecompressionBombError:
        width = height = None
    except (OSError, ValueError, SyntaxError, EOFError):
        return  # not readable: decode_image explains that
    if width is None or height is None or width * height > MAX_IMAGE_PIXELS:
        size = "" if width is None or height is None else f" ({width}×{height})"
        msg = (
            f"{field} is too large{size}: the limit is {MAX_IMAGE_PIXELS // 1_000_000} megapixels. "
            "Scale it down; face analysis does not need more."
        )
        raise InvalidInputError(msg)


def read_image(value: str, field: str) -> Image.Image:
    """An API image field as an upright RGB PIL image; errors name ``field``."""
    data = _base64_bytes(value, field)
    _check_pixels(data, field)
    try:
        return decode_image(data)
    except InvalidInputError as err:
        msg = f"{field}: {err}"
        raise InvalidInputError(msg) from err


# --------------------------------------------------------------------------------------
# Route bodies
# --------------------------------------------------------------------------------------


def _face_model(index: int, face: Face, with_embedding: bool) -> FaceModel:
    """A face as JSON; the embedding is left unset (so left out of the response) unless asked for."""
    extra = {"embedding": [float(v) for v in face.embedding]} if with_embedding else {}
    return FaceModel(
        index=index,
        bbox=[float(v) for v in face.bbox],
        kps=[[float(x), float(y)] for x, y in face.kps],
        score=float(face.score),
        area=float(face.area),
        **extra,
    )


def _analyze_faces(resources: Resources, image: Image.Image, label: str) -> list[Face]:
    """All faces, or the analyzer's own NoFaceError (it carries the advice on tight crops)."""
    analyzer = resources.analyzer()
    faces = analyzer.analyze(image, label=label)
    if not faces:
        analyzer.analyze_one(image, label=label)  # same (cached) result: raises NoFaceError
    return faces


def _chosen_index(faces: list[Face], mode: ChoiceMode, index: int, label: str) -> int:
    chosen = choose_face(faces, mode, index, label=label)
    return next(i for i, face in enumerate(faces) if face is chosen)


def analyze(resources: Resources, body: AnalyzeRequest) -> AnalyzeResponse:
    image = read_image(body.image, "image")
    faces = _analyze_faces(resources, image, "the image")
    chosen = _chosen_index(faces, body.face_choice, body.face_index, "the image")
    kps_image = None
    if body.return_kps_image:
        kps_image = encode_image_png_base64(draw_kps(image.size, faces[chosen].kps))
    return AnalyzeResponse(
        faces=[_face_model(i, face, body.return_embedding) for i, face in enumerate(faces)],
        chosen=chosen,
        width=image.width,
        height=image.height,
        kps_image=kps_image,
    )


def list_identities(resources: Resources) -> IdentityList:
    store = resources.identities()
    items = []
    for name in store.names():
        try:
            identity = store.load(name)
        except InstantIDError as err:
            items.append(IdentityInfo(name=name, file=f"{name}{SUFFIX}", problem=str(err)))
            continue
        items.append(
            IdentityInfo(
                name=name,
                file=f"{name}{SUFFIX}",
                source_count=identity.source_count,
                created=identity.created or None,
            )
        )
    return IdentityList(identities=items)


def create_identity(resources: Resources, body: CreateIdentityRequest) -> CreateIdentityResponse:
    photos = ((f"images[{i}]", read_image(value, f"images[{i}]")) for i, value in enumerate(body.images))
    path, identity = save_from_photos(
        resources.identities(),
        resources.analyzer,
        body.name,
        photos,
        face_choice=body.face_choice,
        face_index=body.face_index,
        weights=body.weights,
        overwrite=body.overwrite,
        overwrite_hint='send "overwrite": true',
    )
    return CreateIdentityResponse(
        name=path.stem, file=path.name, source_count=identity.source_count, created=identity.created
    )


def delete_identity(resources: Resources, name: str) -> DeleteIdentityResponse:
    store = resources.identities()
    with STORE_LOCK:
        deleted = store.delete(name)
    if not deleted:
        msg = f"No saved identity named '{check_identity_name(name)}'."
        raise _NotFoundError(msg)
    logger.info("Deleted identity '%s' via the API", check_identity_name(name))
    return DeleteIdentityResponse(deleted=True)


def status(resources: Resources, info: dict[str, Any], host_problem: str | None = None) -> dict[str, Any]:
    """``info`` first (versions, ControlNet), then what the model scan found and rejected, then
    what is missing; ``host_problem`` (an unsupported WebUI) comes first among the problems."""
    found = resources.status()
    problems: dict[str, str | None] = {"host": host_problem} if host_problem else {}
    checks: dict[str, Callable[[], object]] = {
        "ip_adapter": resources.adapter_file,
        "identitynet": resources.identitynet,
        "antelopev2": resources.analyzer,
    }
    for key, check in checks.items():
        try:
            check()
            problems[key] = None
        except InstantIDError as err:
            problems[key] = str(err)
    merged = dict(info)
    merged.update({key: value for key, value in found.items() if key not in merged})
    merged.setdefault("ready", not any(problems.values()))
    merged.setdefault("problems", problems)
    return merged


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------


def fastapi_takes_models() -> bool:
    """Whether FastAPI can validate and document this module's models: only on pydantic 1,
    whose models they are. On pydantic 2 FastAPI rejects ``pydantic.v1`` models: as a body they
    are taken for a query parameter, and in ``responses`` they break the app's OpenAPI schema."""
    import pydantic

    return str(getattr(pydantic, "VERSION", "1")).startswith("1.")


def _body(model: type[BaseModel], typed: bool) -> Any:
    """A dependency giving the request body as ``model``: FastAPI's own parsing when ``typed``,
    else the JSON object parsed here, its errors raised as FastAPI's (the same 422 list)."""

    def parse_here(body: dict[str, Any] = fastapi.Body(...)) -> BaseModel:  # noqa: B008
        try:
            return model.parse_obj(body)
        except ValidationError as err:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors()]) from err

    if not typed:
        return fastapi.Depends(parse_here)

    def parsed(body: BaseModel) -> BaseModel:
        return body

    body = inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=model)
    parsed.__signature__ = inspect.Signature([body], return_annotation=model)  # type: ignore[attr-defined]
    return fastapi.Depends(parsed)


def register_routes(
    app: fastapi.FastAPI,
    resources: Callable[[], Resources],
    info: Callable[[], dict[str, Any]],
    *,
    dependencies: Sequence[Any] = (),
    host_problem: Callable[[], str | None] = lambda: None,
    typed: bool | None = None,
) -> None:
    """Add the ``/instantid/v1/`` routes to ``app``, replacing ones a previous load added.

    ``resources``, ``info`` and ``host_problem`` are called on every request, so a reloaded
    extension or a changed setting takes effect at once. ``dependencies`` (the WebUI's auth,
    see :func:`instantid_ext.webui.host.api_dependencies`) apply to every route.
    ``host_problem`` says why this WebUI cannot run InstantID at all (e.g. Forge), or None.
    ``typed``: whether FastAPI validates and documents the models (default:
    :func:`fastapi_takes_models`).
    """
    typed = fastapi_takes_models() if typed is None else typed
    router = fastapi.APIRouter(
        prefix=PREFIX, tags=[TAG], route_class=_InstantIDRoute, dependencies=list(dependencies)
    )

    def answer(
        model: Any, responses: dict[int | str, dict[str, Any]] | None = None, **extra: Any
    ) -> dict[str, Any]:
        """The decorator arguments of a route answering with ``model`` (and these error answers)."""
        listed = {**_ERRORS, **(responses or {})}
        if not typed:  # the descriptions only: FastAPI cannot take the models
            return {
                "response_model": None,
                "responses": {c: {"description": r["description"]} for c, r in listed.items()},
            }
        return {"response_model": model, "responses": listed, **extra}

    def sent(value: BaseModel, exclude_unset: bool = False) -> Any:
        return value if typed else value.dict(exclude_unset=exclude_unset)

    @router.get("/version", **answer(dict[str, Any]))
    def get_version() -> dict[str, Any]:
        """Versions only (extension, WebUI, ControlNet): answers at once, unlike /status."""
        return dict(info())

    @router.get("/status", **answer(dict[str, Any]))
    def get_status() -> dict[str, Any]:
        """Versions, models found, rejected (with the reason) and missing, providers, identities."""
        return status(resources(), info(), host_problem())

    @router.get("/schema", **answer(dict[str, Any]))
    def get_schema() -> dict[str, Any]:
        """JSON schema of the script arguments (``alwayson_scripts.InstantID.args[0]``)."""
        return InstantIDArgs.schema_dict()

    analyze_body, identity_body = _body(AnalyzeRequest, typed), _body(CreateIdentityRequest, typed)

    @router.post("/analyze", **answer(AnalyzeResponse, response_model_exclude_unset=True))
    def post_analyze(body: Any = analyze_body) -> Any:
        """Faces in an image, left to right, the one InstantID would use and its keypoint image."""
        return sent(analyze(resources(), body), exclude_unset=True)

    @router.get("/identities", **answer(IdentityList))
    def get_identities() -> Any:
        """The saved identities."""
        return sent(list_identities(resources()))

    @router.post("/identities", **answer(CreateIdentityResponse))
    def post_identity(body: Any = identity_body) -> Any:
        """Analyse the photos, average their raw face embeddings and save them under ``name``."""
        return sent(create_identity(resources(), body))

    not_found = {404: {"model": ErrorResponse, "description": "No identity of that name"}}

    @router.delete("/identities/{name}", **answer(DeleteIdentityResponse, responses=not_found))
    def remove_identity(name: str) -> Any:
        """Delete a saved identity."""
        return sent(delete_identity(resources(), name))

    app.router.routes[:] = [
        route for route in app.router.routes if not getattr(route, "path", "").startswith(f"{PREFIX}/")
    ]
    app.include_router(router)
    app.openapi_schema = None  # rebuilt with our routes on the next /docs visit
    logger.debug("API routes registered under %s/", PREFIX)
