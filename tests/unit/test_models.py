"""Model discovery and validation by content, and safe loading of the adapter."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from instantid_ext.errors import IncompatibleModelError, ModelFileError
from instantid_ext.method.ip_adapter import load_ip_adapter
from instantid_ext.models.discovery import (
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


# -- one check for scan, status and loading: rejected files keep their reason ---------------------
ADAPTER_FIX = "download InstantID's ip-adapter.bin from InstantX/InstantID on Hugging Face instead."
IDENTITYNET_FIX = (
    "download InstantID's ControlNetModel/diffusion_pytorch_model.safetensors (with its config.json) "
    "from InstantX/InstantID on Hugging Face instead."
)


def _copy(checkpoint: dict) -> dict:
    return {group: dict(sd) for group, sd in checkpoint.items()}


def _small_ip_layers(context: int = 2048, lora: bool = False) -> dict:
    hidden = [8] * 4 + [16] * 50 + [8] * 6 + [16] * 10
    layers = {
        f"{2 * n + 1}.{kind}.weight": torch.zeros(width, context)
        for n, width in enumerate(hidden)
        for kind in ("to_k_ip", "to_v_ip")
    }
    if lora:
        layers["1.to_q_lora.down.weight"] = torch.zeros(4, 8)
    return layers


def _adapter_variants() -> dict[str, tuple[dict, str | None]]:
    """Adapters users put where InstantID's belongs, with the exact reason each gets."""
    sd15 = {"image_proj": {"proj.weight": torch.zeros(8, 16)}, "ip_adapter": _small_ip_layers(context=768)}
    plus = {
        "image_proj": resampler_state_dict(dim=64, heads=1, emb=1280, queries=16),
        "ip_adapter": _small_ip_layers(),
    }
    faceid = {
        "image_proj": {"proj.0.weight": torch.zeros(32, 512), "proj.2.weight": torch.zeros(64, 32)},
        "ip_adapter": _small_ip_layers(lora=True),
    }
    tokens_1024 = {
        "image_proj": resampler_state_dict(dim=64, heads=1, out=1024),
        "ip_adapter": _small_ip_layers(),
    }
    queries_4 = {
        "image_proj": resampler_state_dict(dim=64, heads=1, queries=4),
        "ip_adapter": _small_ip_layers(),
    }
    good = {"image_proj": resampler_state_dict(dim=64, heads=1), "ip_adapter": _small_ip_layers()}
    wrong_width = _copy(good)
    wrong_width["ip_adapter"]["121.to_v_ip.weight"] = torch.zeros(8, 2048)
    damaged = _copy(good)
    damaged["image_proj"]["layers.2.0.to_kv.weight"] = torch.zeros(64, 64)
    return {
        "sd15": (sd15, "is an SD1.5 IP-Adapter (768-d tokens), not InstantID's SDXL adapter"),
        "plus": (
            plus,
            "is an SDXL IP-Adapter Plus (a Resampler over 1280-d CLIP image features), "
            "not InstantID's adapter",
        ),
        "faceid": (faceid, "is an SDXL IP-Adapter FaceID, not InstantID's adapter"),
        "tokens_1024": (
            tokens_1024,
            "has a Resampler that makes 1024-d tokens where InstantID's makes 2048-d ones (SDXL's context "
            "width), so it is not InstantID's adapter",
        ),
        "queries_4": (
            queries_4,
            "has a Resampler that makes 4 tokens where InstantID's makes 16, "
            "so it is not InstantID's adapter",
        ),
        "wrong_width": (
            wrong_width,
            "has ip_adapter.121.to_v_ip.weight 8 wide where SDXL's layout needs 16 "
            "(InstantID's adapter has 640 and 1280), so it cannot be used",
        ),
        "damaged": (
            damaged,
            "has a damaged Resampler (image_proj.layers.2.0.to_kv.weight is [64, 64] "
            "where the rest of it needs [128, 64]), so it cannot be loaded",
        ),
        "good": (good, None),
    }


@pytest.mark.parametrize("variant", list(_adapter_variants()))
def test_scan_status_and_loading_agree_on_every_adapter(tmp_path: Path, variant: str) -> None:
    """The scan lists exactly the files loading accepts; the others carry the loader's reason."""
    payload, issue = _adapter_variants()[variant]
    ours = tmp_path / "models" / "instantid"
    ours.mkdir(parents=True)
    path = save_bin(payload, ours / "ip-adapter.bin")
    inventory = scan_models([ours])
    try:
        load_ip_adapter(path, dtype=torch.float32)
        loads = True
    except IncompatibleModelError as err:
        loads = False
        assert f"cannot be used: it {issue}." in str(err)
    assert loads == (issue is None) == (inventory.names("ip_adapter") == ["ip-adapter.bin"])
    if issue is None:
        assert inventory.rejected == []
        return
    (rejected,) = inventory.rejected
    assert rejected.kind == "ip_adapter"
    assert rejected.reason == f"'{path}' {issue}; {ADAPTER_FIX}"
    with pytest.raises(ModelFileError) as info:
        resolve_model("ip_adapter", AUTO, inventory)
    assert str(info.value) == f"No usable InstantID adapter found (searched '{ours}'). {rejected.reason}"


