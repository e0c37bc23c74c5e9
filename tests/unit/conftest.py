"""Fixtures of the oracle tests: the stand-in SDXL UNet and an IP-Adapter that fits it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from instantid_ext.method.ip_adapter import IPAdapter, load_ip_adapter
from tests.fakes.sgm_unet import make_unet
from tests.fakes.weights import adapter_checkpoint, save_bin


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    return make_unet(seed=0)


@pytest.fixture(scope="module")
def adapter(unet: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> IPAdapter:
    """Random IP-Adapter weights for ``unet``, loaded from a file as a user's would be."""
    path = save_bin(adapter_checkpoint(unet, seed=5), tmp_path_factory.mktemp("ip") / "ip-adapter.bin")
    return load_ip_adapter(path, dtype=torch.float32)
