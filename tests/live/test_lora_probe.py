"""InstantID's face attention measured inside the server, with a LoRA merged into the attn2 layers.

The bed's helper extension ``tests/live/probe`` (the script ``Live probe``) watches one attn2
layer in the first UNet call of a job and recomputes, in float32, the unfolded decoupled
cross-attention ``to_out(SDPA(to_q(x), to_k(ctx), to_v(ctx)) + scale · SDPA(to_q(x), K_ip,
V_ip))`` with that layer's projections as they ran in that call (after the Lora extension's
merge) and InstantID's face tokens for each row's kind (cond rows first, then uncond). It reports
the relative error, max |output - reference| / max |reference|, in the job's infotext.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from tests.live.client import LIVE, call
from tests.live.test_neighbours import LORA, face, needs_lora, pixels, scripts, txt2img

pytestmark = LIVE
PROBE = "Live probe"
TOLERANCE = 1e-4
"""Relative error allowed where the layer computes in float32."""
LOW_PRECISION_TOLERANCE = 3e-2
"""Where it computes in bfloat16 (a CPU UNet stored in fp8 runs under bfloat16 autocast): the
reference is float32, so only bfloat16's rounding separates them, while face attention on the
weights from before the LoRA merge misses by the LoRA's share (tenths, see "LoRA share")."""
LORA_LAYER = 37  # output_blocks.1.1.transformer_blocks.3.attn2 (1280 wide, 20 heads)
PLAIN_LAYER = 5  # input_blocks.7.1.transformer_blocks.1.attn2


def needs_probe() -> None:
    code, answer = call("GET", "/sdapi/v1/scripts")
    assert code == 200, answer
    if PROBE.lower() not in answer.get("txt2img", []):
        pytest.skip("the live suite's probe extension (tests/live/probe) is not installed in this WebUI")


def probed(layer: int, **settings: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """The image and the probe's report of one InstantID request watched at ``layer``."""
    probe = {PROBE: {"args": [True, layer]}}
    answer = txt2img(face(likeness=False), **settings, **scripts({}, **probe))
    params = json.loads(answer["info"])["extra_generation_params"]
    found = {k.removeprefix(f"{PROBE} "): v for k, v in params.items() if k.startswith(PROBE)}
    assert "error" not in found, found
    return pixels(answer)[0], found


def tolerance(found: dict[str, Any]) -> float:
    """The relative error allowed for the dtype the probed layer computed in."""
    return TOLERANCE if found["compute"] == "float32" else LOW_PRECISION_TOLERANCE


def assert_matches(found: dict[str, Any], lora: str) -> None:
    assert found["LoRA"] == lora, found
    assert "cond" in found["rows"].split(","), found
    assert float(found["scale"]) == pytest.approx(0.8), found  # InstantID's default ID weight
    assert float(found["rel err"]) <= tolerance(found), found
    assert float(found["face share"]) > 3 * tolerance(found), found  # the face term is there to measure
    if "as checkpoint" in found:  # a safetensors checkpoint: the weights as they ran, vs the file
        assert found["as checkpoint"] is (lora == "none"), found


def test_the_face_attention_with_a_merged_lora_equals_the_unfolded_computation() -> None:
    """With ``<lora:instantid-live-attn2:1>`` the probed layer's output equals the unfolded
    computation with its merged weights within 1e-4 in float32 (3e-2 where the server computes in
    bfloat16); the repeat gives the same image; and the
    request without the LoRA afterwards equals the same request made at the start of this test,
    before this test's LoRA requests (not a freshly started server: restarting is slow). Other
    tests may have used the LoRA on this server before; the probe shows that in both requests
    without it the probed layer's to_q/to_out weights as they ran equal the checkpoint file's,
    which is what a fresh server runs."""
    needs_lora()
    needs_probe()
    with_lora = {"prompt": f"a portrait photo <lora:{LORA}:1>"}
    before, found_before = probed(PLAIN_LAYER)
    assert_matches(found_before, "none")

    first, found = probed(LORA_LAYER, **with_lora)
    assert_matches(found, LORA)
    # The LoRA moves this layer's output far more than the tolerance: a face term computed with
    # the weights from before the merge would fail.
    assert "LoRA share" in found, found  # needs the Lora extension's weight backup (its default)
    assert float(found["LoRA share"]) > 3 * tolerance(found), found

    again, found_again = probed(LORA_LAYER, **with_lora)
    assert_matches(found_again, LORA)
    after, found_after = probed(PLAIN_LAYER)
    assert_matches(found_after, "none")

    assert not np.array_equal(first, before), "the LoRA changed nothing"
    assert np.array_equal(first, again), "the first request with the LoRA differs from its repeat"
    assert np.array_equal(after, before), "the LoRA's weights outlived its job"
