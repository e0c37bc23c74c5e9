"""Peak memory of one generation in a real WebUI, for InstantID next to ControlNet's own InstantID.

Starts the live bed's WebUI (``tests/live/setup_webui.sh``) once per setup, waits for its checkpoint
with a small plain generation, resets the server's peak resident set size (``VmHWM``, via
``/proc/PID/clear_refs``), runs the setup's requests and reads the peak. Every setup gets a fresh
server, so no model cached by an earlier setup counts. Linux only.

    python tests/live/peak_memory.py [--bed /tmp/instantid-webui] [--fp8] [--setups a,b,...]

``--fp8`` stores the SDXL UNet in fp8 (the WebUI's own "FP8 weight" setting, through a copy of
the bed's settings file), which leaves room on a 24 GB machine for two SDXL ControlNets next to
a float32 model. The setups:

* ``plain``: SDXL alone;
* ``instantid``: this extension's InstantID (face tokens + IdentityNet);
* ``instantid+unit``: the same plus one ordinary SDXL ControlNet unit;
* ``cn-instantid``: ControlNet's own InstantID (its face-embedding and keypoint units);
* ``cn-instantid+unit``: the same plus the ordinary unit;
* ``cn-instantid-then-instantid``: a request with ControlNet's own InstantID, then one with this
  extension's; both use the same IdentityNet file, which must be held once.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SIZE = 256
STEPS = 2
PORT = int(os.environ.get("PORT", "7861"))
URL = f"http://127.0.0.1:{PORT}"


def call(path: str, body: Any = None, timeout: float = 1800) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        URL + path,
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        msg = f"{path}: HTTP {err.code}: {err.read()[:500]!r}"
        raise RuntimeError(msg) from err


def png_b64(array: Any) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def face_b64() -> str:
    sys.path.insert(0, str(REPO))
    from tests.fakes import antelopev2_pack as fp

    img = fp.background(512, 512)
    fp.draw_face(img, (256, 240), 200, ident=3)
    return png_b64(img)


def edges_b64() -> str:
    import numpy as np

    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[SIZE // 4 : SIZE // 4 + 2, :] = 255
    img[:, SIZE // 2 : SIZE // 2 + 2] = 255
    return png_b64(img)


def controlnet_model(fragment: str) -> str:
    names = call("/controlnet/model_list")["model_list"]
    matches = [name for name in names if fragment in name]
    if not matches:
        msg = f"no ControlNet model with '{fragment}' in its name among {names}"
        raise RuntimeError(msg)
    return matches[0]


def txt2img(scripts: dict[str, Any], size: int = SIZE, steps: int = STEPS) -> None:
    body = {
        "prompt": "a portrait photo",
        "negative_prompt": "blurry",
        "width": size,
        "height": size,
        "steps": steps,
        "cfg_scale": 4,
        "sampler_name": "Euler",
        "seed": 1234,
        "save_images": False,
        "alwayson_scripts": scripts,
    }
    call("/sdapi/v1/txt2img", body)


def ours(face: str) -> dict[str, Any]:
    return {"InstantID": {"args": [{"enabled": True, "images": [face], "likeness": False}]}}


def ordinary_unit() -> dict[str, Any]:
    return {
        "enabled": True,
        "module": "none",
        "model": controlnet_model("canny"),
        "image": edges_b64(),
        "weight": 0.5,
    }


def controlnets_instantid(face: str) -> list[dict[str, Any]]:
    return [
        {
            "enabled": True,
            "module": "instant_id_face_embedding",
            "model": controlnet_model("ip-adapter_instant_id_sdxl"),
            "image": face,
            "weight": 0.8,
        },
        {
            "enabled": True,
            "module": "instant_id_face_keypoints",
            "model": controlnet_model("control_instant_id_sdxl"),
            "image": face,
            "weight": 0.8,
        },
    ]


def requests_for(setup: str, face: str) -> list[Callable[[], None]]:
    cn = "ControlNet"
    return {
        "plain": [lambda: txt2img({})],
        "instantid": [lambda: txt2img(ours(face))],
        "instantid+unit": [lambda: txt2img({**ours(face), cn: {"args": [ordinary_unit()]}})],
        "cn-instantid": [lambda: txt2img({cn: {"args": controlnets_instantid(face)}})],
        "cn-instantid+unit": [
            lambda: txt2img({cn: {"args": [*controlnets_instantid(face), ordinary_unit()]}})
        ],
        "cn-instantid-then-instantid": [
            lambda: txt2img({cn: {"args": controlnets_instantid(face)}}),
            lambda: txt2img(ours(face)),
        ],
    }[setup]


SETUPS = [
    "plain",
    "instantid",
    "instantid+unit",
    "cn-instantid",
    "cn-instantid+unit",
    "cn-instantid-then-instantid",
]


def memory(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0]) / 1024**2  # kB → GiB
    return values


def start_server(bed: Path, settings: Path | None, log: Path) -> subprocess.Popen:
    args = [str(bed / "run.sh")]
    if settings is not None:
        args += ["--ui-settings-file", str(settings)]
    env = {**os.environ, "PORT": str(PORT)}
    with log.open("w") as out:
        server = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if server.poll() is not None:
            msg = f"the WebUI exited with {server.returncode}; see {log}"
            raise RuntimeError(msg)
        try:
            call("/sdapi/v1/sd-models", timeout=10)
        except (OSError, RuntimeError):
            time.sleep(5)
        else:
            return server
    stop_server(server)
    msg = f"the WebUI did not answer within 900 s; see {log}"
    raise RuntimeError(msg)


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def measure(bed: Path, setup: str, settings: Path | None, logs: Path) -> dict[str, Any]:
    face = face_b64()
    server = start_server(bed, settings, logs / f"{setup}.log")
    try:
        # The WebUI loads its checkpoint in the background after it starts answering: a small
        # plain generation waits for that and warms up, so that neither counts.
        txt2img({}, size=64, steps=1)
        before = memory(server.pid)
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # peak := now
        started = time.perf_counter()
        for request in requests_for(setup, face):
            request()
        seconds = time.perf_counter() - started
        after = memory(server.pid)
        return {
            "setup": setup,
            "rss_before_gib": round(before["VmRSS"], 2),
            "peak_gib": round(after["VmHWM"], 2),
            "rss_after_gib": round(after["VmRSS"], 2),
            "seconds": round(seconds, 1),
        }
    except (RuntimeError, OSError) as err:  # OSError: the server died mid-request (out of memory?)
        time.sleep(2)
        return {"setup": setup, "error": f"{type(err).__name__}: {err}", "exit": server.poll()}
    finally:
        stop_server(server)


def fp8_settings(bed: Path, folder: Path) -> Path:
    source = bed / "stable-diffusion-webui" / "config.json"
    settings = json.loads(source.read_text())
    settings["fp8_storage"] = "Enable"
    target = folder / "config-fp8.json"
    target.write_text(json.dumps(settings, indent=1))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bed", type=Path, default=Path(os.environ.get("INSTANTID_LIVE_DIR", "/tmp/instantid-webui"))
    )
    parser.add_argument("--fp8", action="store_true", help="store the SDXL UNet in fp8 (WebUI setting)")
    parser.add_argument(
        "--setups", default=",".join(SETUPS), help="comma-separated, from: " + ", ".join(SETUPS)
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="instantid-memory-"))
    settings = fp8_settings(args.bed, folder) if args.fp8 else None
    results = []
    print(f"| setup ({'fp8 UNet' if args.fp8 else 'float32'}) | RSS before | peak | RSS after | seconds |")
    print("| --- | --- | --- | --- | --- |")
    for setup in args.setups.split(","):
        result = measure(args.bed, setup.strip(), settings, folder)
        results.append(result)
        if "error" in result:
            print(f"| {setup} | failed: {result['error']} (exit {result['exit']}) | | | |", flush=True)
        else:
            print(
                f"| {setup} | {result['rss_before_gib']} GiB | {result['peak_gib']} GiB | "
                f"{result['rss_after_gib']} GiB | {result['seconds']} |",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    print(f"server logs: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
