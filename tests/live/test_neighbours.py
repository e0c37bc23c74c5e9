"""InstantID next to what a real user's WebUI runs beside it, on one server.

The bed (``tests/live/setup_webui.sh``) installs ADetailer with mediapipe's face detector, writes
a LoRA on the 70 attn2 layers' query and output projections (``models/Lora``) and a small
ordinary SDXL ControlNet. Each test skips when its neighbour is missing (a bed made with
``INSTANTID_LIVE_NEIGHBOURS=0``). Images are compared by their pixels: the API's PNGs carry each
image's infotext, which names its seed.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.live.client import (
    LIVE,
    SIZE,
    call,
    decode,
    face_photo_b64,
    generation,
    photo_with_face,
    png_b64,
)

pytestmark = LIVE
SEED = 31
LORA = "instantid-live-attn2"
ORDINARY_CONTROLNET = "controlnet-sdxl-mid-random"


def txt2img(instantid: Any = None, **settings: Any) -> dict:
    code, answer = call("POST", "/sdapi/v1/txt2img", generation(instantid, **{"seed": SEED, **settings}))
    assert code == 200, answer
    return answer


def img2img(instantid: Any, init: str, **settings: Any) -> dict:
    settings = {"seed": SEED, "init_images": [init], "denoising_strength": 0.5, **settings}
    body = generation(instantid, **settings)
    code, answer = call("POST", "/sdapi/v1/img2img", body)
    assert code == 200, answer
    return answer


def pixels(answer: dict) -> list[np.ndarray]:
    return [decode(image) for image in answer["images"]]


def infotexts(answer: dict) -> list[str]:
    return json.loads(answer["info"])["infotexts"]


def face(**fields: Any) -> dict:
    return {"enabled": True, "images": [face_photo_b64(3)], "pose_source": "reference", **fields}


def scripts(answer_scripts: dict, **more: Any) -> dict:
    return {"alwayson_scripts": {**answer_scripts, **more}}


def needs_adetailer() -> None:
    code, _ = call("GET", "/adetailer/v1/version")
    if code != 200:
        pytest.skip("ADetailer is not installed in this WebUI")


def needs_lora() -> None:
    code, loras = call("GET", "/sdapi/v1/loras")
    assert code == 200, loras
    if not any(item["name"] == LORA for item in loras):
        pytest.skip(f"the LoRA {LORA} is not in models/Lora")


def ordinary_controlnet_model() -> str:
    code, answer = call("GET", "/controlnet/model_list")
    assert code == 200, answer
    title = next((m for m in answer["model_list"] if m.startswith(ORDINARY_CONTROLNET)), None)
    if title is None:
        pytest.skip(f"the ControlNet model {ORDINARY_CONTROLNET} is not in models/ControlNet")
    return title


# -- (a) ADetailer ----------------------------------------------------------------------------------
def test_adetailer_keeps_instantids_job_and_changes_nothing_it_did_not_detail() -> None:
    """ADetailer calls our script on copies of ``p`` after each image (batch size 2 × count 2):
    every image keeps InstantID's infotext with its likeness, and images ADetailer left alone (the
    random-weight model draws no face it detects) equal InstantID alone, bit for bit."""
    needs_adetailer()
    settings = {"batch_size": 2, "n_iter": 2}
    alone = txt2img(face(), **settings)
    adetailer = {"ADetailer": {"args": [True, False, {"ad_model": "mediapipe_face_full"}]}}
    both = txt2img(face(), **settings, **scripts(adetailer))
    texts = infotexts(both)
    assert len(both["images"]) == len(alone["images"]) == 4  # no grid over the API by default
    for n, (text, image, reference) in enumerate(zip(texts, pixels(both), pixels(alone), strict=True)):
        assert "InstantID: on" in text or "InstantID ID weight" in text, (n, text)
        assert "InstantID likeness: " in text, (n, text)
        if "ADetailer model" not in text:  # ADetailer found nothing to detail in this image
            assert np.array_equal(image, reference), f"image {n} differs from InstantID alone"
    # And the job is gone: a plain generation afterwards equals one made without either.
    assert np.array_equal(pixels(txt2img())[0], pixels(txt2img())[0])


# -- (b) a LoRA on the attention projections --------------------------------------------------------
def test_a_lora_on_attn2_gives_the_same_image_first_and_again_and_leaves_nothing() -> None:
    """The Lora extension merges the LoRA into each Linear's weight when that layer first runs. The
    face attention is added before each layer's own output projection, so the first request with
    the LoRA equals its repeat, and the first request without it equals the one made before."""
    needs_lora()
    args = face(likeness=False)
    before = pixels(txt2img(args))[0]
    with_lora = {"prompt": f"a portrait photo <lora:{LORA}:1>"}
    first = pixels(txt2img(args, **with_lora))[0]
    again = pixels(txt2img(args, **with_lora))[0]
    after = pixels(txt2img(args))[0]
    assert not np.array_equal(first, before), "the LoRA changed nothing"
    assert np.array_equal(first, again), "the first request with the LoRA differs from its repeat"
    assert np.array_equal(after, before), "the LoRA's weights outlived its job"


# -- (c) a failing X/Y/Z cell -----------------------------------------------------------------------
def xyz_args(axis_label: str, values: str) -> list[Any]:
    from tests.live.test_live import xyz_plot_args

    return xyz_plot_args(axis_label, values)


def test_a_failing_xyz_cell_leaves_nothing_behind() -> None:
    """The second cell's ID start (0.75) lies after the panel's ID end (0.5). The WebUI's X/Y/Z
    plot catches a cell's error, shows it in the console and draws that cell blank (when the
    first cell fails, WebUI 1.10.1's own grid code then fails with a 500); the cell before must
    equal its settings as a request of its own, and a plain generation stay as it was."""
    plain_before = pixels(txt2img())[0]
    args = face(id_end=0.5, likeness=False)
    code, answer = call(
        "POST",
        "/sdapi/v1/txt2img",
        generation(
            args,
            seed=SEED,
            script_name="x/y/z plot",
            script_args=xyz_args("[InstantID] ID start", "0.25, 0.75"),
        ),
    )
    assert code == 200, answer
    _grid, cell, failed = pixels(answer)  # the grid, then each cell
    assert failed.max() == 0, "the failed cell is not the plot's blank cell"
    alone = pixels(txt2img({**args, "id_start": 0.25}))[0]
    assert np.array_equal(cell, alone), "the cell differs from its own request"
    assert np.array_equal(pixels(txt2img())[0], plain_before)


# -- (d) Loopback -----------------------------------------------------------------------------------
def test_loopback_applies_instantid_in_each_loop_as_a_fresh_job_would() -> None:
    """Loopback runs ``process_images`` on the same ``p`` three times, the seed one higher and the
    last output as the init image each time: each loop equals a fresh InstantID img2img."""
    init = png_b64(photo_with_face(SIZE, (SIZE // 2, SIZE // 2), SIZE // 2, ident=9)[0])
    args = face(likeness=False)
    code, answer = call(
        "POST",
        "/sdapi/v1/img2img",
        generation(
            args,
            seed=SEED,
            init_images=[init],
            denoising_strength=0.5,
            script_name="loopback",
            script_args=[3, 0.5, "Linear", "None"],
        ),
    )
    assert code == 200, answer
    loops = pixels(answer)[-3:]  # the grid of the loops, then each loop's image
    image = init
    for n, looped in enumerate(loops):
        fresh = pixels(img2img(args, image, seed=SEED + n))[0]
        assert np.array_equal(looped, fresh), f"loop {n + 1} differs from a fresh InstantID job"
        image = png_b64(Image.fromarray(looped))


# -- (e) the user's own ControlNet unit next to the face pass --------------------------------------
def test_an_ordinary_controlnet_unit_is_applied_in_every_batch_next_to_the_face_pass() -> None:
    """The face pass runs a nested ControlNet job after each image; the user's own unit must still
    act on the next batch: batch 2 of a count-2 request equals that seed's request alone."""
    model = ordinary_controlnet_model()
    patch, _ = photo_with_face(112, (56, 56), 80, ident=5)
    hint = np.zeros((SIZE, SIZE, 3), np.uint8)
    hint[SIZE // 4 : SIZE * 3 // 4 : 8, :] = 255  # stripes, an edge map of sorts
    unit = {
        "enabled": True,
        "module": "none",
        "model": model,
        "image": png_b64(Image.fromarray(hint)),
        "weight": 1.0,
        "resize_mode": "Crop and Resize",
        "control_mode": "Balanced",
        "save_detected_map": False,  # else ControlNet adds its hint to the outputs
    }
    args = face(likeness=False, face_pass=True, face_pass_resolution=256, face_pass_padding=16)
    painter = {"Live painter": {"args": [png_b64(patch), "8,8"]}}

    def run(seed: int, n_iter: int, units: list[dict]) -> list[np.ndarray]:
        more = {"controlnet": {"args": units}} if units else {}
        answer = txt2img(args, seed=seed, n_iter=n_iter, **scripts(painter, **more))
        texts = infotexts(answer)[:n_iter]
        assert all("InstantID face pass: True" in t for t in texts), texts
        return pixels(answer)[:n_iter]

    _, second = run(SEED, 2, [unit])
    (alone,) = run(SEED + 1, 1, [unit])
    (without,) = run(SEED + 1, 1, [])
    outside = np.ones(alone.shape[:2], bool)
    outside[: 8 + 112 + 16, : 8 + 112 + 16] = False  # the pasted face and the face pass's padding
    assert not np.array_equal(alone[outside], without[outside]), "the ordinary unit changed nothing"
    assert np.array_equal(second, alone), "batch 2 lost the user's ControlNet unit"
