"""Host glue on the stand-in WebUI: route protection, Forge detection, the WebUI's hash cache."""

from __future__ import annotations

import base64
import hashlib
import importlib
import logging
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from gradio.routes import App

from instantid_ext.job.resources import Locations, Resources
from instantid_ext.models import file_hashes
from instantid_ext.webui import api
from tests.webui import fake_host

FORGE_MESSAGE = (
    "InstantID does not support Stable Diffusion WebUI Forge (2.0.1v1.10.1) yet: it runs in Forge Classic, "
    "reForge and the AUTOMATIC1111 WebUI 1.6.0 to 1.10.1, so use one of them."
)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Any]:
    installed = fake_host.install(tmp_path / "models")
    installed["modules.paths"].script_path = str(tmp_path / "webui")
    module = importlib.import_module("instantid_ext.webui.host")
    yield module
    file_hashes.set_hash_store(None)
    fake_host.uninstall()


def set_flags(**flags: Any) -> None:
    for name, value in flags.items():
        setattr(sys.modules["modules.shared"].cmd_opts, name, value)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def gradio_app(users: list[tuple[str, str]] | None) -> App:
    """The app the WebUI hands to ``on_app_started``: gradio 3.41's, with its login route."""
    with gr.Blocks() as demo:
        gr.Markdown("WebUI")
    demo.auth = users
    return App.create_app(demo)


def with_routes(app: FastAPI, host: Any, tmp_path: Path) -> TestClient:
    locations = Locations(model_dirs=(tmp_path / "m",), insightface_roots=(), identity_dir=tmp_path / "ids")
    resources = Resources(lambda: locations)
    api.register_routes(
        app, lambda: resources, lambda: {"version": "x"}, dependencies=host.api_dependencies()
    )
    return TestClient(app)


VERSION = "/instantid/v1/version"


# -- route protection ---------------------------------------------------------------------------
def test_routes_are_open_when_the_webui_has_no_auth(host, tmp_path: Path) -> None:
    assert host.api_dependencies() == []
    assert with_routes(gradio_app(None), host, tmp_path).get(VERSION).status_code == 200


def test_api_auth_protects_every_route_like_the_webuis_api(host, tmp_path: Path) -> None:
    set_flags(api_auth="api:secret,other:pw:with:colons", gradio_auth="alice:wonder")
    client = with_routes(gradio_app([("alice", "wonder")]), host, tmp_path)
    for path in (VERSION, "/instantid/v1/status", "/instantid/v1/identities"):
        refused = client.get(path)
        assert refused.status_code == 401
        assert refused.json() == {"detail": "Not authenticated"}
        assert refused.headers["WWW-Authenticate"] == "Basic"
    wrong = client.get(VERSION, headers=basic("api", "wrong"))
    assert (wrong.status_code, wrong.json()) == (401, {"detail": "Incorrect username or password"})
    assert client.get(VERSION, headers=basic("api", "secret")).status_code == 200
    assert client.get(VERSION, headers=basic("other", "pw:with:colons")).status_code == 200
    # --api-auth decides, as for /sdapi: the UI's users and login are not API users
    assert client.get(VERSION, headers=basic("alice", "wonder")).status_code == 401
    assert client.post("/login", data={"username": "alice", "password": "wonder"}).status_code == 200
    assert client.get(VERSION).status_code == 401


def test_gradio_auth_alone_protects_the_routes_with_the_ui_users(host, tmp_path: Path) -> None:
    """``--listen --gradio-auth``: the routes ask for the same users as the WebUI's page."""
    set_flags(gradio_auth="alice:wonder,bob:builder")
    client = with_routes(gradio_app([("alice", "wonder"), ("bob", "builder")]), host, tmp_path)
    refused = client.post("/instantid/v1/identities", json={"name": "x", "images": ["AAAA"]})
    assert (refused.status_code, refused.json()) == (401, {"detail": "Not authenticated"})
    assert refused.headers["WWW-Authenticate"] == "Basic"
    wrong = client.get(VERSION, headers=basic("alice", "nope"))
    assert (wrong.status_code, wrong.json()) == (401, {"detail": "Incorrect username or password"})
    assert client.get(VERSION, headers=basic("bob", "builder")).status_code == 200
    client.cookies.set("access-token-unsecure", "made-up")
    assert client.get(VERSION).status_code == 401


