"""Install InstantID's Python dependencies into the WebUI's environment.

AUTOMATIC1111 runs this file as a script, ``python install.py`` in a subprocess with the WebUI's
folder on ``PYTHONPATH`` (``launch_utils.run_extension_installer``), on every start unless
``--skip-install`` is given, and once more after an install from the Extensions tab. It prints
what it does; the WebUI shows that output once the script has finished.

Rules:

* ``requirements.txt`` beside this file is the only list of what is needed.
* When everything is present, nothing runs but a few metadata look-ups: no pip, no torch import,
  not even ``import launch``.
* A package is installed only when it is missing or older than its minimum. Pip gets
  ``--upgrade-strategy only-if-needed`` and a constraints file that holds the WebUI's own
  packages (numpy, torch, pydantic, Pillow, OpenCV, ...) at their installed versions, so that
  nothing the WebUI pinned is upgraded or downgraded as a side effect.
* ONNX Runtime: an installed flavour is kept; otherwise ``onnxruntime-gpu`` when torch is a CUDA
  build, else ``onnxruntime``. Two flavours are never installed side by side.
* insightface is installed with ``--no-deps``, then only its missing dependencies, leaving out
  its own ``onnxruntime`` and ``opencv-python`` requirements when another flavour of each is there.
* A failure prints one message that says how to fix it, and never stops the WebUI from starting.

Only the standard library, ``packaging`` (for requirements and versions; pip and setuptools bring
it into every WebUI environment), ``instantid_ext/dists.py`` loaded by its path (never the
package, which imports torch) and the WebUI's ``launch`` module are used; the decisions are pure
functions, tested without the WebUI.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shlex
import sys
import tempfile
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

PREFIX = "[InstantID]"
HERE = os.path.dirname(os.path.abspath(__file__))
REQUIREMENTS_FILE = os.path.join(HERE, "requirements.txt")
OVERRIDE_ENV = "INSTANTID_ONNXRUNTIME"

ONNXRUNTIME = "onnxruntime"
ONNXRUNTIME_GPU = "onnxruntime-gpu"


def _load_dists() -> types.ModuleType:
    """``instantid_ext/dists.py`` by its path: importing the package would import torch."""
    path = os.path.join(HERE, "instantid_ext", "dists.py")
    spec = importlib.util.spec_from_file_location("instantid_dists", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


try:
    from packaging.requirements import InvalidRequirement
    from packaging.requirements import Requirement as _Pep508

    _dists: types.ModuleType | None = _load_dists()
except ImportError:  # pip and setuptools bring packaging into every WebUI environment
    _dists = None
    _Pep508 = InvalidRequirement = None  # type: ignore[assignment, misc]

PACKAGING_MISSING = (
    f"{PREFIX} The Python package 'packaging' is missing from the WebUI's environment, so InstantID "
    f'cannot check its dependencies; install it with "{sys.executable}" -m pip install packaging '
    "and restart the WebUI."
)
ONNXRUNTIME_FLAVOURS: tuple[str, ...] = (
    _dists.ONNXRUNTIME_FLAVOURS if _dists else (ONNXRUNTIME, ONNXRUNTIME_GPU)
)
OPENCV_FLAVOURS: tuple[str, ...] = _dists.OPENCV_FLAVOURS if _dists else ("opencv-python",)
# The WebUI's own packages that an install must leave exactly as they are (pip only warns about
# the packages it is not asked to install): numpy 2 breaks the WebUI's torch build, pydantic 2
# its FastAPI 0.94, and so on. protobuf is not held: the WebUI pins 3.20.0, but insightface needs
# onnx >= 1.13, and every such release requires protobuf >= 3.20.2.
PROTECTED = (
    "numpy",
    "torch",
    "torchvision",
    "pydantic",
    "fastapi",
    "gradio",
    "pillow",
    "scipy",
    "scikit-image",
    *OPENCV_FLAVOURS,
)
# PyPI's Linux torch wheels carry no "+cuXXX" tag but pull in these.
CUDA_RUNTIME_DISTS = ("nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime-cu11")

Installed = Mapping[str, "str | None"]
"""Normalized distribution name → installed version (None: present, version unknown).
A package that is not installed is not a key."""


# ---------------------------------------------------------------------------------------------
# Requirements and versions


@dataclass(frozen=True)
class Requirement:
    name: str
    """Normalized distribution name."""
    spec: str = ""
    """Version specifier such as ``>=0.7.3`` (may be empty)."""
    marker: str = ""
    """Environment marker without the ``;`` (may be empty)."""

    def pip_arg(self, name: str | None = None) -> str:
        """The requirement as one pip argument, under ``name`` if given (another flavour)."""
        text = (name or self.name) + self.spec
        if self.marker:
            # Single quotes inside: the whole argument is double-quoted for the shell (cmd and sh).
            text += "; " + self.marker.replace('"', "'")
        return text


def normalize(name: str) -> str:
    """PEP 503 name: ``Scikit_Image`` → ``scikit-image``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(line: str) -> Requirement | None:
    """One line of a requirements file or of ``Requires-Dist``; None for blanks, comments, options
    and lines that are not a requirement. The version clauses keep the order they were written in."""
    text = line.split(" #", 1)[0].strip()
    if not text or text.startswith(("#", "-")):
        return None
    try:
        req = _Pep508(text)
    except InvalidRequirement:
        return None
    written = re.sub(r"\s+", "", text.partition(";")[0])
    clauses = sorted((str(clause) for clause in req.specifier), key=written.find)
    marker = "" if req.marker is None else str(req.marker)
    return Requirement(normalize(req.name), ",".join(clauses), marker)


