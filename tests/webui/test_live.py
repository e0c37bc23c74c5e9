"""Live checks against a running WebUI over HTTP; skipped unless ``SD_WEBUI_URL`` is set.

Start a WebUI (1.6–1.10) with ``--api``, this extension and sd-webui-controlnet, an SDXL
checkpoint loaded, and InstantID's models in place, then run::

    SD_WEBUI_URL=http://127.0.0.1:7860 python -m pytest -q tests/webui/test_live.py

``SD_WEBUI_FACE`` may name a real face photo; by default a synthetic face is drawn, which
only the generated test pack of antelopev2 detects (use that pack with random weights).
``SD_WEBUI_SIZE`` and ``SD_WEBUI_STEPS`` keep CPU runs short (defaults 256 and 2).
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

pytestmark = [pytest.mark.live, pytest.mark.skipif(not URL, reason="SD_WEBUI_URL is not set")]


def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
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


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def face_b64() -> str:
    path = os.environ.get("SD_WEBUI_FACE")
    if path:
        return png_b64(Image.open(path).convert("RGB"))
    from tests.fakes import antelopev2_pack as fp

    img = fp.background(512, 512)
    fp.draw_face(img, (256, 240), 200, ident=3)
    return png_b64(Image.fromarray(img))


def txt2img(instantid: dict | None = None, **overrides: Any) -> tuple[int, Any]:
    body = {
        "prompt": "a portrait photo, watercolor",
        "negative_prompt": "blurry",
        "width": SIZE,
        "height": SIZE,
        "steps": STEPS,
        "cfg_scale": 4,
        "sampler_name": "Euler",
        "seed": 1234,
        "save_images": False,
        **overrides,
    }
    if instantid is not None:
        body["alwayson_scripts"] = {"InstantID": {"args": [instantid]}}
    return call("POST", "/sdapi/v1/txt2img", body)


def test_status_lists_models_and_controlnet() -> None:
    code, status = call("GET", "/instantid/v1/status")
    assert code == 200, status
    assert status["adapters"], status
    assert status["identitynets"], status
    assert status["controlnet"]["available"], status


def test_keypoint_preprocessor_is_in_controlnets_list() -> None:
    code, modules = call("GET", "/controlnet/module_list")
    assert code == 200
    assert "instantid_keypoints" in modules["module_list"]


def test_analyze_finds_the_face(face_b64: str) -> None:
    code, result = call("POST", "/instantid/v1/analyze", {"image": face_b64})
    assert code == 200, result
    assert len(result["faces"]) == 1
    assert result["kps_image"]


def test_instantid_changes_the_image_and_off_is_bit_identical(face_b64: str) -> None:
    code, before = txt2img()
    assert code == 200, before
    code, with_face = txt2img({"enabled": True, "images": [face_b64]})
    assert code == 200, with_face
    info = json.loads(with_face["info"])
    assert "InstantID" in info["infotexts"][0]
    assert with_face["images"][0] != before["images"][0]
    code, after = txt2img({"enabled": False, "images": [face_b64]})
    assert code == 200, after
    assert after["images"][0] == before["images"][0]


def test_img2img_with_instantid(face_b64: str) -> None:
    init = png_b64(Image.fromarray(np.full((SIZE, SIZE, 3), 128, np.uint8)))
    body = {
        "init_images": [init],
        "prompt": "a portrait",
        "width": SIZE,
        "height": SIZE,
        "steps": STEPS,
        "cfg_scale": 4,
        "denoising_strength": 0.8,
        "seed": 7,
        "alwayson_scripts": {"InstantID": {"args": [{"enabled": True, "images": [face_b64]}]}},
    }
    code, result = call("POST", "/sdapi/v1/img2img", body)
    assert code == 200, result
    assert "InstantID" in json.loads(result["info"])["infotexts"][0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"enabled": True, "images": ["not-base64!"]}, "images"),
        ({"enabled": True, "images": [], "id_weight": 0.8}, "reference face"),
        ({"enabled": True, "nonsense": 1}, "nonsense"),
        ({"enabled": True, "id_weight": 9}, "id_weight"),
    ],
)
def test_bad_requests_get_a_clear_422(args: dict, expected: str) -> None:
    code, result = txt2img(args)
    assert code == 422, result
    assert expected in json.dumps(result)


def test_no_face_is_a_422(face_b64: str) -> None:
    blank = png_b64(Image.fromarray(np.full((256, 256, 3), 90, np.uint8)))
    code, result = txt2img({"enabled": True, "images": [blank]})
    assert code == 422, result
    assert "No face" in json.dumps(result)


def test_identity_round_trip(face_b64: str) -> None:
    code, saved = call(
        "POST", "/instantid/v1/identities", {"name": "live-test", "images": [face_b64], "overwrite": True}
    )
    assert code == 200, saved
    code, listed = call("GET", "/instantid/v1/identities")
    assert "live-test" in [item["name"] for item in listed["identities"]]
    code, result = txt2img({"enabled": True, "identity": "live-test"})
    assert code == 200, result
    code, deleted = call("DELETE", "/instantid/v1/identities/live-test")
    assert code == 200 and deleted["deleted"] is True


def test_face_region_only_and_hires(face_b64: str) -> None:
    args = {"enabled": True, "images": [face_b64]}
    hires = {
        "enable_hr": True,
        "hr_scale": 1.5,
        "hr_second_pass_steps": STEPS,
        "hr_upscaler": "Latent",
        "denoising_strength": 0.5,  # the API has no default for it
    }
    code, whole = txt2img(args, **hires)
    assert code == 200, whole
    code, region = txt2img({**args, "face_region_only": True}, **hires)
    assert code == 200, region
    assert region["images"][0] != whole["images"][0]
    assert "face region only" in json.loads(region["info"])["infotexts"][0]


def xyz_plot_args(axis_label: str, values: str) -> list[Any]:
    """The X/Y/Z plot's positional ``script_args`` with ``values`` on X (1.6–1.10).

    Starts from the defaults that ``/sdapi/v1/script-info`` lists; an axis is sent as its
    index in the type dropdown's choices (the dropdown is ``type="index"``).
    """
    code, infos = call("GET", "/sdapi/v1/script-info")
    assert code == 200, infos
    info = next(s for s in infos if s["name"] == "x/y/z plot" and not s["is_img2img"])
    labels = [arg["label"] for arg in info["args"]]
    args = [arg["value"] for arg in info["args"]]
    choices = info["args"][labels.index("X type")]["choices"]
    assert axis_label in choices, choices
    args[labels.index("X type")] = choices.index(axis_label)
    args[labels.index("X values")] = values  # the text box; number axes have no dropdown
    args[labels.index("Y type")] = args[labels.index("Z type")] = choices.index("Nothing")
    args[labels.index("Include Sub Images")] = True  # the cells' own images and infotexts
    return args


def test_xyz_plot_over_the_id_weight(face_b64: str) -> None:
    code, result = txt2img(
        {"enabled": True, "images": [face_b64]},
        script_name="x/y/z plot",
        script_args=xyz_plot_args("[InstantID] ID weight", "0.5, 1.2"),
    )
    assert code == 200, result
    infotexts = json.loads(result["info"])["infotexts"]
    assert len(result["images"]) == len(infotexts) == 3  # the grid, then one image per cell
    assert "X Type: [InstantID] ID weight" in infotexts[0]
    assert "InstantID ID weight: 0.5" in infotexts[1]
    assert "InstantID ID weight: 1.2" in infotexts[2]
    assert result["images"][1] != result["images"][2]
