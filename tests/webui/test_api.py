"""The ``/instantid/v1/`` routes on a plain FastAPI app and on one with the WebUI's error handlers.

Face analysis runs the real insightface code on the generated fake antelopev2 pack
(``tests/fakes/antelopev2_pack.py``); identities are written to a temporary folder.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from PIL import Image

from instantid_ext.args import InstantIDArgs
from instantid_ext.faces.analysis import FaceAnalyzer
from instantid_ext.faces.identity import load_identity
from instantid_ext.job.resources import Locations, Resources
from instantid_ext.method.keypoints import draw_kps
from instantid_ext.webui import api
from tests.fakes import antelopev2_pack as fp

BBOX_TOL = 1.0
pytestmark = pytest.mark.usefixtures("no_network", "fresh_face_results")
INFO = {
    "version": "0.1.0",
    "webui": "v1.10.1",
    "controlnet": {"available": False, "message": "not installed"},
}


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pack_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fp.write_pack(tmp_path_factory.mktemp("insightface"))


@pytest.fixture
def locations(tmp_path: Path, pack_root: Path) -> Locations:
    return Locations(
        model_dirs=(tmp_path / "models" / "instantid",),
        insightface_roots=(pack_root,),
        identity_dir=tmp_path / "identities",
    )


def a1111_error_handlers(app: FastAPI) -> None:
    """The exception handling ``api_middleware`` in the WebUI's ``modules/api/api.py`` installs."""

    def handle_exception(request: Request, e: Exception) -> JSONResponse:
        err = {
            "error": type(e).__name__,
            "detail": vars(e).get("detail", ""),
            "body": vars(e).get("body", ""),
            "errors": str(e),
        }
        return JSONResponse(status_code=vars(e).get("status_code", 500), content=jsonable_encoder(err))

    @app.middleware("http")
    async def exception_handling(request: Request, call_next: Callable) -> Any:
        try:
            return await call_next(request)
        except Exception as e:
            return handle_exception(request, e)

    @app.exception_handler(Exception)
    async def fastapi_exception_handler(request: Request, e: Exception) -> JSONResponse:
        return handle_exception(request, e)

    @app.exception_handler(HTTPException)
    async def http_exception_handler(request: Request, e: HTTPException) -> JSONResponse:
        return handle_exception(request, e)


def make_client(
    locations: Locations, host: str = "plain", info: Callable[[], dict] = lambda: INFO, **kwargs: Any
) -> TestClient:
    app = FastAPI()
    if host == "a1111":
        a1111_error_handlers(app)
    resources = Resources(lambda: locations)
    api.register_routes(app, lambda: resources, info, **kwargs)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(params=["plain", "a1111", "untyped"])
def client(request: pytest.FixtureRequest, locations: Locations) -> TestClient:
    """A plain FastAPI app, one with the WebUI's exception handlers, and one whose routes parse
    and send the models themselves (as on a host whose FastAPI runs on pydantic 2)."""
    if request.param == "untyped":
        return make_client(locations, typed=False)
    return make_client(locations, request.param)


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