def read_requirements(path: str = REQUIREMENTS_FILE) -> list[Requirement]:
    with open(path, encoding="utf-8") as file:
        return [req for req in map(parse_requirement, file) if req is not None]


def satisfies(version: str | None, spec: str) -> bool | None:
    """Whether ``version`` meets ``spec`` (``>=1.2,<3``); None when either cannot be read
    (:func:`instantid_ext.dists.satisfies`)."""
    assert _dists is not None, PACKAGING_MISSING
    return _dists.satisfies(version, spec)


# ---------------------------------------------------------------------------------------------
# Decisions (pure)


def installed_flavours(installed: Installed) -> list[str]:
    """The ONNX Runtime distributions present, in ``ONNXRUNTIME_FLAVOURS`` order."""
    return [name for name in ONNXRUNTIME_FLAVOURS if name in installed]


def is_cuda_torch(torch_version: str | None, system: str, installed: Installed) -> bool:
    """Whether the WebUI's torch is a CUDA build, from metadata only (importing torch is slow).

    ``2.1.2+cu121`` (the WebUI's default) → True; ``+cpu``, ``+rocm…``, ``+xpu`` → False; no
    local tag → True only for PyPI's Linux wheels, which depend on NVIDIA's CUDA runtime wheels.
    """
    if not torch_version:
        return False
    local = torch_version.partition("+")[2].lower()
    if local:
        return local.startswith("cu")
    return system == "Linux" and any(name in installed for name in CUDA_RUNTIME_DISTS)


def choose_onnxruntime(installed: Installed, cuda: bool, override: str | None = None) -> str:
    """The ONNX Runtime distribution to require: the one installed, else the override, else by torch."""
    present = installed_flavours(installed)
    if present:
        return present[0]
    if override:
        wanted = normalize(override)
        if wanted in ONNXRUNTIME_FLAVOURS:
            return wanted
    return ONNXRUNTIME_GPU if cuda else ONNXRUNTIME


def plan_installs(
    installed: Installed,
    cuda: bool,
    requirements: Iterable[Requirement] | None = None,
    override: str | None = None,
) -> list[str]:
    """The requirements (pip arguments) that are missing or too old; empty when all is well.

    The ``onnxruntime`` line stands for whichever flavour :func:`choose_onnxruntime` picks; a
    flavour that is installed is only ever upgraded, never replaced or joined by another.
    """
    reqs = read_requirements() if requirements is None else list(requirements)
    plan: list[str] = []
    for req in reqs:
        name = req.name
        if name in ONNXRUNTIME_FLAVOURS:
            name = choose_onnxruntime(installed, cuda, override)
        if name not in installed or satisfies(installed[name], req.spec) is False:
            plan.append(req.pip_arg(name))
    return plan


def plan_dependencies(requires: Iterable[str], installed: Installed) -> list[str]:
    """The declared dependencies of a package (``Requires-Dist`` lines) that still need installing.

    Leaves out extras, anything already installed at a suitable version, ONNX Runtime (handled
    by :func:`plan_installs`, whose flavour may differ) and ``opencv-python`` when another OpenCV
    build is present (two of them overwrite each other's ``cv2``).
    """
    has_opencv = any(name in installed for name in OPENCV_FLAVOURS)
    plan: list[str] = []
    for line in requires:
        req = parse_requirement(line)
        if req is None or "extra" in req.marker:
            continue
        if req.name in ONNXRUNTIME_FLAVOURS or (req.name in OPENCV_FLAVOURS and has_opencv):
            continue
        if req.name in installed and satisfies(installed[req.name], req.spec) is not False:
            continue
        plan.append(req.pip_arg())
    return plan


