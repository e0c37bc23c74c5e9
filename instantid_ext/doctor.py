"""Checking an InstantID install outside the WebUI: where the files are, what is missing, how to fix it.

Used by ``python -m instantid_ext doctor``. The folders follow the WebUI's layout, derived from
its ``models`` folder exactly as the extension derives them in the WebUI; the checks are the
extension's own (the model check, the antelopev2 layout check, the provider choice), plus the
Python packages it imports. Only file headers are read and only the packages are imported;
nothing is written.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .dists import ONNXRUNTIME_FLAVOURS, OPENCV_FLAVOURS, newest, older_than
from .errors import InstantIDError
from .faces.antelopev2 import candidate_roots, find_root, pack_status
from .models.discovery import AUTO, ModelKind, resolve_model, scan_models, short_hash

PACKAGE_DIR = Path(__file__).absolute().parent  # not resolve(): keep a symlinked extensions/<name>


# --------------------------------------------------------------------------------------
# Where things are
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """The folders the WebUI would use, derived from its ``models`` folder."""

    models_dir: Path
    found_by: str
    model_dirs: tuple[Path, ...]
    insightface_roots: tuple[Path, ...]
    identity_dir: Path
    providers: str = "cpu"

    def to_json(self) -> dict[str, Any]:
        return {
            "models_dir": str(self.models_dir),
            "found_by": self.found_by,
            "model_dirs": [str(p) for p in self.model_dirs],
            "insightface_roots": [str(p) for p in self.insightface_roots],
            "identity_dir": str(self.identity_dir),
            "providers": self.providers,
        }


def find_models_dir(given: Path | None, cwd: Path, package_dir: Path = PACKAGE_DIR) -> tuple[Path, str]:
    """The WebUI's ``models`` folder and how it was found (for the report)."""
    if given is not None:
        return given.expanduser(), "--models-dir"
    if (cwd / "models").is_dir():
        return cwd / "models", "the current folder"
    for extension in (cwd, package_dir.parent):  # run in the extension's folder, or from anywhere
        if extension.parent.name == "extensions" and (extension.parent.parent / "models").is_dir():
            return extension.parent.parent / "models", "the WebUI folder this extension is installed in"
    return cwd / "models", "default: no WebUI models folder found, pass --models-dir"


def current_folder() -> Path:
    """The working folder as the shell names it ($PWD keeps a symlinked ``extensions/<name>``)."""
    logical = os.environ.get("PWD")
    if logical and Path(logical).is_absolute():
        with contextlib.suppress(OSError):
            if Path(logical).resolve() == Path.cwd().resolve():
                return Path(logical)
    return Path.cwd()


def _controlnet_extension(webui: Path) -> Path | None:
    """sd-webui-controlnet's folder in a WebUI, whatever it was cloned as."""
    try:
        extensions = sorted((webui / "extensions").iterdir())
    except OSError:
        return None
    return next((ext for ext in extensions if (ext / "scripts" / "controlnet.py").is_file()), None)


def make_layout(
    models_dir: Path | None,
    insightface_dir: Path | None = None,
    providers: str = "cpu",
    cwd: Path | None = None,
    package_dir: Path = PACKAGE_DIR,
    instantid_dir: Path | None = None,
) -> Layout:
    """The same search order as the extension in the WebUI: InstantID's folder (``instantid_dir``
    is the WebUI's ``--instantid-models-dir``), then ControlNet's."""
    models, found_by = find_models_dir(models_dir, cwd or current_folder(), package_dir)
    controlnet = _controlnet_extension(models.parent)
    ours = instantid_dir.expanduser() if instantid_dir is not None else models / "instantid"
    model_dirs = [ours, models / "ControlNet"]
    annotator = None
    if controlnet is not None:
        model_dirs.append(controlnet / "models")
        annotator = controlnet / "annotator" / "downloads"
    roots = candidate_roots(insightface_dir, models, annotator)
    return Layout(
        models_dir=models,
        found_by=found_by,
        model_dirs=tuple(model_dirs),
        insightface_roots=tuple(roots),
        identity_dir=ours / "identities",
        providers=providers,
    )


