"""``python -m instantid_ext``: doctor, analyze and identities, run in-process on generated WebUI folders.

Model files are random-weight models in the real key layouts (``tests/fakes/weights.py``), the
face models the generated antelopev2 pack the real insightface loads, faces drawn with numpy.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instantid_ext import cli, doctor
from instantid_ext.doctor import Package, check_package, find_models_dir, make_layout
from instantid_ext.faces.analysis import FaceAnalyzer
from instantid_ext.method.keypoints import draw_kps
from tests.fakes import antelopev2_pack as fp
from tests.fakes.sgm_unet import make_unet
from tests.fakes.weights import adapter_checkpoint, save_bin, save_identitynet_folder, tiny_identitynet

ROOT = Path(__file__).resolve().parents[2]
READY = "Ready: InstantID has everything it needs."
pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(scope="module")
def complete_webui(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WebUI folder with every file InstantID needs where the README says to put it."""
    webui = tmp_path_factory.mktemp("webui")
    models = webui / "models"
    (models / "instantid").mkdir(parents=True)
    save_bin(adapter_checkpoint(make_unet(seed=1), seed=2), models / "instantid" / "ip-adapter.bin")
    save_identitynet_folder(tiny_identitynet(), models / "instantid" / "ControlNetModel")
    fp.write_pack(models / "insightface")
    return webui