def constraint_lines(installed: Installed) -> list[str]:
    """``name==version`` for every protected package that is installed with a known version."""
    return [f"{name}=={installed[name]}" for name in PROTECTED if installed.get(name)]


def pip_command(packages: Iterable[str], constraints_file: str | None = None, no_deps: bool = False) -> str:
    """Arguments for ``launch.run_pip`` (it runs them through the shell, so each is quoted)."""
    parts = ["install", "--upgrade-strategy", "only-if-needed"]
    if no_deps:
        parts.append("--no-deps")
    if constraints_file:
        parts += ["-c", f'"{constraints_file}"']
    parts += [f'"{package}"' for package in packages]
    return " ".join(parts)


def skip_install_requested(argv: Iterable[str], environ: Mapping[str, str]) -> bool:
    """``--skip-install`` on the command line or in ``COMMANDLINE_ARGS`` (what ``launch`` parses)."""
    try:
        extra = shlex.split(environ.get("COMMANDLINE_ARGS", ""))
    except ValueError:
        extra = []
    return "--skip-install" in [*argv, *extra]


def failure_advice(packages: Iterable[str], system: str, python: str, no_deps: bool = False) -> str:
    """One message saying what did not install, what that means and how to fix it.

    The command given is the one that failed (``--no-deps`` included: the dependencies that are
    missing are installed on the next start).
    """
    packages = list(packages)
    reqs = [parse_requirement(p) for p in packages]
    names = [req.name if req else normalize(p) for req, p in zip(reqs, packages, strict=True)]
    quoted = " ".join(f'"{p}"' for p in packages)
    lines = [
        f"{PREFIX} Could not install {', '.join(names)}. The WebUI starts normally, but InstantID",
        f"{PREFIX} cannot analyse faces until this is fixed. Stop the WebUI and run:",
        f'{PREFIX}     "{python}" -m pip install {"--no-deps " if no_deps else ""}{quoted}',
    ]
    if any(name.startswith("insightface") for name in names):
        lines.append(
            f"{PREFIX} insightface 2.x is a ready-made wheel for Python 3.10 and newer; "
            "insightface 0.7.3 builds from source."
        )
        if system == "Windows":
            lines.append(
                f"{PREFIX} On Windows that build needs the Microsoft C++ Build Tools (workload "
                "'Desktop development with C++'); or install a prebuilt insightface wheel made for "
                f'your Python version: "{python}" -m pip install <path or URL of the .whl>'
            )
    if any(name.startswith(("onnxruntime", "ort-")) for name in names):
        lines.append(
            f"{PREFIX} Install only one ONNX Runtime build: 'onnxruntime' (CPU) or 'onnxruntime-gpu' "
            "(NVIDIA CUDA); if an earlier attempt left two, uninstall both first."
        )
    lines.append(f"{PREFIX} Then restart the WebUI.")
    return "\n".join(lines)


def describe(requirement: str, installed: Installed) -> str:
    """Why a planned requirement is installed: ``insightface>=0.7.3 (installed: 0.7.2)``."""
    req = parse_requirement(requirement)
    if req is None or req.name not in installed:
        return f"{requirement} (not installed)"
    return f"{requirement} (installed: {installed[req.name] or 'unknown version'})"


def last_lines(text: str, count: int = 12) -> str:
    lines = [line for line in str(text).splitlines() if line.strip()]
    return "\n".join(lines[-count:])


# ---------------------------------------------------------------------------------------------
# Environment probes (fast: metadata only)