def test_gradio_auth_accepts_the_browsers_login_cookie(host, tmp_path: Path) -> None:
    set_flags(gradio_auth="alice:wonder")
    client = with_routes(gradio_app([("alice", "wonder")]), host, tmp_path)
    assert client.get(VERSION).status_code == 401
    login = client.post("/login", data={"username": "alice", "password": "wonder"})
    assert login.status_code == 200
    assert client.get(VERSION).status_code == 200  # the cookie gradio set at its login page
    assert client.get("/instantid/v1/identities").json() == {"identities": []}


def test_gradio_auth_path_file_is_read_like_the_webui_reads_it(host, tmp_path: Path) -> None:
    creds = tmp_path / "users.txt"
    creds.write_text("carol:c1\ndave:d1, erin:e1\n\n", encoding="utf8")
    set_flags(gradio_auth_path=str(creds))
    client = with_routes(gradio_app(None), host, tmp_path)
    assert client.get(VERSION).status_code == 401
    for user, password in (("carol", "c1"), ("dave", "d1"), ("erin", "e1")):
        assert client.get(VERSION, headers=basic(user, password)).status_code == 200


def test_the_webuis_own_credentials_reader_is_used(host, tmp_path: Path, monkeypatch) -> None:
    util = types.ModuleType("modules.initialize_util")
    util.get_gradio_auth_creds = lambda: iter([("frank", "f1"), ("broken",)])
    monkeypatch.setitem(sys.modules, "modules.initialize_util", util)
    monkeypatch.setattr(sys.modules["modules"], "initialize_util", util, raising=False)
    set_flags(gradio_auth="ignored:here")
    assert host.gradio_credentials() == {"frank": "f1"}


def test_an_unreadable_auth_file_keeps_the_routes_closed(host, tmp_path: Path) -> None:
    set_flags(gradio_auth_path=str(tmp_path / "missing.txt"))
    client = with_routes(gradio_app(None), host, tmp_path)
    assert client.get(VERSION).status_code == 401
    assert client.get(VERSION, headers=basic("", "")).status_code == 401


# -- Forge and its forks ------------------------------------------------------------------------
def fake_forge(monkeypatch, version: str) -> None:
    package = types.ModuleType("modules_forge")
    package.__path__ = []
    version_module = types.ModuleType("modules_forge.forge_version")
    version_module.version = version
    monkeypatch.setitem(sys.modules, "modules_forge", package)
    monkeypatch.setitem(sys.modules, "modules_forge.forge_version", version_module)


def test_automatic1111_is_not_forge(host) -> None:
    assert host.forge_name() is None
    assert host.forge_message() is None


def test_forge_is_refused_in_one_sentence(host, monkeypatch) -> None:
    fake_forge(monkeypatch, "2.0.1v1.10.1")
    assert host.forge_name() == "Forge (2.0.1v1.10.1)"
    assert host.forge_message() == FORGE_MESSAGE


def test_reforge_and_haoming02s_forks_are_named(host, tmp_path: Path, monkeypatch) -> None:
    fake_forge(monkeypatch, "1.0.0v2-v1.10.1RC")
    (tmp_path / "webui" / "extensions-builtin" / "reForge-RescaleCFG").mkdir(parents=True)
    assert host.forge_name() == "reForge (1.0.0v2-v1.10.1RC)"
    assert host.is_forge() and host.forge_message() is None  # reForge runs InstantID
    fake_forge(monkeypatch, "neo")
    assert host.forge_name() == "Forge Neo"
    assert not host.is_forge()
    assert host.forge_message() == (
        "InstantID does not support Stable Diffusion WebUI Forge Neo yet: it runs in Forge Classic, "
        "reForge and the AUTOMATIC1111 WebUI 1.6.0 to 1.10.1, so use one of them."
    )
    fake_forge(monkeypatch, "classic")
    assert host.forge_name() == "Forge Classic"
    assert host.is_forge() and host.forge_message() is None