def b64png(img: np.ndarray | Image.Image) -> str:
    pil = img if isinstance(img, Image.Image) else Image.fromarray(img)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(text: str) -> Image.Image:
    data = base64.b64decode(text, validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return Image.open(io.BytesIO(data))


def one_face(ident: int = 1, size: int = 160, shape: tuple[int, int] = (400, 360)) -> np.ndarray:
    img = fp.background(*shape)
    fp.draw_face(img, (shape[1] / 2, shape[0] / 2), size, ident=ident)
    return img


def detail(response: Any) -> str:
    body = response.json()
    assert isinstance(body["detail"], str), body
    return body["detail"]


# --------------------------------------------------------------------------------------
# /status and /schema
# --------------------------------------------------------------------------------------


def test_status_merges_versions_and_what_is_found_and_missing(client: TestClient, pack_root: Path) -> None:
    body = client.get("/instantid/v1/status").json()
    assert body["version"] == "0.1.0"
    assert body["webui"] == "v1.10.1"
    assert body["controlnet"] == INFO["controlnet"]
    (pack,) = body["antelopev2"]
    assert pack["usable"] is True
    assert pack["pack_dir"] == str(pack_root / "models" / "antelopev2")
    assert "CPUExecutionProvider" in body["providers_used"]
    assert body["providers_requested"] == "cpu"
    assert body["adapters"] == []
    assert body["identities"] == []
    assert body["ready"] is False
    problems = body["problems"]
    assert problems["antelopev2"] is None
    assert "No InstantID adapter" in problems["ip_adapter"]
    assert body["model_dirs"][0] in problems["ip_adapter"]  # names where to put it
    assert "IdentityNet" in problems["identitynet"]


def test_status_reports_a_missing_face_pack_with_the_path_to_create(tmp_path: Path) -> None:
    empty = tmp_path / "nowhere"
    fp.make_nested(empty)
    locations = Locations(model_dirs=(tmp_path / "m",), insightface_roots=(empty,), identity_dir=tmp_path)
    response = make_client(locations).get("/instantid/v1/status")
    assert response.status_code == 200
    body = response.json()
    (pack,) = body["antelopev2"]
    assert pack["usable"] is False
    assert pack["missing_required"] == ["scrfd_10g_bnkps.onnx", "glintr100.onnx"]
    assert "one folder too deep" in pack["problem"] or "nested" in pack["problem"]
    assert body["problems"]["antelopev2"]


def test_version_is_the_info_alone(client: TestClient) -> None:
    response = client.get("/instantid/v1/version")
    assert response.status_code == 200
    assert response.json() == INFO


def test_info_keys_win_over_status_keys(locations: Locations) -> None:
    client = make_client(locations, info=lambda: {"version": "x", "identities": "from info"})
    body = client.get("/instantid/v1/status").json()
    assert body["identities"] == "from info"
    assert "antelopev2" in body


def test_schema_is_the_script_arguments_schema(client: TestClient) -> None:
    response = client.get("/instantid/v1/schema")
    assert response.status_code == 200
    schema = response.json()
    assert schema == InstantIDArgs.schema_dict()
    assert schema["properties"]["images"]["items"]["type"] == "string"
    assert "enabled" in schema["properties"]


@pytest.mark.parametrize("typed", [None, False])  # None: as the installed pydantic allows
def test_openapi_lists_the_routes(locations: Locations, typed: bool | None) -> None:
    response = make_client(locations, typed=typed).get("/openapi.json")
    assert response.status_code == 200, response.text  # the app's whole schema still builds
    paths = response.json()["paths"]
    assert set(paths) >= {
        "/instantid/v1/version",
        "/instantid/v1/status",
        "/instantid/v1/schema",
        "/instantid/v1/analyze",
        "/instantid/v1/identities",
        "/instantid/v1/identities/{name}",
    }


# --------------------------------------------------------------------------------------
# /analyze
# --------------------------------------------------------------------------------------


def test_analyze_lists_faces_left_to_right_with_the_chosen_one(client: TestClient) -> None:
    img, drawn = fp.three_faces()
    response = client.post("/instantid/v1/analyze", json={"image": b64png(img)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (640, 480)
    faces = body["faces"]
    assert [f["index"] for f in faces] == [0, 1, 2]
    for got, want in zip(faces, drawn, strict=True):
        np.testing.assert_allclose(got["bbox"], want.bbox, atol=BBOX_TOL)
        np.testing.assert_allclose(got["kps"], want.kps, atol=BBOX_TOL)
        assert got["area"] == pytest.approx(want.area, rel=0.02)
        assert 0 < got["score"] <= 1
        assert "embedding" not in got  # only on request
    assert body["chosen"] == 1  # the largest
    kps_image = decode_png(body["kps_image"])
    assert kps_image.size == (640, 480)
    chosen_kps = np.asarray(faces[1]["kps"], dtype=np.float32)
    assert np.array_equal(np.asarray(kps_image.convert("RGB")), np.asarray(draw_kps((640, 480), chosen_kps)))


@pytest.mark.parametrize(
    ("choice", "index", "chosen"),
    [("index", 0, 0), ("index", 2, 2), ("highest_score", 0, 2), ("Highest score", 0, 2), ("largest", 2, 1)],
)
def test_analyze_face_choice(locations: Locations, choice: str, index: int, chosen: int) -> None:
    img, _ = fp.three_faces()
    body = {"image": b64png(img), "face_choice": choice, "face_index": index, "return_kps_image": False}
    response = make_client(locations).post("/instantid/v1/analyze", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["chosen"] == chosen
    assert response.json()["kps_image"] is None


def test_analyze_returns_raw_embeddings_on_request(locations: Locations) -> None:
    img, _ = fp.three_faces()
    body = make_client(locations).post(
        "/instantid/v1/analyze", json={"image": b64png(img), "return_embedding": True}
    )
    faces = body.json()["faces"]
    for face in faces:
        assert len(face["embedding"]) == 512
        expected = fp.expected_embedding(img, np.asarray(face["kps"], np.float32))
        np.testing.assert_allclose(face["embedding"], expected, rtol=1e-4, atol=1e-3)


def test_analyze_accepts_a_data_url_and_applies_exif_rotation(locations: Locations) -> None:
    img = one_face(shape=(400, 300))
    pil = Image.fromarray(img).transpose(Image.Transpose.ROTATE_90)  # stored sideways: 400 × 300
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90° clockwise to view"
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=98, exif=exif)
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    body = make_client(locations).post("/instantid/v1/analyze", json={"image": url}).json()
    assert (body["width"], body["height"]) == (300, 400)
    assert len(body["faces"]) == 1
    assert decode_png(body["kps_image"]).size == (300, 400)


def test_analyze_without_a_face_is_a_422_with_advice(client: TestClient) -> None:
    response = client.post("/instantid/v1/analyze", json={"image": b64png(fp.background(200, 240))})
    assert response.status_code == 422
    message = detail(response)
    assert "No face was found in the image" in message
    assert "pad" in message


def test_analyze_face_index_out_of_range_is_a_422(client: TestClient) -> None:
    img, _ = fp.three_faces()
    response = client.post(
        "/instantid/v1/analyze", json={"image": b64png(img), "face_choice": "index", "face_index": 5}
    )
    assert response.status_code == 422
    assert "Face index 5 requested but only 3 faces found" in detail(response)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("not base64 at all!", "image is not base64"),
        ("aGVsbG8gd29ybGQ=", "image: The image data is not an image Pillow can read"),
        ("data:image/png,abc", "image is a data URL but not a base64 one"),
        ("https://example.com/face.png", "image is a URL"),
        ("   ", "image is empty"),
        ("QUJD=A", "image is not base64"),
    ],
)
def test_bad_image_data_is_a_422_naming_the_field(client: TestClient, value: str, expected: str) -> None:
    response = client.post("/instantid/v1/analyze", json={"image": value})
    assert response.status_code == 422
    assert detail(response).startswith(expected)


def test_a_server_file_path_is_never_read(locations: Locations, tmp_path: Path) -> None:
    path = tmp_path / "face.png"
    Image.fromarray(one_face()).save(path)
    response = make_client(locations).post("/instantid/v1/analyze", json={"image": str(path)})
    assert response.status_code == 422
    assert "reads neither URLs nor files" in detail(response)


def test_oversized_images_are_refused_before_decoding(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "MAX_IMAGE_PIXELS", 100 * 100)
    decoded: list[object] = []
    monkeypatch.setattr(api, "decode_image", lambda value: decoded.append(value))
    response = client.post("/instantid/v1/analyze", json={"image": b64png(fp.background(101, 100))})
    assert response.status_code == 422
    assert detail(response).startswith("image is too large (100×101)")
    assert decoded == []


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body", "image"]),
        ({"image": "x", "face_choice": "smallest"}, ["body", "face_choice"]),
        ({"image": "x", "face_index": -1}, ["body", "face_index"]),
        ({"image": "x", "colour": 1}, ["body", "colour"]),
    ],
)
def test_malformed_bodies_get_fastapis_422(client: TestClient, body: dict, loc: list[str]) -> None:
    response = client.post("/instantid/v1/analyze", json=body)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert isinstance(errors, list)
    assert [e["loc"] for e in errors] == [loc]