def _module_present(module: str) -> bool:
    """A regular (not leftover namespace) package that Python can import, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin not in (None, "namespace")


def installed_versions(names: Iterable[str]) -> dict[str, str | None]:
    """The installed distributions among ``names``, with their versions."""
    found: dict[str, str | None] = {}
    for name in dict.fromkeys(normalize(n) for n in names):
        try:
            found[name] = importlib.metadata.version(name) or None
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def probe(extra: Iterable[str] = ()) -> dict[str, str | None]:
    """What is installed, for every name the decisions look at."""
    names = [
        *(req.name for req in read_requirements()),
        *ONNXRUNTIME_FLAVOURS,
        *PROTECTED,
        *CUDA_RUNTIME_DISTS,
        *extra,
    ]
    found = installed_versions(names)
    # Builds without metadata (from source, vendored): importable counts as installed.
    if not installed_flavours(found) and _module_present("onnxruntime"):
        found[ONNXRUNTIME] = None
    if "insightface" not in found and _module_present("insightface"):
        found["insightface"] = None
    return found


def declared_dependencies(name: str) -> list[str]:
    try:
        return list(importlib.metadata.requires(name) or [])
    except importlib.metadata.PackageNotFoundError:
        return []


# ---------------------------------------------------------------------------------------------
# Entry point


def _pip(launch, packages: list[str], desc: str, installed: Installed, no_deps: bool = False) -> bool:
    """Run one pip install through the WebUI; False (with advice printed) when it failed."""
    for package in packages:
        print(f"{PREFIX} Installing {describe(package, installed)}")
    fd, constraints = tempfile.mkstemp(prefix="instantid-constraints-", suffix=".txt", text=True)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write("\n".join(constraint_lines(installed)) + "\n")
        launch.run_pip(pip_command(packages, constraints, no_deps), desc)
        importlib.invalidate_caches()  # let the look-ups that follow see what pip just added
    except Exception as exc:  # pip failed: explain it, never stop the WebUI
        print(f"{PREFIX} pip reported:\n{last_lines(str(exc))}")
        print(failure_advice(packages, platform.system(), sys.executable, no_deps))
        return False
    finally:
        with contextlib.suppress(OSError):
            os.remove(constraints)
    return True


def _names(requires: Iterable[str]) -> list[str]:
    return [req.name for req in map(parse_requirement, requires) if req is not None]


def main(
    launch=None,
    probe_fn: Callable[..., dict[str, str | None]] = probe,
    requires_fn: Callable[[str], list[str]] = declared_dependencies,
    argv: Iterable[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Install what is missing; returns the number of pip runs that failed.

    ``launch`` is the WebUI's launch module (imported only when there is something to install);
    the other parameters let tests replace the environment.
    """
    environ = os.environ if environ is None else environ
    if skip_install_requested(sys.argv[1:] if argv is None else argv, environ):
        return 0
    if _dists is None:
        print(PACKAGING_MISSING)
        return 0

    installed = probe_fn(_names(requires_fn("insightface")))
    flavours = installed_flavours(installed)
    if len(flavours) > 1:
        print(
            f"{PREFIX} Several ONNX Runtime builds are installed ({', '.join(flavours)}); they "
            "overwrite each other, and GPU providers may go missing. Keep one: uninstall all of "
            "them, then install either 'onnxruntime' or 'onnxruntime-gpu'."
        )

    cuda = is_cuda_torch(installed.get("torch"), platform.system(), installed)
    wanted = plan_installs(installed, cuda, override=environ.get(OVERRIDE_ENV))
    insightface = [req for req in wanted if _names([req]) == ["insightface"]]
    others = [req for req in wanted if req not in insightface]
    if not insightface and "insightface" in installed:
        # Installed earlier, maybe by hand or with --no-deps: its own dependencies must be there too.
        others += plan_dependencies(requires_fn("insightface"), installed)
    if not insightface and not others:
        return 0

    if launch is None:
        import launch  # the WebUI's launch.py: on PYTHONPATH when the WebUI runs this file
    if getattr(getattr(launch, "args", None), "skip_install", False):
        return 0

    failures = 0
    if insightface:
        # --no-deps: its plain "onnxruntime"/"opencv-python" requirements would add a second
        # ONNX Runtime or OpenCV; the dependencies that are really missing follow below.
        if _pip(launch, insightface, "InstantID requirement: insightface", installed, no_deps=True):
            requires = requires_fn("insightface")
            installed = probe_fn(_names(requires))
            others += plan_dependencies(requires, installed)
        else:
            failures += 1
    others = list(dict.fromkeys(others))
    if others and not _pip(launch, others, "InstantID requirements: " + ", ".join(others), installed):
        failures += 1
    return failures


if __name__ == "__main__":
    # The WebUI runs this file as a script (launch_utils.run_extension_installer). Whatever goes
    # wrong is reported in words and the script exits normally, so the WebUI starts as usual.
    try:
        main()
    except Exception as error:
        print(f"{PREFIX} The installer stopped unexpectedly: {error!r}")
        print(f"{PREFIX} The packages it needs are listed in {REQUIREMENTS_FILE}.")