# --------------------------------------------------------------------------------------
# Python packages
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    """A package InstantID imports, the distributions that provide it and the minimum version."""

    label: str
    module: str
    dists: tuple[str, ...]
    minimum: str | None = None
    install: str = ""
    """What to ``pip install`` when it is missing."""
    side_by_side: bool = False
    """Several of ``dists`` at one version work together (they install the same files)."""


PACKAGES: tuple[Package, ...] = (
    Package("torch", "torch", ("torch",), "2.0", "torch"),
    Package("numpy", "numpy", ("numpy",), None, "numpy"),
    Package("opencv", "cv2", OPENCV_FLAVOURS, None, "opencv-python-headless", side_by_side=True),
    Package("Pillow", "PIL", ("pillow",), None, "Pillow"),
    Package("safetensors", "safetensors", ("safetensors",), None, "safetensors"),
    Package("pydantic", "pydantic", ("pydantic",), None, "pydantic"),
    Package("onnxruntime", "onnxruntime", ONNXRUNTIME_FLAVOURS, "1.14", "onnxruntime"),
    Package("insightface", "insightface", ("insightface",), "0.7.3", "insightface"),
)


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pip(requirement: str) -> str:
    """The command that installs ``requirement`` into this Python environment."""
    return f'"{sys.executable}" -m pip install "{requirement}"'


def _import_problem(package: Package) -> str | None:
    """Why ``package`` cannot be imported here, as a sentence, or None (imports it: catches
    broken installs, e.g. OpenCV without its system libraries)."""
    if package.module == "insightface":
        try:
            from .faces.analysis import _import_insightface

            _import_insightface()
        except InstantIDError as err:  # says which dependency is missing and how to install it
            return str(err)
        except ImportError as err:  # numpy itself is missing: face.py cannot be imported
            return f"insightface cannot be checked without numpy ({type(err).__name__}: {err})"
        return None
    try:
        importlib.import_module(package.module)
    except Exception as err:  # a broken install raises anything (ImportError, OSError for a DLL, ...)
        return f"{package.label} is installed but cannot be imported ({type(err).__name__}: {err})"
    if package.module == "pydantic":
        try:
            importlib.import_module("pydantic.v1")
        except ImportError:
            version = _dist_version("pydantic") or "?"
            if not version.startswith("1."):
                return f"pydantic {version} has no v1 API (pydantic.v1); InstantID needs pydantic 1.10 or 2.x"
    return None


def check_package(package: Package) -> dict[str, Any]:
    """Installed distributions, version, and the problem with its fix (None when fine)."""
    installed = {d: v for d in package.dists if (v := _dist_version(d)) is not None}
    version = next(iter(installed.values()), None)
    result: dict[str, Any] = {
        "name": package.label,
        "module": package.module,
        "installed": installed,
        "version": version,
        "minimum": package.minimum,
        "problem": None,
        "note": None,
    }
    requirement = f"{package.install}>={package.minimum}" if package.minimum else package.install
    if not installed and importlib.util.find_spec(package.module) is None:
        result["problem"] = (
            f"{package.label} is not installed in this Python environment ({sys.prefix}); "
            f"install it with: {_pip(requirement)}"
        )
        return result
    if len(installed) > 1 and package.side_by_side:
        result["problem"] = _side_by_side_problem(package, installed)
        if result["problem"] is None:
            result["note"] = (
                f"{' and '.join(installed)} {version} are both installed, as the WebUI and its "
                f"extensions usually leave them: they put the same files into '{package.module}' and "
                "work together at one version."
            )
        return result
    if len(installed) > 1:
        names = ", ".join(installed)
        result["problem"] = (
            f"{len(installed)} builds of {package.label} are installed ({names}); they share the import name "
            f"'{package.module}' and break each other: uninstall all but one with "
            f'"{sys.executable}" -m pip uninstall <name>'
        )
        return result
    if version and package.minimum and older_than(version, package.minimum):
        result["problem"] = (
            f"{package.label} {version} is older than {package.minimum}; upgrade it with: {_pip(requirement)}"
        )
        return result
    result["problem"] = _import_problem(package)
    return result