def test_an_sd15_adapter_in_our_folder_gets_the_exact_sentence(tmp_path: Path) -> None:
    ours = tmp_path / "models" / "instantid"
    ours.mkdir(parents=True)
    path = save_bin(_adapter_variants()["sd15"][0], ours / "ip-adapter.bin")
    with pytest.raises(ModelFileError) as info:
        resolve_model("ip_adapter", AUTO, scan_models([ours, tmp_path / "models" / "ControlNet"]))
    assert str(info.value) == (
        f"No usable InstantID adapter found (searched '{ours}', '{tmp_path / 'models' / 'ControlNet'}'). "
        f"'{path}' is an SD1.5 IP-Adapter (768-d tokens), not InstantID's SDXL adapter; download InstantID's "
        "ip-adapter.bin from InstantX/InstantID on Hugging Face instead."
    )


def test_an_sd15_controlnet_named_like_identitynet_gets_the_exact_sentence(tmp_path: Path) -> None:
    ours = tmp_path / "models" / "instantid"
    folder = save_identitynet_folder(
        tiny_identitynet(cross_attention_dim=768, projection_dim=0), ours / "ControlNetModel"
    )
    weights = folder / "diffusion_pytorch_model.safetensors"
    inventory = scan_models([ours])
    assert inventory.names("identitynet") == []
    with pytest.raises(ModelFileError) as info:
        resolve_model("identitynet", AUTO, inventory)
    assert str(info.value) == (
        f"No usable InstantID IdentityNet found (searched '{ours}'). '{weights}' is an SD1.5 ControlNet "
        f"(768-d cross-attention), not InstantID's SDXL IdentityNet; {IDENTITYNET_FIX}"
    )
    with pytest.raises(IncompatibleModelError) as by_name:
        resolve_model("identitynet", "ControlNetModel", inventory)
    assert (
        str(by_name.value)
        == f"The InstantID IdentityNet 'ControlNetModel' cannot be used: {inventory.rejected[0].reason}"
    )


