"""Model discovery and validation by content, and safe loading of the adapter."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from instantid_ext.errors import IncompatibleModelError, ModelFileError
from instantid_ext.ip_adapter import load_ip_adapter
from instantid_ext.models import (
    AUTO,
    check_identitynet,
    classify,
    resolve_model,
    scan_models,
    short_hash,
)
from tests.fakes.sgm_unet import make_unet
from tests.fakes.weights import (
    adapter_checkpoint,
    ip_layers_state_dict,
    resampler_state_dict,
    save_bin,
    save_identitynet_folder,
    save_safetensors,
    tiny_identitynet,
)


@pytest.fixture(scope="module")
def checkpoint() -> dict:
    return adapter_checkpoint(make_unet(seed=1), seed=2)


@pytest.fixture(scope="module")
def identitynet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_identitynet_folder(tiny_identitynet(), tmp_path_factory.mktemp("cn") / "ControlNetModel")


def test_bin_and_safetensors_load_the_same_adapter(checkpoint: dict, tmp_path: Path) -> None:
    a = load_ip_adapter(save_bin(checkpoint, tmp_path / "ip-adapter.bin"), dtype=torch.float32)
    b = load_ip_adapter(save_safetensors(checkpoint, tmp_path / "ip.safetensors"), dtype=torch.float32)
    emb = torch.randn(512)
    assert torch.equal(a.face_tokens(emb), b.face_tokens(emb))
    assert len(a.to_k_ip) == len(a.to_v_ip) == 70
    assert torch.equal(a.to_v_ip[69].weight, checkpoint["ip_adapter"]["139.to_v_ip.weight"])
    assert a.face_tokens(emb).shape == (1, 16, 2048)


def test_adapter_defaults_to_half_precision_ip_layers(checkpoint: dict, tmp_path: Path) -> None:
    adapter = load_ip_adapter(save_bin(checkpoint, tmp_path / "ip-adapter.bin"))
    assert adapter.to_k_ip[0].weight.dtype == torch.float16
    assert adapter.image_proj.proj_in.weight.dtype == torch.float32  # Resampler kept exact


def test_loading_never_runs_pickled_code(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle code ran')",))

    path = tmp_path / "evil.bin"
    with path.open("wb") as fh:
        pickle.dump({"image_proj": Boom()}, fh)
    with pytest.raises(ModelFileError, match="weights-only"):
        load_ip_adapter(path)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda c: c["ip_adapter"].update({"1.to_k_ip.weight": torch.zeros(320, 768)}), "SD1.5 IP-Adapter"),
        (lambda c: c["image_proj"].update({"proj_in.weight": torch.zeros(128, 1280)}), "CLIP image features"),
        (lambda c: c.update(image_proj={"proj.weight": torch.zeros(8, 512)}), "without a Resampler"),
        (lambda c: c["ip_adapter"].pop("139.to_v_ip.weight"), "139.to_v_ip"),
        (lambda c: c["ip_adapter"].update({"141.to_k_ip.weight": torch.zeros(64, 2048)}), "141"),
    ],
)
def test_wrong_adapters_are_named(checkpoint: dict, tmp_path: Path, mutate, match: str) -> None:
    broken = {group: dict(sd) for group, sd in checkpoint.items()}
    mutate(broken)
    path = save_bin(broken, tmp_path / "adapter.bin")
    with pytest.raises(IncompatibleModelError, match=match):
        load_ip_adapter(path)


def test_sd15_adapter_layout_is_rejected(tmp_path: Path) -> None:
    sd15 = {
        "image_proj": {"proj.weight": torch.zeros(3072, 1024), "norm.weight": torch.zeros(768)},
        "ip_adapter": ip_layers_state_dict([320] * 16, context=768),
    }
    with pytest.raises(IncompatibleModelError, match="SD1.5"):
        load_ip_adapter(save_bin(sd15, tmp_path / "ip-adapter_sd15.bin"))
    assert classify(tmp_path / "ip-adapter_sd15.bin") is None


def test_truncated_and_missing_files(checkpoint: dict, tmp_path: Path) -> None:
    good = save_safetensors(checkpoint, tmp_path / "ip.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="(?i)download"):
        load_ip_adapter(cut)
    with pytest.raises(ModelFileError, match="models/instantid"):
        load_ip_adapter(tmp_path / "nope.bin")


def test_identitynet_is_recognised_by_content(identitynet_dir: Path, tmp_path: Path) -> None:
    weights = check_identitynet(identitynet_dir)
    assert weights.name == "diffusion_pytorch_model.safetensors"
    renamed = tmp_path / "control_instant_id_sdxl.safetensors"
    shutil.copy(weights, renamed)
    assert check_identitynet(renamed) == renamed
    assert classify(renamed) == "identitynet"


def test_identitynet_errors(tmp_path: Path) -> None:
    sd15 = tmp_path / "sd15"
    save_identitynet_folder(tiny_identitynet(cross_attention_dim=768, projection_dim=0), sd15)
    with pytest.raises(IncompatibleModelError, match="SD1.5 ControlNet"):
        check_identitynet(sd15)
    empty = tmp_path / "ControlNetModel"
    empty.mkdir()
    (empty / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelFileError, match=r"only the \.bin"):
        check_identitynet(empty)
    adapter = tmp_path / "ip.safetensors"
    save_file({"ip_adapter.1.to_k_ip.weight": torch.zeros(4, 2048)}, str(adapter))
    with pytest.raises(IncompatibleModelError, match="IP-Adapter, not a ControlNet"):
        check_identitynet(adapter)


def test_scan_finds_both_kinds_anywhere_and_resolves_names(
    checkpoint, identitynet_dir: Path, tmp_path: Path
) -> None:
    ours = tmp_path / "models" / "instantid"
    controlnet = tmp_path / "models" / "ControlNet"
    ours.mkdir(parents=True)
    controlnet.mkdir(parents=True)
    save_bin(checkpoint, ours / "ip-adapter.bin")
    shutil.copytree(identitynet_dir, ours / "ControlNetModel")
    save_file({"x": torch.zeros(2)}, str(controlnet / "unrelated.safetensors"))
    (controlnet / "notes.txt").write_text("hi")
    inventory = scan_models([ours, controlnet, None, tmp_path / "absent"])
    assert inventory.names("ip_adapter") == ["ip-adapter.bin"]
    assert inventory.names("identitynet") == ["ControlNetModel"]
    assert resolve_model("identitynet", AUTO, inventory).path.name == "diffusion_pytorch_model.safetensors"
    assert resolve_model("ip_adapter", "ip-adapter.bin", inventory).path == ours / "ip-adapter.bin"
    with pytest.raises(ModelFileError, match="Available: ip-adapter.bin"):
        resolve_model("ip_adapter", "other.bin", inventory)


def test_nothing_found_says_where_to_put_files(tmp_path: Path) -> None:
    inventory = scan_models([tmp_path / "models" / "instantid"])
    with pytest.raises(ModelFileError) as info:
        resolve_model("identitynet", AUTO, inventory)
    message = str(info.value)
    assert str(tmp_path / "models" / "instantid") in message
    assert "diffusion_pytorch_model.safetensors" in message


def test_short_hash_is_stable(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert short_hash(path) == "ba7816bf8f"


def test_resampler_state_dict_defaults_are_instantid_shapes() -> None:
    sd = resampler_state_dict()
    assert sd["layers.3.0.to_kv.weight"].shape == (2560, 1280)
    assert len(sd) == 51


def test_loading_ignores_a_host_wrapper_around_torch_load(
    checkpoint: dict, tmp_path: Path, monkeypatch
) -> None:
    """The WebUI wraps torch.load with a zip checker that rejects newer files; we do not depend on it."""

    def refuse(*args, **kwargs):
        raise RuntimeError("bad file inside ip-adapter.bin: ip-adapter/.format_version")

    monkeypatch.setattr(torch, "load", refuse)
    adapter = load_ip_adapter(save_bin(checkpoint, tmp_path / "ip-adapter.bin"))
    assert len(adapter.to_k_ip) == 70
    assert classify(tmp_path / "ip-adapter.bin") == "ip_adapter"


def test_loading_works_on_torch_without_mmap(checkpoint: dict, tmp_path: Path, monkeypatch) -> None:
    """torch 2.0 (shipped with WebUI 1.6) has no ``mmap`` argument."""
    real = torch.serialization.load

    def old_torch_load(*args, **kwargs):
        if "mmap" in kwargs:
            raise TypeError("load() got an unexpected keyword argument 'mmap'")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.serialization, "load", old_torch_load)
    assert len(load_ip_adapter(save_bin(checkpoint, tmp_path / "ip-adapter.bin")).to_v_ip) == 70