# --------------------------------------------------------------------------------------
# /identities
# --------------------------------------------------------------------------------------


def test_identity_save_list_delete_round_trip(
    client: TestClient, locations: Locations, pack_root: Path
) -> None:
    photos = [one_face(ident=5, size=160), one_face(ident=5, size=120, shape=(300, 420))]
    weights = [2.0, 1.0]
    response = client.post(
        "/instantid/v1/identities",
        json={"name": "Ada L", "images": [b64png(p) for p in photos], "weights": weights},
    )
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["name"] == "Ada L"
    assert created["file"] == "Ada L.safetensors"
    assert created["source_count"] == 2
    assert "/" not in created["file"]

    path = locations.identity_dir / created["file"]
    identity = load_identity(path)
    analyzer = FaceAnalyzer(pack_root)
    raw = [analyzer.analyze_one(p).embedding.astype(np.float64) for p in photos]
    want = (weights[0] * raw[0] + weights[1] * raw[1]) / sum(weights)
    np.testing.assert_allclose(identity.embedding, want, rtol=1e-6, atol=1e-6)
    assert identity.image_size == (360, 400)
    assert identity.source_count == 2

    listed = client.get("/instantid/v1/identities").json()["identities"]
    assert listed == [
        {
            "name": "Ada L",
            "file": "Ada L.safetensors",
            "source_count": 2,
            "created": created["created"],
            "problem": None,
        }
    ]
    assert client.get("/instantid/v1/status").json()["identities"] == ["Ada L"]

    response = client.delete("/instantid/v1/identities/Ada%20L")
    assert response.status_code == 200
    assert response.json() == {"deleted": True}
    assert not path.exists()
    assert client.get("/instantid/v1/identities").json() == {"identities": []}