def test_identitynet_saved_as_bin_is_rejected_as_loading_would(identitynet_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    ours = tmp_path / "instantid"
    (ours / "ControlNetModel").mkdir(parents=True)
    weights = ours / "ControlNetModel" / "diffusion_pytorch_model.bin"
    torch.save(load_file(str(identitynet_dir / "diffusion_pytorch_model.safetensors")), weights)
    inventory = scan_models([ours])
    assert inventory.names("identitynet") == []
    (rejected,) = inventory.rejected
    assert rejected.reason == (
        f"'{weights}' is an SDXL ControlNet stored as a .bin file, but IdentityNet is given to "
        f"ControlNet only as a .safetensors file; {IDENTITYNET_FIX}"
    )
    # the .safetensors next to it wins, and the .bin twin is then not reported
    shutil.copy(identitynet_dir / "diffusion_pytorch_model.safetensors", ours / "ControlNetModel")
    (ours / "ControlNetModel" / "diffusion_pytorch_model.safetensors").touch()
    again = scan_models([ours])
    assert again.names("identitynet") == ["ControlNetModel"]
    assert again.rejected == []


def test_broken_downloads_in_our_folder_are_named(checkpoint: dict, tmp_path: Path) -> None:
    ours = tmp_path / "instantid"
    ours.mkdir()
    good = save_safetensors(checkpoint, tmp_path / "whole.safetensors")
    cut = ours / "ip-adapter.safetensors"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    pointer = ours / "ControlNetModel" / "diffusion_pytorch_model.safetensors"
    pointer.parent.mkdir()
    pointer.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 2502139136\n")
    inventory = scan_models([ours])
    reasons = {r.path.name: (r.kind, r.reason) for r in inventory.rejected}
    assert reasons["ip-adapter.safetensors"] == (
        "ip_adapter",
        f"'{cut}' is incomplete ({len(data) // 2:,} of {len(data):,} bytes): the download was interrupted; "
        "download it again.",
    )
    assert reasons["diffusion_pytorch_model.safetensors"] == (
        "identitynet",
        f"'{pointer}' is a Git LFS pointer file, not the model (the repository was cloned without Git LFS); "
        "download the real file again.",
    )
    with pytest.raises(ModelFileError, match="incomplete"):
        resolve_model("ip_adapter", AUTO, inventory)
    with pytest.raises(ModelFileError, match="Git LFS pointer"):
        resolve_model("identitynet", AUTO, inventory)


def test_only_files_meant_for_instantid_are_reported(checkpoint: dict, tmp_path: Path) -> None:
    """ControlNet's folder is full of other models: only InstantID-named ones are reported there."""
    from instantid_ext.faces.identity import Identity, IdentityStore

    ours = tmp_path / "instantid"
    controlnet = tmp_path / "ControlNet"
    ours.mkdir()
    controlnet.mkdir()
    sd15 = _adapter_variants()["sd15"][0]
    save_bin(sd15, controlnet / "ip-adapter_sd15.bin")
    named = save_bin(sd15, controlnet / "ip-adapter_instant_id_sdxl.bin")
    save_file({"x": torch.zeros(2)}, str(controlnet / "unrelated.safetensors"))
    stray = ours / "sd_xl_base.safetensors"
    save_file({"model.diffusion_model.conv_in.weight": torch.zeros(2)}, str(stray))
    identity = Identity(embedding=torch.ones(512).numpy(), name="ada")
    IdentityStore(ours / "identities").save("ada", identity)
    inventory = scan_models([ours, controlnet])
    assert sorted(r.path for r in inventory.rejected) == sorted([named, stray])
    by_path = {r.path: r for r in inventory.rejected}
    assert by_path[stray].kind is None
    assert by_path[stray].reason == (
        f"'{stray}' is a Stable Diffusion checkpoint or UNet, not one of InstantID's models; "
        "InstantID does not use it."
    )
    # a file that is neither kind explains both missing models
    with pytest.raises(ModelFileError, match="checkpoint or UNet"):
        resolve_model("identitynet", AUTO, inventory)


def test_rejections_do_not_hide_a_usable_model(checkpoint: dict, tmp_path: Path) -> None:
    ours = tmp_path / "instantid"
    ours.mkdir()
    save_bin(_adapter_variants()["sd15"][0], ours / "ip-adapter.bin")
    save_bin(checkpoint, ours / "ip-adapter_instantid.bin")
    inventory = scan_models([ours])
    assert resolve_model("ip_adapter", AUTO, inventory).name == "ip-adapter_instantid.bin"
    assert [r.name for r in inventory.rejected] == ["ip-adapter.bin"]
    assert inventory.adapters[0].details["format"] == "torch"
    assert inventory.adapters[0].details["dtype"] == "float32"


# -- hashes ---------------------------------------------------------------------------------------
class _CountingStore:
    def __init__(self, known: dict[Path, str] | None = None) -> None:
        self.known = dict(known or {})
        self.lookups: list[Path] = []
        self.recorded: dict[Path, str] = {}

    def lookup(self, path: Path) -> str | None:
        self.lookups.append(path)
        return self.known.get(path)

    def record(self, path: Path, sha256: str) -> None:
        self.recorded[path] = sha256


@pytest.fixture
def fresh_hashes(monkeypatch: pytest.MonkeyPatch):
    from instantid_ext.models import file_hashes

    monkeypatch.setattr(file_hashes, "_HASHES", {})
    yield file_hashes
    file_hashes.set_hash_store(None)


def test_short_hash_comes_from_the_store_when_it_has_one(tmp_path: Path, fresh_hashes) -> None:
    path = tmp_path / "ip-adapter.bin"
    path.write_bytes(b"abc")
    store = _CountingStore({path: "f" * 64})
    fresh_hashes.set_hash_store(store)
    assert short_hash(path) == "ffffffffff"  # the store's digest: the file is not read
    assert short_hash(path) == "ffffffffff"
    assert store.lookups == [path]  # then kept in memory


def test_computed_hashes_are_recorded_and_are_the_sha256_prefix(tmp_path: Path, fresh_hashes) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    store = _CountingStore()
    fresh_hashes.set_hash_store(store)
    assert short_hash(path) == "ba7816bf8f"
    assert store.recorded == {path: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}


def test_json_hash_store_survives_a_restart_and_notices_changes(tmp_path: Path, fresh_hashes) -> None:
    from instantid_ext.models.discovery import JsonHashStore

    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    cache = tmp_path / "hashes.json"
    fresh_hashes.set_hash_store(JsonHashStore(cache))
    assert short_hash(path) == "ba7816bf8f"
    saved = json.loads(cache.read_text())
    assert saved[str(path.resolve())]["sha256"].startswith("ba7816bf8f")
    # a new process: nothing in memory; the file's digest is taken from the JSON file
    fresh_hashes._HASHES.clear()
    saved[str(path.resolve())]["sha256"] = "0" * 64
    cache.write_text(json.dumps(saved))
    assert short_hash(path) == "0000000000"
    # the file changes: its entry no longer applies
    fresh_hashes._HASHES.clear()
    path.write_bytes(b"abcd")
    assert short_hash(path) == hashlib.sha256(b"abcd").hexdigest()[:10]
