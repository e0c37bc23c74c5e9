"""Live checks against a running WebUI over HTTP; skipped unless ``SD_WEBUI_URL`` is set.

Start a WebUI (1.6–1.10) with ``--api``, this extension and sd-webui-controlnet, an SDXL
checkpoint loaded, and InstantID's models in place, then run::

    SD_WEBUI_URL=http://127.0.0.1:7860 python -m pytest -q tests/live

``SD_WEBUI_FACE`` may name a real face photo; by default a synthetic face is drawn, which
only the generated test pack of antelopev2 detects (use that pack with random weights).
``SD_WEBUI_SIZE`` and ``SD_WEBUI_STEPS`` keep CPU runs short (defaults 256 and 2).
"""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.live.client import (
    LIVE,
    SIZE,
    STEPS,
    call,
    decode,
    face_photo_b64,
    forge_host,
    generation,
    hires_fix,
    photo_with_face,
    png_b64,
)

pytestmark = LIVE


@pytest.fixture(scope="module")
def face_b64() -> str:
    path = os.environ.get("SD_WEBUI_FACE")
    if path:
        return png_b64(Image.open(path).convert("RGB"))
    from tests.fakes import antelopev2_pack as fp

    img = fp.background(512, 512)
    fp.draw_face(img, (256, 240), 200, ident=3)
    return png_b64(Image.fromarray(img))


@pytest.fixture(autouse=True)
def sdxl_base_loaded() -> None:
    """Each test starts with the SDXL base model loaded (checkpoint tests switch models)."""
    code, models = call("GET", "/sdapi/v1/sd-models")
    assert code == 200, models
    base = [
        m["title"] for m in models if "refiner" not in m["title"].lower() and "sd15" not in m["title"].lower()
    ]
    code, options = call("GET", "/sdapi/v1/options")
    assert code == 200, options
    if base and options.get("sd_model_checkpoint") not in base:
        code, answer = call("POST", "/sdapi/v1/options", {"sd_model_checkpoint": base[0]})
        assert code == 200, answer


def txt2img(instantid: dict | None = None, **overrides: Any) -> tuple[int, Any]:
    settings = {"prompt": "a portrait photo, watercolor", "seed": 1234, **overrides}
    return call("POST", "/sdapi/v1/txt2img", generation(instantid, **settings))


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


def test_named_and_positional_api_arguments_give_the_same_image(face_b64: str) -> None:
    """The API's two forms of InstantID's ``args``: one dict of named fields, or values in the
    fields' order (here ``enabled``, ``images``)."""
    code, named = txt2img({"enabled": True, "images": [face_b64], "id_weight": 0.9})
    assert code == 200, named
    body = generation(prompt="a portrait photo, watercolor", seed=1234)
    by_position = [True, [face_b64], None, None, None, None, None, None, 0.9]  # … id_weight
    body["alwayson_scripts"] = {"InstantID": {"args": by_position}}
    code, positional = call("POST", "/sdapi/v1/txt2img", body)
    assert code == 200, positional
    assert positional["images"][0] == named["images"][0]
    assert json.loads(positional["info"])["infotexts"] == json.loads(named["info"])["infotexts"]


def test_forge_identitynet_runs_on_the_face_tokens_and_a_user_unit_on_the_text(face_b64: str) -> None:
    """Forge family: the live probe reads the context each ControlNet node's model is given. Our
    IdentityNet node gets InstantID's face tokens row by row; the user's own unit, whatever its
    place in the chain, keeps the prompt's 77 tokens."""
    if not forge_host():
        pytest.skip("the Forge family's built-in ControlNet chain")
    code, models = call("GET", "/controlnet/model_list")
    assert code == 200, models
    canny = next(m for m in models["model_list"] if "canny" in m)
    user_unit = {
        "enabled": True,
        "module": "None",
        "model": canny,
        "image": face_b64,
        "weight": 0.5,
        "resize_mode": "Crop and Resize",
        "pixel_perfect": False,
    }
    body = generation({"enabled": True, "images": [face_b64]}, prompt="a portrait photo", seed=7)
    body["alwayson_scripts"]["controlnet"] = {"args": [user_unit]}
    body["alwayson_scripts"]["Live probe"] = {"args": [True, 0, "controlnet"]}
    code, result = call("POST", "/sdapi/v1/txt2img", body)
    assert code == 200, result
    infotext = json.loads(result["info"])["infotexts"][0]
    seen = re.search(r'Live probe ControlNet: "([^"]*)"', infotext)
    assert seen, infotext
    nodes = [entry.strip() for entry in seen.group(1).split(";") if entry.strip()]
    assert len(nodes) == 2, infotext
    ours = [n for n in nodes if n.startswith("IdentityNet")]
    assert len(ours) == 1 and ours[0].endswith("16 tokens, face tokens, max diff 0.0"), nodes
    (user,) = [n for n in nodes if not n.startswith("IdentityNet")]
    assert user.endswith(": 77 tokens"), nodes


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
    hires = hires_fix(hr_scale=1.5)
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