def _side_by_side_problem(package: Package, installed: dict[str, str]) -> str | None:
    """Builds that share files conflict when their versions differ (the folder then mixes two
    releases, the last one installed winning file by file) or when the result does not import."""
    if len(set(installed.values())) > 1:
        listed = ", ".join(f"{name} {version}" for name, version in installed.items())
        latest = newest(list(installed.values()))
        pins = " ".join(f'"{name}=={latest}"' for name in installed)
        return (
            f"{listed} are installed at different versions; they share the folder '{package.module}', "
            f"which now mixes both releases: bring them to one version with "
            f'"{sys.executable}" -m pip install --force-reinstall --no-deps {pins}, '
            "or uninstall all but one"
        )
    return _import_problem(package)


# --------------------------------------------------------------------------------------
# doctor
# --------------------------------------------------------------------------------------


@dataclass
class Report:
    """What ``doctor`` found; ``problems`` maps a section to its sentence (None: fine)."""

    data: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    """What is worth knowing but does not stop a generation (``ready`` ignores it)."""

    @property
    def ready(self) -> bool:
        return not any(self.problems.values())


def _providers(layout: Layout) -> dict[str, Any]:
    info: dict[str, Any] = {"requested": layout.providers, "available": [], "used": [], "problem": None}
    try:
        import onnxruntime

        from .faces.analysis import resolve_providers

        info["available"] = list(onnxruntime.get_available_providers())
        info["used"] = list(resolve_providers(layout.providers))
    except ImportError as err:
        info["problem"] = f"ONNX Runtime cannot be imported ({err})"
    except InstantIDError as err:
        info["problem"] = str(err)
    return info


def _model_problem(kind: ModelKind, inventory: Any) -> str | None:
    try:
        resolve_model(kind, AUTO, inventory)
    except InstantIDError as err:
        return str(err)
    return None


def identities(layout: Layout) -> list[dict[str, Any]]:
    from .faces.identity import IdentityStore

    store = IdentityStore(layout.identity_dir)
    items = []
    for name in store.names():
        try:
            identity = store.load(name)
            items.append({"name": name, "source_count": identity.source_count, "created": identity.created})
        except InstantIDError as err:
            items.append({"name": name, "problem": str(err)})
    return items


def doctor(layout: Layout, with_hashes: bool = False) -> Report:
    """Check everything InstantID needs; nothing is loaded beyond file headers and the imports."""
    report = Report()
    report.data["instantid"] = __version__
    report.data["python"] = {
        "version": platform.python_version(),
        "executable": sys.executable,
        "prefix": sys.prefix,
    }
    report.data["layout"] = layout.to_json()
    packages = [check_package(p) for p in PACKAGES]
    report.data["packages"] = packages
    for package in packages:
        report.problems[f"package {package['name']}"] = package["problem"]
        if package["note"]:
            report.notes[f"package {package['name']}"] = package["note"]

    inventory = scan_models(list(layout.model_dirs))

    def model_json(model: Any) -> dict[str, Any]:
        entry = {"name": model.name, "path": str(model.path), **dict(model.details)}
        if with_hashes:
            entry["hash"] = short_hash(model.path)
        return entry

    report.data["models"] = {
        "adapters": [model_json(m) for m in inventory.adapters],
        "identitynets": [model_json(m) for m in inventory.identitynets],
        "rejected": [
            {"name": r.name, "path": str(r.path), "kind": r.kind, "reason": r.reason}
            for r in inventory.rejected
        ],
    }
    report.problems["ip_adapter"] = _model_problem("ip_adapter", inventory)
    report.problems["identitynet"] = _model_problem("identitynet", inventory)

    report.data["antelopev2"] = pack_status(layout.insightface_roots)
    try:
        report.data["antelopev2_root"] = str(find_root(layout.insightface_roots))
        report.problems["antelopev2"] = None
    except InstantIDError as err:
        report.data["antelopev2_root"] = None
        report.problems["antelopev2"] = str(err)

    providers = _providers(layout)
    report.data["providers"] = providers
    if not report.problems.get("package onnxruntime"):
        report.problems["providers"] = providers["problem"]

    try:
        report.data["identities"] = identities(layout)
    except ImportError as err:  # numpy or safetensors missing: reported with the packages
        report.data["identities"] = []
        report.data["identities_problem"] = str(err)
    report.data["identity_dir"] = str(layout.identity_dir)
    return report