def test_forge_is_found_on_the_path_before_it_is_imported(host, tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "forge" / "modules_forge"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (package / "forge_version.py").write_text("version = '2.0.1v1.10.1'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "forge"))
    assert host.forge_message() == FORGE_MESSAGE
    assert "modules_forge" not in sys.modules


def test_forge_is_reported_once_at_load_and_in_status(host, tmp_path: Path, monkeypatch, caplog) -> None:
    fake_forge(monkeypatch, "2.0.1v1.10.1")
    callbacks = importlib.import_module("instantid_ext.webui.callbacks")
    package_logger = logging.getLogger("instantid_ext")
    package_logger.addHandler(caplog.handler)
    try:
        callbacks.register_callbacks()
        callbacks.register_callbacks()  # the WebUI reloads scripts: still one line
    finally:
        package_logger.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [FORGE_MESSAGE]
    assert callbacks.api_info()["controlnet"] == {"available": False, "message": FORGE_MESSAGE}
    app = FastAPI()
    monkeypatch.setitem(sys.modules, "instantid_ext.webui.api", api)  # its models are defined once
    callbacks.on_app_started(None, app)
    body = TestClient(app).get("/instantid/v1/status").json()
    assert body["ready"] is False
    assert next(iter(body["problems"])) == "host"
    assert body["problems"]["host"] == FORGE_MESSAGE
    assert body["controlnet"]["message"] == FORGE_MESSAGE


# -- the WebUI's hash cache ---------------------------------------------------------------------
class FakeHashes(types.ModuleType):
    """``modules.hashes`` of 1.6-1.10: ``sha256(filename, title)`` keeps digests in cache.json."""

    def __init__(self, no_hashing: bool = False) -> None:
        super().__init__("modules.hashes")
        self.no_hashing = no_hashing
        self.cache: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []

    def sha256(self, filename: str, title: str, use_addnet_hash: bool = False) -> str | None:
        self.calls.append((filename, title))
        if title in self.cache:
            return self.cache[title]
        if self.no_hashing:
            return None
        self.cache[title] = hashlib.sha256(Path(filename).read_bytes()).hexdigest()
        return self.cache[title]


@pytest.fixture
def weights(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(file_hashes, "_HASHES", {})
    path = tmp_path / "ip-adapter.bin"
    path.write_bytes(b"abc")
    return path


def install_hashes(monkeypatch, hashes: FakeHashes) -> None:
    monkeypatch.setitem(sys.modules, "modules.hashes", hashes)
    monkeypatch.setattr(sys.modules["modules"], "hashes", hashes, raising=False)


def test_hashes_live_in_the_webuis_cache_under_a_per_file_title(host, weights: Path, monkeypatch) -> None:
    hashes = FakeHashes()
    install_hashes(monkeypatch, hashes)
    host.use_webui_hash_cache()
    assert file_hashes.short_hash(weights) == "ba7816bf8f"
    title = f"instantid/{weights.resolve().as_posix()}"
    assert hashes.calls == [(str(weights), title)]
    # after a restart the WebUI's cache answers: the file is not read again
    monkeypatch.setattr(file_hashes, "_HASHES", {})
    hashes.cache[title] = "1234567890" + "0" * 54
    assert file_hashes.short_hash(weights) == "1234567890"


def test_no_hashing_still_gives_a_hash_but_keeps_it_in_memory(host, weights: Path, monkeypatch) -> None:
    hashes = FakeHashes(no_hashing=True)
    install_hashes(monkeypatch, hashes)
    host.use_webui_hash_cache()
    assert file_hashes.short_hash(weights) == "ba7816bf8f"
    assert hashes.cache == {}


def test_without_the_webuis_hash_module_hashes_stay_in_memory(host, weights: Path) -> None:
    host.use_webui_hash_cache()  # the stand-in has no modules.hashes
    assert file_hashes._STORE is None
    assert file_hashes.short_hash(weights) == "ba7816bf8f"