def test_unweighted_identity_is_the_plain_mean(locations: Locations, pack_root: Path) -> None:
    photos = [one_face(ident=7), one_face(ident=7, size=100)]
    response = make_client(locations).post(
        "/instantid/v1/identities", json={"name": "bob", "images": [b64png(p) for p in photos]}
    )
    assert response.status_code == 200, response.text
    identity = load_identity(locations.identity_dir / "bob.safetensors")
    analyzer = FaceAnalyzer(pack_root)
    want = np.mean([analyzer.analyze_one(p).embedding.astype(np.float64) for p in photos], axis=0)
    np.testing.assert_allclose(identity.embedding, want, rtol=1e-6, atol=1e-6)


def test_identity_uses_the_chosen_face(locations: Locations, pack_root: Path) -> None:
    img, _ = fp.three_faces()
    body = {"name": "right", "images": [b64png(img)], "face_choice": "index", "face_index": 2}
    assert make_client(locations).post("/instantid/v1/identities", json=body).status_code == 200
    identity = load_identity(locations.identity_dir / "right.safetensors")
    rightmost = FaceAnalyzer(pack_root).analyze(img)[2]
    np.testing.assert_allclose(identity.embedding, rightmost.embedding, atol=1e-6)
    np.testing.assert_allclose(identity.kps, rightmost.kps)