# -- restyling a photo, the face pass, nested jobs (issue: img2img/inpaint face restyle) -----------
def circle_centres(hint: np.ndarray) -> np.ndarray:
    """The keypoints of an IdentityNet hint: the centroid of each keypoint colour's circle."""
    from instantid_ext.method.keypoints import DEFAULT_COLORS

    return np.array(
        [
            np.argwhere(np.all(hint == np.array(c, np.uint8), axis=-1))[:, ::-1].mean(axis=0)
            for c in DEFAULT_COLORS
        ]
    )


def test_only_masked_inpaint_hint_lies_on_the_masked_face(face_b64: str) -> None:
    """A face at (700, 300) of a 1024² photo, "Only masked": the hint ControlNet gets is on that face."""
    photo, drawn = photo_with_face(1024, (700, 300), 160)
    mask = Image.new("L", photo.size, 0)
    mask.paste(255, (590, 190, 810, 410))
    body = {
        "init_images": [png_b64(photo)],
        "mask": png_b64(mask),
        "inpaint_full_res": True,
        "inpaint_full_res_padding": 32,
        "mask_blur": 4,
        "prompt": "a portrait",
        "width": SIZE,
        "height": SIZE,
        "steps": STEPS,
        "cfg_scale": 4,
        "denoising_strength": 0.75,
        "seed": 11,
        "alwayson_scripts": {
            "InstantID": {"args": [{"enabled": True, "images": [face_b64], "show_hint": True}]}
        },
    }
    code, result = call("POST", "/sdapi/v1/img2img", body)
    assert code == 200, result
    hint = decode(result["images"][-1])  # show_hint: the keypoint image IdentityNet received
    assert hint.shape[:2] == (SIZE, SIZE)
    # A1111's crop: the mask's box plus the padding, widened to the output's aspect ratio.
    x1, y1, x2, y2 = 590 - 32, 190 - 32, 810 + 32, 410 + 32
    expected = (drawn.kps - np.array([x1, y1])) * np.array([SIZE / (x2 - x1), SIZE / (y2 - y1)])
    assert np.abs(circle_centres(hint) - expected).max() < 8
    assert "InstantID keypoints from: init image" in json.loads(result["info"])["infotexts"][0]


