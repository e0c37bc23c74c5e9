"""Bad input, one case at a time: each gets its exact sentence, and nothing is left behind.

Every case runs a generation on the stand-in host that must stop with one user-facing
sentence (a 422 for the API), followed by a plain SDXL generation that must be bit-identical
to one made before the failed job: the failed job changed nothing in the host. Cases that
must *work* (the face choice per image role, ControlNet's own antelopev2 folder, renamed
model files, grayscale/RGBA photos) are checked the same way, except that they run.
"""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from instantid_ext.errors import InstantIDError
from instantid_ext.job.resources import Resources
from tests.fakes import antelopev2_pack as fp
from tests.fakes.weights import adapter_checkpoint, save_bin, save_identitynet_folder, tiny_identitynet
from tests.webui import fake_controlnet, fake_host


def face(
    ident: int = 1, size: tuple[int, int] = (256, 256), faces: int = 1, mode: str = "RGB"
) -> Image.Image:
    width, height = size
    img = fp.background(height, width)
    for i in range(faces):
        fp.draw_face(
            img, ((i + 0.5) * width / faces, height / 2), min(120, width // faces - 20), ident=ident + i
        )
    return Image.fromarray(img).convert(mode)


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def no_hooks(module: torch.nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


class Bed:
    """A fresh models folder and stand-in host per case (some cases break the model files)."""

    def __init__(self, root: Path, unet: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
        import importlib

        self.models = root / "models"
        (self.models / "instantid").mkdir(parents=True)
        save_bin(adapter_checkpoint(unet, seed=4), self.models / "instantid" / "ip-adapter.bin")
        fp.write_pack(self.models / "insightface")
        self.unet = unet
        self.monkeypatch = monkeypatch
        fake_host.install(self.models)
        self.script = importlib.import_module("instantid_ext.webui.script")
        importlib.import_module("instantid_ext.webui.callbacks").register_callbacks()
        self.services = importlib.import_module("instantid_ext.webui.services")
        monkeypatch.setattr(self.services, "_RESOURCES", Resources(self.services.host.locations))
        self.cn: fake_controlnet.FakeControlNet | None = None

    def with_controlnet(self, version: tuple[int, int, int] = (1, 1, 455)) -> fake_controlnet.FakeControlNet:
        self.cn = fake_controlnet.install(self.monkeypatch, version)
        save_identitynet_folder(tiny_identitynet(), self.models / "instantid" / "ControlNetModel")
        return self.cn

    def job(self, args: Any, **kwargs: Any) -> fake_host.Processing:
        scripts: list[Any] = []
        script_args: tuple = ()
        if self.cn is not None and self.cn.Script is not None:
            cn_script = self.cn.Script()
            cn_script.args_from, cn_script.args_to = 0, 3
            scripts.append(cn_script)
            script_args = tuple(self.cn.unit(enabled=False) for _ in range(3))
        ours = self.script.InstantIDScript()
        ours.args_from, ours.args_to = len(script_args), len(script_args) + 1
        scripts.append(ours)
        model = kwargs.pop("sd_model", None) or fake_host.fake_sd_model(self.unet)
        return fake_host.Processing(
            sd_model=model,
            script_args=(*script_args, args),
            scripts=fake_host.ScriptRunner(scripts),
            **kwargs,
        )

    def plain(self) -> torch.Tensor:
        return fake_host.run_job(self.job(False)).latents

    def error(self, args: Any, **kwargs: Any) -> InstantIDError:
        with pytest.raises(InstantIDError) as info:
            fake_host.run_job(self.job(args, **kwargs))
        assert info.value.status_code == 422
        return info.value

    def close(self) -> None:
        import importlib

        importlib.import_module("instantid_ext.job.lifecycle").close_all()
        fake_host.uninstall()


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    from tests.fakes.sgm_unet import make_unet

    return make_unet(seed=3)


@pytest.fixture
def bed(tmp_path: Path, unet: torch.nn.Module, monkeypatch: pytest.MonkeyPatch):
    made = Bed(tmp_path, unet, monkeypatch)
    yield made
    made.close()


NESTED = (
    "The antelopev2 face models are one folder too deep: the .onnx files are in "
    "'{0}/insightface/models/antelopev2/antelopev2'. Move them up one level into "
    "'{0}/insightface/models/antelopev2' (so that '{0}/insightface/models/antelopev2/scrfd_10g_bnkps.onnx' "
    "exists) and delete the empty inner folder. (Places searched: '{0}/insightface/models/antelopev2'.)"
)
FORGE = (
    "InstantID does not support Stable Diffusion WebUI Forge yet: it runs in Forge Classic, reForge and "
    "the AUTOMATIC1111 WebUI 1.6.0 to 1.10.1, so use one of them."
)


def on(**fields: Any) -> dict:
    return {"enabled": True, "images": [face()], "control_weight": 0.0, **fields}


# Each case: a function preparing the bed and returning the job's arguments (and job keywords),
# and the exact sentence, formatted with the bed's models folder as {models}.
Case = tuple[Callable[[Bed], tuple[Any, dict]], str]
SD15_ADAPTER = {
    "image_proj": {"proj.weight": torch.zeros(8, 16)},
    "ip_adapter": {
        f"{2 * n + 1}.{k}.weight": torch.zeros(8, 768) for n in range(16) for k in ("to_k_ip", "to_v_ip")
    },
}
CONTROLNET_INSTALL = (
    "Install sd-webui-controlnet 1.1.444 or newer from the Extensions tab (Available → ControlNet, or "
    "'Install from URL' https://github.com/Mikubill/sd-webui-controlnet) and restart the WebUI."
)


def _nested_pack(bed: Bed) -> tuple[Any, dict]:
    shutil.rmtree(bed.models / "insightface")
    fp.make_nested(bed.models / "insightface")
    return on(), {}


def _with_identitynet(bed: Bed) -> tuple[Any, dict]:
    save_identitynet_folder(tiny_identitynet(), bed.models / "instantid" / "ControlNetModel")
    return on(control_weight=0.8), {}


def _huge(bed: Bed) -> tuple[Any, dict]:
    from instantid_ext.faces import analysis as face_module

    bed.monkeypatch.setattr(face_module, "MAX_IMAGE_PIXELS", 100_000)  # 50 MP in the product
    return on(images=[face(size=(400, 400))]), {}


def _forge(bed: Bed) -> tuple[Any, dict]:
    import types

    bed.monkeypatch.setitem(__import__("sys").modules, "modules_forge", types.ModuleType("modules_forge"))
    return on(), {}


CASES: dict[str, Case] = {
    "no face": (
        lambda bed: (on(images=[Image.fromarray(fp.background(200, 200))]), {}),
        "No face was found in the reference image. Use a photo in which the face is clearly visible, "
        "reasonably large, roughly facing the camera and not cut off by the edges. If the face fills the "
        "whole photo, add a plain border around it (pad the photo) and try again.",
    ),
    "face number out of range": (
        lambda bed: (on(images=[face(faces=2, size=(512, 256))], face_choice="index", face_index=4), {}),
        "Face index 4 requested but only 2 faces found in the reference image (faces are counted from 0, "
        "left to right). Use an index from 0 to 1, or choose the largest face.",
    ),
    "tiny image": (
        lambda bed: (on(images=[Image.new("RGB", (8, 8), (90, 90, 90))]), {}),
        "The reference image is only 8×8 pixels: use a photo in which the face itself is at least about "
        "64 pixels wide.",
    ),
    "huge image": (
        _huge,
        "The reference image has 0.2 megapixels; InstantID analyses images of up to 0.1 megapixels: scale "
        "it down first.",
    ),
    "corrupt image": (
        lambda bed: (on(images=[base64.b64encode(b"\x89PNG\r\n\x1a\n not really").decode()]), {}),
        "InstantID argument 'images[0]': The base64 data is not an image Pillow can read (19 bytes; "
        "UnidentifiedImageError): send a PNG, JPEG or WebP.",
    ),
    "malformed JSON": (
        lambda bed: ('{"enabled": true, "images": [', {}),
        "InstantID arguments are not valid JSON: Expecting value at character 29",
    ),
    "mistyped argument": (
        lambda bed: (on(id_wieght=0.5), {}),
        "Unknown InstantID argument 'id_wieght'. Valid arguments: enabled, images, image_weights, identity, "
        "face_choice, face_index, pose_source, pose_image, id_weight, id_start, id_end, control_weight, "
        "control_start, control_end, ip_adapter_model, identitynet_model, resize_mode, face_region_only, "
        "pose_face_choice, pose_face_index, show_hint, pose_preset, pose_mirror, pose_rotate, pose_scale, "
        "pose_offset_x, pose_offset_y, noise, likeness, face_pass, face_pass_faces, face_pass_index, "
        "face_pass_strength, face_pass_prompt, face_pass_padding, face_pass_resolution, people.",
    ),
    "out of range": (
        lambda bed: (on(control_weight=5), {}),
        "InstantID argument 'control_weight': must be between 0 and 2 (got 5).",
    ),
    "SD1.5 checkpoint": (
        lambda bed: (on(), {"sd_model": fake_host.fake_sd_model(bed.unet, is_sdxl=False)}),
        "InstantID works only with SDXL models, but fake_sdxl is SD1.x. Load an SDXL checkpoint (e.g. SDXL "
        "base or a fine-tune of it) to use InstantID.",
    ),
    "SD1.5 checkpoint with IdentityNet": (
        lambda bed: (
            bed.with_controlnet(),
            (on(control_weight=0.8), {"sd_model": fake_host.fake_sd_model(bed.unet, is_sdxl=False)}),
        )[1],
        "InstantID works only with SDXL models, but fake_sdxl is SD1.x. Load an SDXL checkpoint (e.g. SDXL "
        "base or a fine-tune of it) to use InstantID.",
    ),
    "init image pose in txt2img": (
        lambda bed: (on(pose_source="init_image"), {}),
        "The pose source 'init image' needs img2img with an init image; in txt2img use the reference face "
        "or a pose image.",
    ),
    "nested antelopev2": (_nested_pack, "{nested}"),
    "missing adapter": (
        lambda bed: ((bed.models / "instantid" / "ip-adapter.bin").unlink(), (on(), {}))[1],
        "No InstantID adapter found (searched '{models}/instantid', '{models}/ControlNet'). Download "
        "ip-adapter.bin from the InstantID release and put it in '{models}/instantid', then press the "
        "refresh button.",
    ),
    "SD1.5 adapter in place of InstantID's": (
        lambda bed: (save_bin(SD15_ADAPTER, bed.models / "instantid" / "ip-adapter.bin"), (on(), {}))[1],
        "No usable InstantID adapter found (searched '{models}/instantid', '{models}/ControlNet'). "
        "'{models}/instantid/ip-adapter.bin' is an SD1.5 IP-Adapter (768-d tokens), not InstantID's SDXL "
        "adapter; download InstantID's ip-adapter.bin from InstantX/InstantID on Hugging Face instead.",
    ),
    "ControlNet missing": (
        _with_identitynet,
        "IdentityNet needs the ControlNet extension, which is not installed or not enabled. "
        + CONTROLNET_INSTALL,
    ),
    "ControlNet too old": (
        lambda bed: (bed.with_controlnet((1, 1, 443)), (on(control_weight=0.8), {}))[1],
        f"ControlNet 1.1.443 is too old for InstantID's IdentityNet. {CONTROLNET_INSTALL}",
    ),
    "Forge": (_forge, "{forge}"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_its_sentence_and_changes_nothing(bed: Bed, case: str) -> None:
    before = bed.plain()
    prepare, sentence = CASES[case]
    args, kwargs = prepare(bed)
    error = bed.error(args, **kwargs)
    print(f"\n{case!r}: {str(error)!r}")
    assert str(error) == sentence.format(models=bed.models, nested=NESTED.format(bed.models), forge=FORGE)
    assert no_hooks(bed.unet)
    assert fake_host.CALLBACKS.get("cfg_denoiser", []) == []
    if bed.cn is not None:
        assert not any(k.startswith("InstantID-IdentityNet") for k in bed.cn.global_state.cn_models)
    assert torch.equal(bed.plain(), before)


# -- what must work ---------------------------------------------------------------------------------------
def _role_choice(bed: Bed) -> tuple[Any, dict]:
    """Person #2 of a group photo, a second photo of one person, and a one-person pose photo."""
    group = face(ident=5, faces=3, size=(768, 256))
    return on(
        images=[group, face(ident=6)],
        face_choice="index",
        face_index=2,
        pose_source="pose_image",
        pose_image=face(ident=9, size=(320, 320)),
    ), {}


def _controlnet_antelopev2(bed: Bed) -> tuple[Any, dict]:
    """antelopev2 only in ControlNet's annotator folder, as ControlNet's own InstantID downloads it."""
    shutil.rmtree(bed.models / "insightface")
    cn = bed.with_controlnet()
    extension = bed.models.parent / "extensions" / "sd-webui-controlnet"
    fp.write_pack(extension / "annotator" / "downloads" / "insightface")
    module = __import__("sys").modules["scripts.external_code"]
    bed.monkeypatch.setattr(
        module, "__file__", str(extension / "scripts" / "external_code.py"), raising=False
    )
    del cn
    return on(), {}


def _renamed_adapter(bed: Bed) -> tuple[Any, dict]:
    (bed.models / "instantid" / "ip-adapter.bin").rename(bed.models / "instantid" / "my face adapter.bin")
    return on(), {}


WORKS: dict[str, Callable[[Bed], tuple[Any, dict]]] = {
    "face choice per image role": _role_choice,
    "many faces: the largest": lambda bed: (on(images=[face(faces=3, size=(768, 256))]), {}),
    "grayscale photo": lambda bed: (on(images=[face(mode="L")]), {}),
    "RGBA photo": lambda bed: (on(images=[face(mode="RGBA")]), {}),
    "base64 photo": lambda bed: (on(images=[png_b64(face())]), {}),
    "antelopev2 in ControlNet's folder": _controlnet_antelopev2,
    "renamed adapter": _renamed_adapter,
}


@pytest.mark.parametrize("case", list(WORKS))
def test_what_users_do_that_must_work(bed: Bed, case: str) -> None:
    before = bed.plain()
    args, kwargs = WORKS[case](bed)
    result = fake_host.run_job(bed.job(args, **kwargs))
    assert fake_host.HOOK_ERRORS == []
    assert result.extra_generation_params["InstantID"] == "on"
    assert not torch.equal(result.latents, before)
    assert no_hooks(bed.unet)
    assert torch.equal(bed.plain(), before)