def test_duplicate_identity_needs_overwrite(client: TestClient, locations: Locations) -> None:
    first = {"name": "twin", "images": [b64png(one_face(ident=1))]}
    assert client.post("/instantid/v1/identities", json=first).status_code == 200
    before = load_identity(locations.identity_dir / "twin.safetensors").embedding

    second = {"name": "twin", "images": [b64png(one_face(ident=2))]}
    response = client.post("/instantid/v1/identities", json=second)
    assert response.status_code == 422
    assert "already exists" in detail(response)
    assert "overwrite" in detail(response)
    unchanged = load_identity(locations.identity_dir / "twin.safetensors").embedding
    np.testing.assert_array_equal(unchanged, before)

    response = client.post("/instantid/v1/identities", json={**second, "overwrite": True})
    assert response.status_code == 200
    after = load_identity(locations.identity_dir / "twin.safetensors").embedding
    assert not np.allclose(after, before)


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 65, "semi;colon"])
def test_invalid_identity_name_is_a_422(client: TestClient, locations: Locations, name: str) -> None:
    response = client.post("/instantid/v1/identities", json={"name": name, "images": [b64png(one_face())]})
    assert response.status_code == 422
    assert "not a valid identity name" in detail(response)
    assert not locations.identity_dir.exists() or not any(locations.identity_dir.iterdir())
    assert not (locations.identity_dir.parent / "evil.safetensors").exists()


def test_identity_photo_without_a_face_names_the_photo(client: TestClient, locations: Locations) -> None:
    images = [b64png(one_face()), b64png(fp.background(200, 200))]
    response = client.post("/instantid/v1/identities", json={"name": "nobody", "images": images})
    assert response.status_code == 422
    assert "No face was found in images[1]" in detail(response)
    assert not (locations.identity_dir / "nobody.safetensors").exists()


def test_identity_bad_image_names_its_index(client: TestClient) -> None:
    response = client.post(
        "/instantid/v1/identities", json={"name": "x", "images": [b64png(one_face()), "%%%"]}
    )
    assert response.status_code == 422
    assert detail(response).startswith("images[1] is not base64")


