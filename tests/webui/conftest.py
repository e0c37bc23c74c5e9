"""Shared fixtures of the stand-in host tests: a small SDXL-shaped UNet, model files, the host."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from tests.fakes import antelopev2_pack as fp
from tests.fakes.sgm_unet import make_unet
from tests.fakes.weights import adapter_checkpoint, save_bin
from tests.webui import fake_host


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return make_unet(seed=3)


@pytest.fixture(scope="module")
def models_path(tmp_path_factory: pytest.TempPathFactory, unet: torch.nn.Module) -> Path:
    root = tmp_path_factory.mktemp("webui") / "models"
    (root / "instantid").mkdir(parents=True)
    save_bin(adapter_checkpoint(unet, seed=4), root / "instantid" / "ip-adapter.bin")
    fp.write_pack(root / "insightface")
    return root


@pytest.fixture
def host(models_path: Path):
    fake_host.install(models_path)
    script_module = importlib.import_module("instantid_ext.webui.script")
    importlib.import_module("instantid_ext.webui.callbacks").register_callbacks()
    yield script_module
    importlib.import_module("instantid_ext.job.lifecycle").close_all()
    fake_host.uninstall()


@pytest.fixture
def with_identitynet(models_path: Path) -> Path:
    from tests.fakes.weights import save_identitynet_folder, tiny_identitynet

    folder = models_path / "instantid" / "ControlNetModel"
    if not folder.exists():
        save_identitynet_folder(tiny_identitynet(), folder)
    return folder