def test_hires_hint_follows_the_webuis_crop(face_b64: str) -> None:
    """Hires fix to another aspect ratio: the WebUI crops the upscaled first pass; so does the hint."""
    args = {"enabled": True, "images": [face_b64], "show_hint": True}
    hires = hires_fix(hr_resize_x=SIZE * 3 // 2, hr_resize_y=SIZE)
    code, result = txt2img(args, **hires)
    assert code == 200, result
    first, second = (decode(image) for image in result["images"][-2:])  # first pass, hires pass
    assert second.shape[:2] == (SIZE, SIZE * 3 // 2)
    # The WebUI upscales SIZE² to (1.5·SIZE)² and crops the latent's middle SIZE rows.
    cut = (SIZE * 3 // 2 - SIZE) // 8 // 2 * 8
    expected = (circle_centres(first) + 0.5) * 1.5 - 0.5 - np.array([0, cut])
    assert np.abs(circle_centres(second) - expected).max() < 3


def painted(picture: Image.Image) -> dict:
    """The live painter extension (test bed only) makes every output this picture."""
    return {"Live painter": {"args": [png_b64(picture)]}}


def test_face_pass_changes_only_the_padded_face_box_and_nests_cleanly(face_b64: str) -> None:
    picture, drawn = photo_with_face(512, (300, 200), 60, ident=5)
    code, plain_before = txt2img(width=512, height=512)
    assert code == 200, plain_before
    args = {
        "enabled": True,
        "images": [face_b64],
        "face_pass": True,
        "face_pass_resolution": 256,
        "face_pass_padding": 32,
        "likeness": False,
    }
    body_scripts = {"InstantID": {"args": [args]}, **painted(picture)}
    code, result = call(
        "POST",
        "/sdapi/v1/txt2img",
        {
            "prompt": "a portrait",
            "width": 512,
            "height": 512,
            "steps": STEPS,
            "cfg_scale": 4,
            "seed": 21,
            "n_iter": 2,
            "save_images": False,
            "alwayson_scripts": body_scripts,
        },
    )
    assert code == 200, result
    infotexts = json.loads(result["info"])["infotexts"]
    assert len(result["images"]) == 2 and all("InstantID face pass: True" in t for t in infotexts)
    before = np.asarray(picture)
    x1, y1, x2, y2 = drawn.bbox
    for image in result["images"]:  # both batches ran, the second after the first's nested job
        after = decode(image)
        ys, xs = np.nonzero(np.any(after != before, axis=-1))
        assert len(xs) > 0
        assert xs.min() >= x1 - 32 and xs.max() < x2 + 32 and ys.min() >= y1 - 32 and ys.max() < y2 + 32
    code, plain_after = txt2img(width=512, height=512)
    assert code == 200, plain_after
    assert plain_after["images"][0] == plain_before["images"][0]  # nothing of either job is left


# -- the checkpoint is checked when it is final ------------------------------------------------------
def checkpoints() -> list[dict]:
    code, models = call("GET", "/sdapi/v1/sd-models")
    assert code == 200, models
    return models


def test_api_override_to_an_sdxl_checkpoint_runs(face_b64: str) -> None:
    """A non-SDXL model is loaded; the request's override loads SDXL only after before_process."""
    models = checkpoints()
    sd15 = [m for m in models if "sd15" in m["title"].lower()]
    sdxl = [m for m in models if "sdxl" in m["title"].lower() and "refiner" not in m["title"].lower()]
    if not sd15 or not sdxl:
        pytest.skip("the bed has no SD1.5 checkpoint next to the SDXL one")
    code, _ = txt2img(
        override_settings={"sd_model_checkpoint": sd15[0]["title"]},
        override_settings_restore_afterwards=False,
    )
    assert code == 200
    code, result = txt2img(
        {"enabled": True, "images": [face_b64]}, override_settings={"sd_model_checkpoint": sdxl[0]["title"]}
    )
    assert code == 200, result
    assert "InstantID: on" in json.loads(result["info"])["infotexts"][0]


def test_a_job_after_a_refiner_job_runs(face_b64: str) -> None:
    models = checkpoints()
    refiner = [m for m in models if "refiner" in m["title"].lower()]
    if not refiner:
        pytest.skip("the bed has no SDXL refiner checkpoint")
    code, result = txt2img(refiner_checkpoint=refiner[0]["title"], refiner_switch_at=0.5)
    assert code == 200, result
    code, result = txt2img({"enabled": True, "images": [face_b64]})
    assert code == 200, result
    assert "InstantID: on" in json.loads(result["info"])["infotexts"][0]


# -- several people (issue: multi-identity) -----------------------------------------------------------
def test_two_people_each_in_their_half() -> None:
    """Two identities, left and right: both faces' keypoints are in the hint, one per half."""
    from instantid_ext.method.keypoints import DEFAULT_COLORS

    people = [
        {"images": [face_photo_b64(3)], "region": "left", "id_weight": 0.8},
        {"images": [face_photo_b64(7)], "region": "right", "id_weight": 0.7, "control_weight": 0.6},
    ]
    code, plain = txt2img(width=SIZE * 2, height=SIZE)
    assert code == 200, plain
    args = {"enabled": True, "people": people, "show_hint": True}
    code, result = txt2img(args, width=SIZE * 2, height=SIZE)
    assert code == 200, result
    infotext = json.loads(result["info"])["infotexts"][0]
    assert "InstantID people: " in infotext and "InstantID: on" in infotext
    assert result["images"][0] != plain["images"][0]
    hint = decode(result["images"][-1])
    assert hint.shape[:2] == (SIZE, SIZE * 2)
    noses = np.argwhere(np.all(hint == np.array(DEFAULT_COLORS[2], np.uint8), axis=-1))[:, 1]
    assert (noses < SIZE).any() and (noses >= SIZE).any()  # a face in each half
    code, after = txt2img(width=SIZE * 2, height=SIZE)
    assert code == 200 and after["images"][0] == plain["images"][0]


# -- bad input: one sentence each, and the host unchanged (issue: setup and diagnostics) -------------
def strings(value: Any) -> list[str]:
    """Every string in a JSON answer (the WebUI puts the message in ``detail``)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def blank_b64(size: int = 200) -> str:
    return png_b64(Image.fromarray(np.full((size, size, 3), 90, np.uint8)))


LIVE_BAD_INPUT: dict[str, tuple[Any, dict, str]] = {
    "no face": (
        {"enabled": True, "images": [blank_b64()]},
        {},
        "No face was found in the reference image. Use a photo in which the face is clearly visible",
    ),
    "tiny image": (
        {"enabled": True, "images": [blank_b64(8)]},
        {},
        "The reference image is only 8×8 pixels: use a photo in which the face itself is at least about "
        "64 pixels wide.",
    ),
    "corrupt image": (
        {"enabled": True, "images": [base64.b64encode(b"\x89PNG\r\n\x1a\n not really").decode()]},
        {},
        "InstantID argument 'images[0]': The base64 data is not an image Pillow can read (19 bytes; "
        "UnidentifiedImageError): send a PNG, JPEG or WebP.",
    ),
    "malformed JSON": (
        '{"enabled": true, "images": [',
        {},
        "InstantID arguments are not valid JSON: Expecting value at character 29",
    ),
    "mistyped argument": ({"enabled": True, "id_wieght": 0.5}, {}, "Unknown InstantID argument 'id_wieght'."),
    "out of range": (
        {"enabled": True, "control_weight": 5},
        {},
        "InstantID argument 'control_weight': must be between 0 and 2 (got 5).",
    ),
    "overlapping people": (
        {
            "enabled": True,
            "people": [
                {"images": ["FACE"], "region": "box", "box": [0.0, 0.0, 0.6, 1.0]},
                {"images": ["FACE"], "region": "box", "box": [0.4, 0.0, 1.0, 1.0]},
            ],
        },
        {},
        "overlap by",
    ),
}


def with_face(args: Any, face: str) -> Any:
    if isinstance(args, dict):
        return {key: with_face(value, face) for key, value in args.items()}
    if isinstance(args, list):
        return [with_face(value, face) for value in args]
    return face if args == "FACE" else args


def test_bad_input_gets_its_sentence_and_leaves_the_host_unchanged(face_b64: str) -> None:
    code, before = txt2img()
    assert code == 200, before
    for case, (args, overrides, sentence) in LIVE_BAD_INPUT.items():
        code, result = txt2img(with_face(args, face_b64), **overrides)
        assert code == 422, (case, result)
        assert any(sentence in text for text in strings(result)), (case, result)
    code, after = txt2img()
    assert code == 200 and after["images"][0] == before["images"][0]


def test_an_sd15_checkpoint_is_refused_in_one_sentence(face_b64: str) -> None:
    sd15 = [m for m in checkpoints() if "sd15" in m["title"].lower()]
    if not sd15:
        pytest.skip("the bed has no SD1.5 checkpoint")
    code, result = txt2img(
        {"enabled": True, "images": [face_b64]}, override_settings={"sd_model_checkpoint": sd15[0]["title"]}
    )
    assert code == 422, result
    sentence = "InstantID works only with SDXL models, but "
    assert any(text.startswith(sentence) for text in strings(result)), result


def test_status_names_each_rejected_file_with_its_reason() -> None:
    """The bed puts an SD1.5 IP-Adapter next to InstantID's: listed as rejected, saying what it is,
    while InstantID's own adapter is still found."""
    code, status = call("GET", "/instantid/v1/status")
    assert code == 200, status
    rejected = {item["name"]: item["reason"] for item in status["rejected"]}
    assert "ip-adapter_sd15.bin" in rejected, status
    reason = "is an SD1.5 IP-Adapter (768-d tokens), not InstantID's SDXL adapter"
    assert reason in rejected["ip-adapter_sd15.bin"]
    assert "ip-adapter.bin" in [item["name"] for item in status["adapters"]]