def run_cli(*argv: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main([str(a) for a in argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def face_png(path: Path, ident: int = 1) -> Path:
    img = fp.background(300, 280)
    fp.draw_face(img, (140, 150), 130, ident=ident)
    Image.fromarray(img).save(path)
    return path


# --------------------------------------------------------------------------------------
# doctor
# --------------------------------------------------------------------------------------


def test_doctor_says_ready_on_a_complete_webui_folder(complete_webui: Path) -> None:
    models = complete_webui / "models"
    code, out, err = run_cli("doctor", "--models-dir", models)
    assert code == 0, out + err
    assert out.rstrip().endswith(READY)
    assert f"  ok    ip-adapter.bin: {models / 'instantid' / 'ip-adapter.bin'} (torch, float32," in out
    identitynet = models / "instantid" / "ControlNetModel" / "diffusion_pytorch_model.safetensors"
    assert f"  ok    ControlNetModel: {identitynet} (safetensors, float32, diffusers," in out
    assert f"  ok    {(models / 'insightface').resolve()}" in out
    assert "FAIL" not in out


def test_doctor_json_is_machine_readable(complete_webui: Path) -> None:
    code, out, _ = run_cli("doctor", "--json", "--models-dir", complete_webui / "models")
    report = json.loads(out)  # nothing else (insightface's prints) on stdout
    assert code == 0
    assert report["ready"] is True
    assert not any(report["problems"].values())
    assert [m["name"] for m in report["models"]["adapters"]] == ["ip-adapter.bin"]
    assert report["models"]["identitynets"][0]["layout"] == "diffusers"
    assert report["models"]["rejected"] == []
    assert report["providers"]["used"] == ["CPUExecutionProvider"]
    assert {p["name"] for p in report["packages"]} >= {
        "torch",
        "insightface",
        "onnxruntime",
        "opencv",
        "pydantic",
    }
    assert report["layout"]["found_by"] == "--models-dir"


def test_options_go_before_or_after_the_command(complete_webui: Path) -> None:
    before = run_cli("--json", "--models-dir", complete_webui / "models", "identity", "list")
    after = run_cli("identity", "list", "--json", "--models-dir", complete_webui / "models")
    assert before == after
    assert json.loads(before[1])["identities"] == []


def test_doctor_names_every_problem_and_its_fix(tmp_path: Path) -> None:
    """Nested antelopev2, an SD1.5 adapter as ip-adapter.bin, no IdentityNet: three exact sentences."""
    models = tmp_path / "models"
    (models / "instantid").mkdir(parents=True)
    sd15 = {
        "image_proj": {"proj.weight": torch.zeros(8, 16)},
        "ip_adapter": {
            f"{2 * n + 1}.{k}.weight": torch.zeros(8, 768) for n in range(16) for k in ("to_k_ip", "to_v_ip")
        },
    }
    adapter = save_bin(sd15, models / "instantid" / "ip-adapter.bin")
    fp.make_nested(models / "insightface")
    code, out, _ = run_cli("doctor", "--models-dir", models)
    assert code == 1
    searched = f"'{models / 'instantid'}', '{models / 'ControlNet'}'"
    assert (
        f"  FAIL  No usable InstantID adapter found (searched {searched}). '{adapter}' is an SD1.5 "
        "IP-Adapter (768-d tokens), not InstantID's SDXL adapter; download InstantID's ip-adapter.bin from "
        "InstantX/InstantID on Hugging Face instead.\n"
    ) in out
    assert (
        f"  FAIL  No InstantID IdentityNet found (searched {searched}). Download ControlNetModel/"
        "diffusion_pytorch_model.safetensors (with its config.json) from the InstantID release and put it in "
        f"'{models / 'instantid'}', then press the refresh button.\n"
    ) in out
    target = models / "insightface" / "models" / "antelopev2"
    assert (
        f"  FAIL  The antelopev2 face models are one folder too deep: the .onnx files are in "
        f"'{target / 'antelopev2'}'. Move them up one level into '{target}' (so that "
        f"'{target / fp.DETECTOR}' exists) and delete the empty inner folder."
    ) in out
    assert out.rstrip().endswith("Not ready: 3 problems above (FAIL).")
    report = json.loads(run_cli("doctor", "--json", "--models-dir", models)[1])
    (rejected,) = report["models"]["rejected"]
    assert rejected["kind"] == "ip_adapter"
    assert rejected["path"] == str(adapter)


def test_doctor_searches_controlnets_folders_like_the_extension(complete_webui: Path, tmp_path: Path) -> None:
    """ControlNet's models folder and its annotator downloads (antelopev2 from its preprocessor)."""
    webui = tmp_path / "webui"
    models = webui / "models"
    (models / "instantid").mkdir(parents=True)
    shutil.copy(complete_webui / "models" / "instantid" / "ip-adapter.bin", models / "instantid")
    controlnet = webui / "extensions" / "sd-webui-controlnet"
    (controlnet / "scripts").mkdir(parents=True)
    (controlnet / "scripts" / "controlnet.py").write_text("# ControlNet's script\n")
    (controlnet / "models").mkdir()
    shutil.copy(
        complete_webui / "models" / "instantid" / "ControlNetModel" / "diffusion_pytorch_model.safetensors",
        controlnet / "models" / "control_instant_id_sdxl.safetensors",
    )
    fp.write_pack(controlnet / "annotator" / "downloads" / "insightface")
    code, out, _ = run_cli("doctor", "--json", "--models-dir", models)
    report = json.loads(out)
    assert code == 0, report["problems"]
    assert report["layout"]["model_dirs"][-1] == str(controlnet / "models")
    assert [m["name"] for m in report["models"]["identitynets"]] == ["control_instant_id_sdxl.safetensors"]
    assert report["antelopev2_root"] == str(
        (controlnet / "annotator" / "downloads" / "insightface").resolve()
    )


def test_models_folder_is_found_from_where_the_command_runs(tmp_path: Path) -> None:
    webui = tmp_path / "webui"
    (webui / "models").mkdir(parents=True)
    package = webui / "extensions" / "sd-webui-instantid" / "instantid_ext"
    package.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    given = tmp_path / "given"
    assert find_models_dir(given, elsewhere, package) == (given, "--models-dir")
    assert find_models_dir(None, webui, package) == (webui / "models", "the current folder")
    assert find_models_dir(None, elsewhere, package) == (
        webui / "models",
        "the WebUI folder this extension is installed in",
    )
    # run in the extension's folder, even when the package was found elsewhere (a symlinked clone)
    assert find_models_dir(None, package.parent, elsewhere / "instantid_ext") == (
        webui / "models",
        "the WebUI folder this extension is installed in",
    )
    assert find_models_dir(None, elsewhere, elsewhere / "instantid_ext") == (
        elsewhere / "models",
        "default: no WebUI models folder found, pass --models-dir",
    )
    layout = make_layout(None, cwd=webui, package_dir=package)
    assert layout.model_dirs == (webui / "models" / "instantid", webui / "models" / "ControlNet")
    assert layout.identity_dir == webui / "models" / "instantid" / "identities"
    moved = make_layout(None, cwd=webui, package_dir=package, instantid_dir=tmp_path / "mine")
    assert moved.model_dirs[0] == tmp_path / "mine"
    assert moved.identity_dir == tmp_path / "mine" / "identities"


def test_doctor_uses_the_current_folder(complete_webui: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(complete_webui)
    code, out, _ = run_cli("doctor", "--json")
    assert code == 0
    layout = json.loads(out)["layout"]
    assert Path(layout["models_dir"]).resolve() == (complete_webui / "models").resolve()
    assert layout["found_by"] == "the current folder"


def test_doctor_hashes_use_only_the_cache_file_it_is_given(complete_webui: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hashes.json"
    code, out, _ = run_cli(
        "doctor", "--json", "--hashes", "--hash-cache", cache, "--models-dir", complete_webui / "models"
    )
    assert code == 0
    adapter = json.loads(out)["models"]["adapters"][0]
    import hashlib

    digest = hashlib.sha256(Path(adapter["path"]).read_bytes()).hexdigest()
    assert adapter["hash"] == digest[:10]
    assert json.loads(cache.read_text())[str(Path(adapter["path"]).resolve())]["sha256"] == digest
    assert not (complete_webui / "models" / "hashes.json").exists()


# -- Python packages ------------------------------------------------------------------------------
def test_a_missing_package_says_where_to_install_it() -> None:
    package = Package(
        "nothing", "instantid_test_no_such_module", ("instantid-test-no-such-dist",), "1.2", "nothing"
    )
    assert check_package(package)["problem"] == (
        f"nothing is not installed in this Python environment ({sys.prefix}); install it with: "
        f'"{sys.executable}" -m pip install "nothing>=1.2"'
    )


def test_two_onnxruntime_builds_and_old_versions_are_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    onnxruntime = next(p for p in doctor.PACKAGES if p.label == "onnxruntime")
    insightface = next(p for p in doctor.PACKAGES if p.label == "insightface")
    versions = {"onnxruntime": "1.18.0", "onnxruntime-gpu": "1.18.1", "insightface": "0.7.2"}
    monkeypatch.setattr(doctor, "_dist_version", versions.get)
    assert check_package(onnxruntime)["problem"] == (
        "2 builds of onnxruntime are installed (onnxruntime, onnxruntime-gpu); they share the import name "
        "'onnxruntime' and break each other: uninstall all but one with "
        f'"{sys.executable}" -m pip uninstall <name>'
    )
    assert check_package(insightface)["problem"] == (
        "insightface 0.7.2 is older than 0.7.3; upgrade it with: "
        f'"{sys.executable}" -m pip install "insightface>=0.7.3"'
    )


def test_doctor_is_not_ready_when_a_package_is_missing(
    complete_webui: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = Package(
        "nothing", "instantid_test_no_such_module", ("instantid-test-no-such-dist",), None, "nothing"
    )
    monkeypatch.setattr(doctor, "PACKAGES", (*doctor.PACKAGES, missing))
    code, out, _ = run_cli("doctor", "--models-dir", complete_webui / "models")
    assert code == 1
    assert "  FAIL  nothing -\n        nothing is not installed in this Python environment" in out
    assert out.rstrip().endswith("Not ready: 1 problem above (FAIL).")


def test_doctor_runs_and_reports_when_torch_and_opencv_cannot_be_imported(complete_webui: Path) -> None:
    """``python -m instantid_ext doctor`` must explain a broken environment, not crash in an import."""
    code = (
        "import runpy, sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['cv2'] = None\n"
        f"sys.argv = ['instantid_ext', 'doctor', '--models-dir', {str(complete_webui / 'models')!r}]\n"
        "runpy.run_module('instantid_ext', run_name='__main__', alter_sys=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 1, result.stderr
    assert "  FAIL  torch " in result.stdout
    assert (
        "torch is installed but cannot be imported "
        "(ModuleNotFoundError: import of torch halted; None in sys.modules)" in result.stdout
    )
    assert "opencv is installed but cannot be imported" in result.stdout
    adapter = complete_webui / "models" / "instantid" / "ip-adapter.bin"
    assert f"Reading '{adapter}' needs PyTorch, which cannot be imported" in result.stdout


# --------------------------------------------------------------------------------------
# analyze
# --------------------------------------------------------------------------------------


def test_analyze_lists_faces_and_writes_the_keypoint_image(complete_webui: Path, tmp_path: Path) -> None:
    img, drawn = fp.three_faces()
    image = tmp_path / "group.png"
    Image.fromarray(img).save(image)
    kps_png = tmp_path / "out" / "kps.png"
    code, out, err = run_cli(
        "analyze", image, "--models-dir", complete_webui / "models", "--out", kps_png, "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert (result["width"], result["height"]) == (640, 480)
    assert len(result["faces"]) == 3
    assert result["chosen"] == 1  # the largest
    np.testing.assert_allclose(result["faces"][1]["bbox"], drawn[1].bbox, atol=1.0)
    written = Image.open(kps_png)
    assert written.size == (640, 480)
    faces = FaceAnalyzer(complete_webui / "models" / "insightface").analyze(img)
    expected = draw_kps((640, 480), faces[1].kps)  # what IdentityNet would get for this face
    assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(expected))


def test_analyze_text_marks_the_face_used(complete_webui: Path, tmp_path: Path) -> None:
    img, _ = fp.three_faces()
    image = tmp_path / "group.png"
    Image.fromarray(img).save(image)
    code, out, _ = run_cli(
        "analyze",
        image,
        "--models-dir",
        complete_webui / "models",
        "--face-choice",
        "index",
        "--face-index",
        "2",
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{image}: 640x480, 3 faces (left to right)"
    assert lines[3].startswith("  [2] box (") and lines[3].endswith("<- used (index)")
    assert not lines[1].endswith("used (index)")


def test_analyze_without_a_face_says_so(complete_webui: Path, tmp_path: Path) -> None:
    image = tmp_path / "empty.png"
    Image.fromarray(fp.background(200, 200)).save(image)
    code, out, err = run_cli("analyze", image, "--models-dir", complete_webui / "models")
    assert code == 1
    assert out == ""
    assert err.startswith(
        f"error: No face was found in '{image}'. Use a photo in which the face is clearly visible"
    )


def test_analyze_without_face_models_names_the_folder(tmp_path: Path) -> None:
    image = face_png(tmp_path / "face.png")
    code, _, err = run_cli("analyze", image, "--models-dir", tmp_path / "models")
    assert code == 1
    assert err.startswith(
        "error: The insightface antelopev2 face models were not found. Searched: "
        f"'{tmp_path / 'models' / 'insightface' / 'models' / 'antelopev2'}'."
    )


def test_unreadable_images_and_bad_arguments(complete_webui: Path, tmp_path: Path) -> None:
    code, _, err = run_cli("analyze", tmp_path / "nope.png", "--models-dir", complete_webui / "models")
    assert code == 1
    assert err == f"error: The image '{tmp_path / 'nope.png'}' cannot be read (No such file or directory).\n"
    assert run_cli("analyze")[0] == 2
    assert run_cli("analyze", "x.png", "--face-choice", "smallest")[0] == 2
    assert run_cli("frobnicate")[0] == 2


# --------------------------------------------------------------------------------------
# identities
# --------------------------------------------------------------------------------------


def test_identity_save_list_and_overwrite(complete_webui: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(complete_webui / "models" / "insightface", models / "insightface")
    photos = [face_png(tmp_path / "a.png", ident=3), face_png(tmp_path / "b.png", ident=3)]
    code, out, err = run_cli("identity", "save", "Ada L", *photos, "--models-dir", models)
    assert code == 0, err
    saved = models / "instantid" / "identities" / "Ada L.safetensors"
    assert out == f"Saved identity 'Ada L' from 2 photo(s): {saved}\n"
    code, out, _ = run_cli("identity", "list", "--models-dir", models, "--json")
    (item,) = json.loads(out)["identities"]
    assert (item["name"], item["source_count"]) == ("Ada L", 2)
    code, _, err = run_cli("identity", "save", "Ada L", photos[0], "--models-dir", models)
    assert code == 1
    assert err == "error: An identity named 'Ada L' already exists; choose another name or add --overwrite.\n"
    assert run_cli("identity", "save", "Ada L", photos[0], "--models-dir", models, "--overwrite")[0] == 0
    code, out, _ = run_cli("identity", "list", "--models-dir", models)
    assert out.startswith("Ada L: 1 photo(s), saved ")
    # the doctor lists them too
    report = json.loads(run_cli("doctor", "--json", "--models-dir", models)[1])
    assert [i["name"] for i in report["identities"]] == ["Ada L"]


def test_identity_names_are_checked(tmp_path: Path) -> None:
    code, _, err = run_cli("identity", "save", "../evil", tmp_path / "a.png", "--models-dir", tmp_path)
    assert code == 1
    assert err.startswith("error: '../evil' is not a valid identity name")


def test_python_dash_m_runs_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "instantid_ext", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m instantid_ext")
    assert "doctor" in result.stdout and "analyze" in result.stdout and "identity" in result.stdout


def test_two_opencv_builds_at_one_version_are_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """Most WebUI installs hold both: the WebUI's and its extensions' requirements pull them in."""
    opencv = next(p for p in doctor.PACKAGES if p.label == "opencv")
    versions = {"opencv-python": "4.11.0.86", "opencv-python-headless": "4.11.0.86"}
    monkeypatch.setattr(doctor, "_dist_version", versions.get)
    monkeypatch.setattr(doctor, "_import_problem", lambda package: None)
    result = check_package(opencv)
    assert result["problem"] is None
    assert result["note"] == (
        "opencv-python and opencv-python-headless 4.11.0.86 are both installed, as the WebUI and its "
        "extensions usually leave them: they put the same files into 'cv2' and work together at one version."
    )


def test_two_opencv_builds_at_different_versions_or_not_importing_are_problems(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opencv = next(p for p in doctor.PACKAGES if p.label == "opencv")
    versions = {"opencv-python": "4.8.1.78", "opencv-python-headless": "4.11.0.86"}
    monkeypatch.setattr(doctor, "_dist_version", versions.get)
    assert check_package(opencv)["problem"] == (
        "opencv-python 4.8.1.78, opencv-python-headless 4.11.0.86 are installed at different versions; "
        "they share the folder 'cv2', which now mixes both releases: bring them to one version with "
        f'"{sys.executable}" -m pip install --force-reinstall --no-deps "opencv-python==4.11.0.86" '
        '"opencv-python-headless==4.11.0.86", or uninstall all but one'
    )
    versions["opencv-python"] = "4.11.0.86"
    broken = "opencv is installed but cannot be imported"
    monkeypatch.setattr(doctor, "_import_problem", lambda package: broken)
    assert check_package(opencv)["problem"] == broken


def test_doctor_with_a_note_is_ready_and_says_so(
    complete_webui: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = doctor._dist_version
    monkeypatch.setattr(
        doctor,
        "_dist_version",
        lambda name: real("opencv-python-headless") if name.startswith("opencv-python") else real(name),
    )
    code, out, _ = run_cli("doctor", "--models-dir", complete_webui / "models")
    assert code == 0, out
    assert "        note: opencv-python and opencv-python-headless" in out
    assert out.rstrip().endswith("Ready: InstantID has everything it needs (1 note above).")
    code, out, _ = run_cli("doctor", "--json", "--models-dir", complete_webui / "models")
    assert code == 0 and "package opencv" in json.loads(out)["notes"]