@pytest.mark.parametrize(
    "extra",
    [{"weights": [1.0]}, {"weights": [1.0, -1.0]}, {"weights": [0.0, 0.0]}, {"images": []}, {"name": None}],
)
def test_identity_body_shape_errors(client: TestClient, extra: dict) -> None:
    body = {"name": "w", "images": [b64png(one_face()), b64png(one_face(size=100))], **extra}
    response = client.post("/instantid/v1/identities", json=body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


def test_delete_missing_identity_is_a_404(client: TestClient) -> None:
    response = client.delete("/instantid/v1/identities/ghost")
    assert response.status_code == 404
    assert response.json() == {"detail": "No saved identity named 'ghost'."}


def test_delete_with_an_invalid_name_is_a_422(client: TestClient, locations: Locations) -> None:
    outside = locations.identity_dir.parent / "evil.safetensors"
    outside.write_bytes(b"not ours")
    for name in ("..%2Fevil", "%2E%2E%2Fevil", "..", "../evil"):
        assert client.delete(f"/instantid/v1/identities/{name}").status_code in (404, 422)
    assert outside.exists()
    response = client.delete("/instantid/v1/identities/bad;name")
    assert response.status_code == 422
    assert "not a valid identity name" in detail(response)


def test_damaged_identity_file_is_listed_with_its_problem(client: TestClient, locations: Locations) -> None:
    locations.identity_dir.mkdir(parents=True)
    (locations.identity_dir / "broken.safetensors").write_bytes(b"not safetensors")
    response = client.get("/instantid/v1/identities")
    assert response.status_code == 200
    (item,) = response.json()["identities"]
    assert item["name"] == "broken"
    assert item["source_count"] is None
    assert "not a readable identity file" in item["problem"]


# --------------------------------------------------------------------------------------
# Errors, registration
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["plain", "a1111"])
def test_unexpected_errors_are_a_short_500_with_a_logged_traceback(
    host: str, locations: Locations, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_info() -> dict:
        raise RuntimeError("boom")

    client = make_client(locations, host, info=broken_info)
    with caplog.at_level(logging.ERROR, logger="instantid_ext"):
        response = client.get("/instantid/v1/status")
    assert response.status_code == 500
    assert response.json() == {
        "detail": "InstantID failed unexpectedly (RuntimeError: boom); the traceback is in the WebUI console."
    }
    (record,) = [r for r in caplog.records if r.name == api.__name__]
    assert record.exc_info is not None
    assert "GET /instantid/v1/status" in record.getMessage()


def test_user_errors_are_logged_as_one_line(locations: Locations, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="instantid_ext"):
        make_client(locations).delete("/instantid/v1/identities/bad;name")
    (record,) = [r for r in caplog.records if r.name == api.__name__]
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert "not a valid identity name" in record.getMessage()


def test_registering_twice_replaces_the_routes(locations: Locations) -> None:
    app = FastAPI()
    api.register_routes(app, lambda: Resources(lambda: locations), lambda: {"version": "old"})
    api.register_routes(app, lambda: Resources(lambda: locations), lambda: {"version": "new"})
    paths = [getattr(r, "path", "") for r in app.routes]
    assert paths.count("/instantid/v1/status") == 1
    assert TestClient(app).get("/instantid/v1/status").json()["version"] == "new"


@pytest.mark.parametrize("host", ["plain", "a1111"])
def test_dependencies_guard_every_route(host: str, locations: Locations) -> None:
    def deny() -> None:
        raise HTTPException(status_code=401, detail="Incorrect username or password")

    client = make_client(locations, host, dependencies=[Depends(deny)])
    for method, path in [("get", "/status"), ("get", "/schema"), ("get", "/identities")]:
        response = getattr(client, method)(f"/instantid/v1{path}")
        assert response.status_code == 401
        assert response.json()["detail"] == "Incorrect username or password"


def test_status_gives_the_reason_a_file_in_the_models_folder_is_rejected(
    locations: Locations, tmp_path: Path
) -> None:
    """An SD1.5 adapter saved as ip-adapter.bin: the reason, not "put it in <where it already is>"."""
    import torch

    from tests.fakes.weights import save_bin

    ours = locations.model_dirs[0]
    ours.mkdir(parents=True)
    sd15 = {
        "image_proj": {"proj.weight": torch.zeros(8, 16)},
        "ip_adapter": {
            f"{2 * n + 1}.{kind}.weight": torch.zeros(8, 768)
            for n in range(16)
            for kind in ("to_k_ip", "to_v_ip")
        },
    }
    adapter = save_bin(sd15, ours / "ip-adapter.bin")
    body = make_client(locations).get("/instantid/v1/status").json()
    reason = (
        f"'{adapter}' is an SD1.5 IP-Adapter (768-d tokens), not InstantID's SDXL adapter; "
        "download InstantID's ip-adapter.bin from InstantX/InstantID on Hugging Face instead."
    )
    assert body["adapters"] == []
    assert body["rejected"] == [
        {"name": "ip-adapter.bin", "path": str(adapter), "kind": "ip_adapter", "reason": reason}
    ]
    assert (
        body["problems"]["ip_adapter"] == f"No usable InstantID adapter found (searched '{ours}'). {reason}"
    )
    assert body["ready"] is False


def test_status_puts_an_unsupported_host_first(locations: Locations) -> None:
    message = "InstantID does not support this WebUI."
    body = make_client(locations, host_problem=lambda: message).get("/instantid/v1/status").json()
    assert next(iter(body["problems"])) == "host"
    assert body["problems"]["host"] == message
    assert body["ready"] is False
    assert "host" not in make_client(locations).get("/instantid/v1/status").json()["problems"]
