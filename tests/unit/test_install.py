"""install.py: the install decisions, and main() against a stand-in for the WebUI's ``launch``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_installer() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("instantid_install", ROOT / "install.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


inst = _load_installer()
REQS = inst.read_requirements()

# What AUTOMATIC1111 1.10 ships, as install.py's probe would report it.
WEBUI = {
    "numpy": "1.26.2",
    "torch": "2.1.2+cu121",
    "torchvision": "0.16.2+cu121",
    "pydantic": "1.10.15",
    "fastapi": "0.94.0",
    "gradio": "3.41.2",
    "pillow": "9.5.0",
    "scipy": "1.11.4",
    "scikit-image": "0.21.0",
    "opencv-python": "4.10.0.84",
    "tqdm": "4.66.1",
    "requests": "2.31.0",
    "protobuf": "3.20.0",
}
# insightface 2.1's Requires-Dist (with a few of its extras).
INSIGHTFACE_REQUIRES = [
    "numpy",
    "onnx>=1.13",
    "onnxruntime",
    "opencv-python",
    "tqdm",
    "requests",
    "scipy",
    "scikit-image",
    'PySide6-Essentials>=6.5; extra == "gui"',
    'albumentations; extra == "face3d"',
]


def env(**extra: str | None) -> dict[str, str | None]:
    return {**WEBUI, **{k.replace("_", "-"): v for k, v in extra.items()}}


# --- requirements.txt and versions ---------------------------------------------------------


def test_requirements_file_is_the_single_list() -> None:
    assert [(r.name, r.spec) for r in REQS] == [("insightface", ">=0.7.3"), ("onnxruntime", ">=1.14")]


def test_requirements_file_has_no_webui_pins() -> None:
    assert not {r.name for r in REQS} & set(inst.PROTECTED)
    assert not {r.name for r in REQS} & {"protobuf", "opencv-python-headless"}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("insightface>=0.7.3", ("insightface", ">=0.7.3", "")),
        ("Scikit_Image >= 0.19 , < 1", ("scikit-image", ">=0.19,<1", "")),
        ('PySide6-Essentials>=6.5; extra == "gui"', ("pyside6-essentials", ">=6.5", 'extra == "gui"')),
        ("numpy (>=1.20)", ("numpy", ">=1.20", "")),
        ("requests[socks]", ("requests", "", "")),
        ("onnx>=1.13  # comment", ("onnx", ">=1.13", "")),
    ],
)
def test_parse_requirement(line: str, expected: tuple[str, str, str]) -> None:
    req = inst.parse_requirement(line)
    assert (req.name, req.spec, req.marker) == expected


@pytest.mark.parametrize("line", ["", "   ", "# comment", "-r other.txt", "--index-url x"])
def test_parse_requirement_skips_non_requirements(line: str) -> None:
    assert inst.parse_requirement(line) is None


@pytest.mark.parametrize(
    ("version", "spec", "expected"),
    [
        ("0.7.3", ">=0.7.3", True),
        ("0.7.2", ">=0.7.3", False),
        ("2.1", ">=0.7.3", True),
        ("0.10.0", ">=0.7.3", True),  # numeric, not string, comparison
        ("1.14.0", ">=1.14", True),  # trailing zeros
        ("2.1.2+cu121", "==2.1.2", True),
        ("1.17.0rc1", ">=1.17", True),
        ("1.26.2", ">=1.2,<2", True),
        ("2.0.0", ">=1.2,<2", False),
        ("4.8.1.78", "==4.8.*", True),
        ("4.9.0", "==4.8.*", False),
        ("4.9.0", "!=4.8.*", True),
        ("1.0", "", True),
        (None, ">=1", None),
        ("weird", ">=1", None),
        ("1.0", "===1.0", None),
    ],
)
def test_satisfies(version: str | None, spec: str, expected: bool | None) -> None:
    assert inst.satisfies(version, spec) is expected


# --- ONNX Runtime flavour --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("torch", "system", "extra", "expected"),
    [
        ("2.1.2+cu121", "Windows", {}, True),
        ("2.1.2+cu118", "Linux", {}, True),
        ("2.1.2+cpu", "Linux", {}, False),
        ("2.1.2+rocm5.6", "Linux", {}, False),
        ("2.1.0a0+xpu", "Linux", {}, False),
        ("2.3.1", "Linux", {"nvidia-cuda-runtime-cu12": "12.1.105"}, True),
        ("2.3.1", "Linux", {}, False),
        ("2.3.1", "Darwin", {}, False),
        ("2.3.1", "Windows", {}, False),
        (None, "Linux", {}, False),
    ],
)
def test_is_cuda_torch(torch: str | None, system: str, extra: dict[str, str], expected: bool) -> None:
    assert inst.is_cuda_torch(torch, system, extra) is expected


def test_choose_onnxruntime_keeps_the_installed_flavour() -> None:
    assert inst.choose_onnxruntime({"onnxruntime-directml": "1.17.0"}, cuda=True) == "onnxruntime-directml"
    assert inst.choose_onnxruntime({"onnxruntime": "1.17.0"}, cuda=True) == "onnxruntime"
    assert inst.choose_onnxruntime({"onnxruntime-gpu": "1.17.0"}, cuda=False) == "onnxruntime-gpu"
    # The override only chooses for a fresh install.
    assert inst.choose_onnxruntime({"onnxruntime-gpu": "1.17"}, True, "onnxruntime") == "onnxruntime-gpu"


def test_choose_onnxruntime_for_a_fresh_install() -> None:
    assert inst.choose_onnxruntime({}, cuda=True) == "onnxruntime-gpu"
    assert inst.choose_onnxruntime({}, cuda=False) == "onnxruntime"
    assert inst.choose_onnxruntime({}, True, "onnxruntime") == "onnxruntime"
    assert inst.choose_onnxruntime({}, False, "ONNXRuntime_DirectML") == "onnxruntime-directml"
    assert inst.choose_onnxruntime({}, True, "tensorflow") == "onnxruntime-gpu"  # not a flavour: ignored


# --- plan_installs ---------------------------------------------------------------------------


def test_plan_everything_present_installs_nothing() -> None:
    assert inst.plan_installs(env(insightface="2.1", onnxruntime_gpu="1.18.0"), cuda=True) == []
    assert inst.plan_installs(env(insightface="0.7.3", onnxruntime="1.14.1"), cuda=False) == []


def test_plan_missing_packages() -> None:
    assert inst.plan_installs(env(), cuda=True) == ["insightface>=0.7.3", "onnxruntime-gpu>=1.14"]
    assert inst.plan_installs(env(), cuda=False) == ["insightface>=0.7.3", "onnxruntime>=1.14"]
    assert inst.plan_installs(env(insightface="2.1"), cuda=False) == ["onnxruntime>=1.14"]


def test_plan_too_old_is_upgraded_in_its_own_flavour() -> None:
    installed = env(insightface="0.7.2", onnxruntime_gpu="1.13.1")
    assert inst.plan_installs(installed, cuda=False) == ["insightface>=0.7.3", "onnxruntime-gpu>=1.14"]


def test_plan_never_adds_a_second_flavour() -> None:
    for flavour in inst.ONNXRUNTIME_FLAVOURS:
        for cuda in (True, False):
            plan = inst.plan_installs(env(insightface="2.1", **{flavour.replace("-", "_"): "1.20.0"}), cuda)
            assert plan == [], (flavour, cuda)


def test_plan_unknown_version_counts_as_present() -> None:
    # Found by import only (a source build without metadata): leave it alone.
    assert inst.plan_installs(env(insightface=None, onnxruntime=None), cuda=True) == []


def test_plan_override_picks_the_flavour_of_a_fresh_install() -> None:
    plan = inst.plan_installs(env(insightface="2.1"), cuda=True, override="onnxruntime")
    assert plan == ["onnxruntime>=1.14"]


# --- insightface's own dependencies ----------------------------------------------------------


def test_dependencies_of_insightface_on_a_webui() -> None:
    # onnx is the only thing missing; onnxruntime is left to plan_installs, extras are skipped.
    assert inst.plan_dependencies(INSIGHTFACE_REQUIRES, env()) == ["onnx>=1.13"]
    assert inst.plan_dependencies(INSIGHTFACE_REQUIRES, env(onnx="1.16.0")) == []


def test_dependencies_keep_another_opencv_build() -> None:
    headless = {k: v for k, v in env(opencv_python_headless="4.8.0.76").items() if k != "opencv-python"}
    assert "opencv-python" not in inst.plan_dependencies(INSIGHTFACE_REQUIRES, headless)
    no_opencv = {k: v for k, v in env(onnx="1.16").items() if k != "opencv-python"}
    assert inst.plan_dependencies(INSIGHTFACE_REQUIRES, no_opencv) == ["opencv-python"]


def test_dependencies_too_old_and_markers() -> None:
    requires = ["onnx>=1.13", 'colorama; sys_platform == "win32"']
    assert inst.plan_dependencies(requires, env(onnx="1.12.0")) == [
        "onnx>=1.13",
        "colorama; sys_platform == 'win32'",
    ]


# --- pip arguments ---------------------------------------------------------------------------


def test_constraints_hold_the_webui_packages() -> None:
    lines = inst.constraint_lines(env(onnx="1.16"))
    assert "numpy==1.26.2" in lines
    assert "pydantic==1.10.15" in lines
    assert "torch==2.1.2+cu121" in lines
    assert not any(line.startswith(("protobuf", "onnx", "tqdm")) for line in lines)
    assert inst.constraint_lines({"numpy": None}) == []  # unknown version: nothing to hold


def test_pip_command_quotes_for_the_shell() -> None:
    cmd = inst.pip_command(["onnx>=1.13", "a<2"], "/tmp/c d.txt", no_deps=True)
    assert cmd == 'install --upgrade-strategy only-if-needed --no-deps -c "/tmp/c d.txt" "onnx>=1.13" "a<2"'
    assert "--no-deps" not in inst.pip_command(["x"])


def test_skip_install_requested() -> None:
    assert inst.skip_install_requested(["--skip-install"], {})
    assert inst.skip_install_requested([], {"COMMANDLINE_ARGS": "--xformers --skip-install"})
    assert not inst.skip_install_requested([], {"COMMANDLINE_ARGS": "--xformers"})
    assert not inst.skip_install_requested([], {"COMMANDLINE_ARGS": 'unbalanced "quote'})


def test_failure_advice_names_the_fix() -> None:
    text = inst.failure_advice(["insightface>=0.7.3"], "Windows", r"C:\webui\venv\Scripts\python.exe", True)
    assert r'"C:\webui\venv\Scripts\python.exe" -m pip install --no-deps "insightface>=0.7.3"' in text
    assert "Microsoft C++ Build Tools" in text
    assert "WebUI starts normally" in text
    assert all(line.startswith("[InstantID]") for line in text.splitlines())
    linux = inst.failure_advice(["onnxruntime-gpu>=1.14"], "Linux", "python")
    assert "Build Tools" not in linux
    assert "only one ONNX Runtime" in linux


# --- main() with a stand-in launch module ----------------------------------------------------


class FakeLaunch(types.ModuleType):
    def __init__(self, fail: bool = False, skip_install: bool = False) -> None:
        super().__init__("launch")
        self.args = types.SimpleNamespace(skip_install=skip_install)
        self.calls: list[tuple[str, str]] = []
        self.constraints: list[str] = []
        self.fail = fail

    def run_pip(self, command: str, desc: str | None = None, live: bool = False) -> str:
        self.calls.append((command, desc or ""))
        if ' -c "' in command:
            path = command.split(' -c "', 1)[1].split('"', 1)[0]
            self.constraints.append(Path(path).read_text(encoding="utf-8"))
        if self.fail:
            raise RuntimeError(
                f"Couldn't install {desc}.\nCommand: pip {command}\nError code: 1\nstderr: boom"
            )
        return ""


class FakeEnv:
    """The probe: a dict that pip 'installs' into when the fake launch succeeds."""

    def __init__(self, installed: dict[str, str | None], launch: FakeLaunch) -> None:
        self.installed = dict(installed)
        self.launch = launch
        self.seen = 0

    def _sync(self) -> None:
        for command, _ in self.launch.calls[self.seen :]:
            if not self.launch.fail:
                for arg in command.split('"')[1::2]:
                    req = inst.parse_requirement(arg)
                    if req is not None and not arg.endswith(".txt"):
                        self.installed[req.name] = "2.1" if req.name == "insightface" else "9.9"
        self.seen = len(self.launch.calls)

    def probe(self, extra=()) -> dict[str, str | None]:
        self._sync()
        return dict(self.installed)

    def requires(self, name: str) -> list[str]:
        self._sync()
        return INSIGHTFACE_REQUIRES if name in self.installed else []


def run_main(monkeypatch, installed, fail=False, skip_install=False, environ=None):
    launch = FakeLaunch(fail=fail, skip_install=skip_install)
    monkeypatch.setitem(sys.modules, "launch", launch)
    fake = FakeEnv(installed, launch)
    failures = inst.main(probe_fn=fake.probe, requires_fn=fake.requires, argv=[], environ=environ or {})
    return launch, failures


def test_main_everything_present_runs_no_pip(monkeypatch, capsys) -> None:
    launch, failures = run_main(monkeypatch, env(insightface="2.1", onnxruntime_gpu="1.18", onnx="1.16"))
    assert launch.calls == []
    assert failures == 0
    assert capsys.readouterr().out == ""


def test_main_does_not_import_launch_when_nothing_is_missing(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "launch", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p) / "launch.py").exists()])
    installed = env(insightface="2.1", onnxruntime="1.18", onnx="1.16")
    assert inst.main(probe_fn=lambda extra=(): installed, requires_fn=lambda n: [], argv=[], environ={}) == 0
    assert "launch" not in sys.modules


def test_main_fresh_install_on_a_cuda_webui(monkeypatch, capsys) -> None:
    launch, failures = run_main(monkeypatch, env())
    assert failures == 0
    assert len(launch.calls) == 2
    first, second = (command for command, _ in launch.calls)
    # insightface alone, without its dependencies (they would bring the CPU onnxruntime).
    assert "--no-deps" in first
    assert first.endswith('"insightface>=0.7.3"')
    # Then the GPU runtime and the one missing dependency, with the WebUI's packages held.
    assert "--no-deps" not in second
    assert second.endswith('"onnxruntime-gpu>=1.14" "onnx>=1.13"')
    assert '"onnxruntime>' not in second
    for command in (first, second):
        assert command.startswith("install --upgrade-strategy only-if-needed")
        assert not any(f'"{name}' in command for name in ("numpy", "protobuf", "opencv", "pydantic"))
    for constraints in launch.constraints:
        assert "numpy==1.26.2" in constraints.splitlines()
        assert "pydantic==1.10.15" in constraints.splitlines()
    out = capsys.readouterr().out
    assert "[InstantID] Installing insightface>=0.7.3 (not installed)" in out


def test_main_cpu_webui_gets_the_cpu_runtime(monkeypatch) -> None:
    launch, _ = run_main(monkeypatch, env(torch="2.1.2+cpu", insightface="2.1", onnx="1.16"))
    assert len(launch.calls) == 1
    command = launch.calls[0][0]
    assert command.startswith('install --upgrade-strategy only-if-needed -c "')
    assert command.endswith('" "onnxruntime>=1.14"')


def test_main_upgrades_too_old_insightface(monkeypatch, capsys) -> None:
    launch, _ = run_main(monkeypatch, env(insightface="0.7.2", onnxruntime_gpu="1.18", onnx="1.16"))
    assert len(launch.calls) == 1
    command = launch.calls[0][0]
    assert "--no-deps" in command
    assert command.endswith('"insightface>=0.7.3"')
    assert "(installed: 0.7.2)" in capsys.readouterr().out


def test_main_repairs_missing_dependencies_of_an_installed_insightface(monkeypatch) -> None:
    launch, _ = run_main(monkeypatch, env(insightface="2.1", onnxruntime="1.18"))
    assert len(launch.calls) == 1
    assert launch.calls[0][0].endswith('"onnx>=1.13"')


def test_main_failing_pip_prints_guidance_and_does_not_raise(monkeypatch, capsys) -> None:
    _, failures = run_main(monkeypatch, env(), fail=True)
    assert failures == 2  # insightface, then the runtime: both tried, both reported
    out = capsys.readouterr().out
    assert "Could not install insightface" in out
    assert "-m pip install --no-deps" in out
    assert "stderr: boom" in out
    assert "Then restart the WebUI." in out
    assert "Traceback" not in out


def test_main_warns_about_two_runtimes_and_installs_neither(monkeypatch, capsys) -> None:
    installed = env(insightface="2.1", onnx="1.16", onnxruntime="1.18", onnxruntime_gpu="1.18")
    launch, _ = run_main(monkeypatch, installed)
    assert launch.calls == []
    assert (
        "Several ONNX Runtime builds are installed (onnxruntime, onnxruntime-gpu)" in capsys.readouterr().out
    )


def test_main_respects_skip_install(monkeypatch) -> None:
    launch, _ = run_main(monkeypatch, env(), environ={"COMMANDLINE_ARGS": "--skip-install"})
    assert launch.calls == []
    launch, _ = run_main(monkeypatch, env(), skip_install=True)
    assert launch.calls == []


def test_main_env_override_for_a_fresh_runtime(monkeypatch) -> None:
    launch, _ = run_main(
        monkeypatch, env(insightface="2.1", onnx="1.16"), environ={"INSTANTID_ONNXRUNTIME": "onnxruntime"}
    )
    assert launch.calls[0][0].endswith('"onnxruntime>=1.14"')


# --- as the WebUI runs it: `python install.py` with the WebUI on PYTHONPATH -------------------


def _run_script(
    tmp_path: Path, launch_source: str, commandline_args: str = ""
) -> subprocess.CompletedProcess:
    webui = tmp_path / "webui"
    webui.mkdir()
    (webui / "launch.py").write_text(launch_source, encoding="utf-8")
    environ = {**os.environ, "PYTHONPATH": str(webui), "COMMANDLINE_ARGS": commandline_args}
    return subprocess.run(
        [sys.executable, str(ROOT / "install.py")],
        cwd=webui,
        env=environ,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


FAILING_LAUNCH = """
import pathlib, types
pathlib.Path(__file__).with_name("imported").write_text("yes")
args = types.SimpleNamespace(skip_install=False)
def run_pip(command, desc=None, live=False):
    raise RuntimeError("Couldn't install " + str(desc) + "\\nError code: 1")
"""


def test_script_exits_cleanly_even_when_pip_fails(tmp_path: Path) -> None:
    result = _run_script(tmp_path, FAILING_LAUNCH)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    if (tmp_path / "webui" / "imported").exists():  # this environment lacked something
        assert "[InstantID] Could not install" in result.stdout


def test_script_with_skip_install_does_nothing(tmp_path: Path) -> None:
    result = _run_script(tmp_path, FAILING_LAUNCH, "--skip-install")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "webui" / "imported").exists()


def test_the_doctor_knows_the_same_package_flavours_as_the_installer() -> None:
    """install.py may not import the package, so the two lists are kept equal here."""
    from instantid_ext import doctor

    assert set(doctor.ONNXRUNTIME_FLAVOURS) == set(inst.ONNXRUNTIME_FLAVOURS)
    assert set(doctor.OPENCV_FLAVOURS) == set(inst.OPENCV_FLAVOURS)