def _mark(problem: str | None) -> str:
    return "ok  " if not problem else "FAIL"


def print_doctor(report: Report, out: TextIO) -> None:
    data = report.data
    layout = data["layout"]
    python = data["python"]
    w = out.write
    w(f"InstantID {data['instantid']} doctor\n")
    w(f"Python {python['version']}: {python['executable']}\n")
    w(f"WebUI models folder: {layout['models_dir']} ({layout['found_by']})\n")

    w("\nPython packages\n")
    for package in data["packages"]:
        flavours = ", ".join(package["installed"])
        flavour = (
            f" ({flavours})" if flavours and list(package["installed"]) != [package["name"].lower()] else ""
        )
        version = package["version"] or "-"
        w(f"  {_mark(package['problem'])}  {package['name']} {version}{flavour}\n")
        if package["problem"]:
            w(f"        {package['problem']}\n")
        elif package["note"]:
            w(f"        note: {package['note']}\n")

    providers = data["providers"]
    w("\nFace analysis (insightface antelopev2)\n")
    face_problem = report.problems.get("antelopev2")
    if face_problem:
        w(f"  FAIL  {face_problem}\n")
    else:
        w(f"  ok    {data['antelopev2_root']}\n")
    if providers["available"]:
        w(f"        ONNX Runtime providers available: {', '.join(providers['available'])}\n")
        w(f"        requested '{providers['requested']}', used: {', '.join(providers['used'])}\n")
    if report.problems.get("providers"):
        w(f"  FAIL  {report.problems['providers']}\n")

    models = data["models"]
    for title, key, kind in (
        ("Adapter", "adapters", "ip_adapter"),
        ("IdentityNet", "identitynets", "identitynet"),
    ):
        w(f"\n{title}\n")
        for entry in models[key]:
            details = ", ".join(
                str(entry[k]) + (" MB" if k == "size_mb" else "")
                for k in ("format", "dtype", "layout", "variant", "size_mb", "hash")
                if entry.get(k)
            )
            w(f"  ok    {entry['name']}: {entry['path']} ({details})\n")
        problem = report.problems.get(kind)
        if problem:  # its message gives the reason for each rejected file
            w(f"  FAIL  {problem}\n")
        else:
            for rejected in models["rejected"]:
                if rejected["kind"] == kind:
                    w(f"  warn  {rejected['reason']}\n")
    others = [r for r in models["rejected"] if r["kind"] is None]
    if others:
        w("\nOther files in the model folders\n")
        for rejected in others:
            w(f"  warn  {rejected['reason']}\n")

    w(f"\nSaved identities ({data['identity_dir']})\n")
    saved = data.get("identities") or []
    if not saved:
        w("  none yet\n")
    for item in saved:
        if item.get("problem"):
            w(f"  warn  {item['problem']}\n")
        else:
            w(f"  ok    {item['name']} ({item['source_count']} photo(s), {item['created'] or 'no date'})\n")

    count = sum(1 for p in report.problems.values() if p)
    if report.ready:
        notes = len(report.notes)
        also = f" ({notes} note{'s' if notes > 1 else ''} above)" if notes else ""
        w(f"\nReady: InstantID has everything it needs{also}.\n")
    else:
        w(f"\nNot ready: {count} problem{'s' if count > 1 else ''} above (FAIL).\n")
