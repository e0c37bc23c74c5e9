"""What the live tests share: the server's address, an HTTP call, and images as the API takes them.

Only the standard library, numpy and Pillow: the live suite runs from a small environment made
with ``tests/live/requirements.txt``, without torch.
"""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
from PIL import Image

URL = os.environ.get("SD_WEBUI_URL", "").rstrip("/")
SIZE = int(os.environ.get("SD_WEBUI_SIZE", "256"))
STEPS = int(os.environ.get("SD_WEBUI_STEPS", "2"))
TIMEOUT = float(os.environ.get("SD_WEBUI_TIMEOUT", "900"))

LIVE = [pytest.mark.live, pytest.mark.skipif(not URL, reason="SD_WEBUI_URL is not set")]
"""The ``pytestmark`` of every live test module."""


def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request; returns the status code and the JSON answer (or its text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        URL + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        payload = err.read()
        try:
            return err.code, json.loads(payload)
        except ValueError:
            return err.code, payload.decode(errors="replace")


_WEBUI_VERSION: list[str] = []


def webui_version() -> str:
    """The host's version as InstantID reports it ("v1.10.1", "classic", …), asked once."""
    if not _WEBUI_VERSION:
        code, info = call("GET", "/instantid/v1/version")
        _WEBUI_VERSION.append(str(info.get("webui_version", "")) if code == 200 else "")
    return _WEBUI_VERSION[0]


def forge_host() -> bool:
    """Whether the server is a Forge-family host (Forge Classic: "classic"; reForge and Forge:
    "f<version>…"), whose ControlNet is its built-in backend, not sd-webui-controlnet."""
    version = webui_version()
    return version == "classic" or (version[:1] == "f" and version[1:2].isdigit())


def hires_fix(**settings: Any) -> dict[str, Any]:
    """The request fields of a latent hires fix (STEPS hires steps, denoising 0.5; ``settings`` add
    or override). Forge Classic leaves ``hr_cfg_scale`` None when a request omits it and its
    sampler then fails (``sd_samplers_cfg_denoiser.py:157``), so it gets the request's CFG there."""
    fields: dict[str, Any] = {
        "enable_hr": True,
        "hr_second_pass_steps": STEPS,
        "hr_upscaler": "Latent",
        "denoising_strength": 0.5,  # the API has no default for it
        **settings,
    }
    if webui_version() == "classic":
        fields.setdefault("hr_cfg_scale", 4)
    return fields


def generation(instantid: Any = None, **settings: Any) -> dict[str, Any]:
    """A small, fast txt2img/img2img request body (SIZE², STEPS steps), with InstantID's argument;
    ``settings`` (prompt and seed included) override the defaults."""
    body: dict[str, Any] = {
        "prompt": "a portrait photo",
        "negative_prompt": "blurry",
        "width": SIZE,
        "height": SIZE,
        "steps": STEPS,
        "cfg_scale": 4,
        "sampler_name": "Euler",
        "seed": -1,
        "save_images": False,
        **settings,
    }
    if instantid is not None:
        body.setdefault("alwayson_scripts", {})["InstantID"] = {"args": [instantid]}
    return body


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def open_png(image_b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image_b64)))


def decode(image_b64: str) -> np.ndarray:
    return np.asarray(open_png(image_b64).convert("RGB"))


def photo_with_face(size: int, centre: tuple[int, int], face: int, ident: int = 3) -> tuple[Image.Image, Any]:
    """A drawn face that the generated antelopev2 test pack detects (random-weight models make none)."""
    from tests.fakes import antelopev2_pack as fp

    img = fp.background(size, size)
    drawn = fp.draw_face(img, centre, face, ident=ident)
    return Image.fromarray(img), drawn


def face_photo_b64(ident: int) -> str:
    photo, _ = photo_with_face(512, (256, 240), 200, ident=ident)
    return png_b64(photo)
