"""``python -m instantid_ext``: check an install, analyse faces and manage identities, without the WebUI.

Commands:

* ``doctor`` — the Python packages, the face models (antelopev2 layout), the adapter and the
  IdentityNet (what was found, and each rejected file with the reason), the ONNX Runtime
  providers; every problem with where the fix goes. Exit code 0 when InstantID can run, else 1.
* ``analyze IMAGE`` — the faces in a photo, the one InstantID would use, its keypoint image.
* ``identity save NAME IMAGES...`` / ``identity list`` — the saved identities the WebUI uses.

Paths follow the WebUI's layout: ``--models-dir`` is the WebUI's ``models`` folder (InstantID's
files in ``models/instantid``, the face models in ``models/insightface``). Without it, ``models``
in the current folder is used, else the WebUI folder this extension is installed in
(``extensions/<name>/`` → ``../../models``). Only the standard library and the core package are
imported up front; nothing here imports the WebUI, and nothing is written except what a
command is asked to write (an identity, a keypoint image, ``--hash-cache``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import platform
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .antelopev2 import candidate_roots, find_root, pack_status
from .errors import InstantIDError, InvalidInputError
from .models import AUTO, JsonHashStore, ModelKind, resolve_model, scan_models, set_hash_store, short_hash

PROG = "python -m instantid_ext"
FACE_CHOICES = ("largest", "index", "highest_score")
EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
PACKAGE_DIR = Path(__file__).resolve().parent


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
    extension = package_dir.parent
    if extension.parent.name == "extensions" and (extension.parent.parent / "models").is_dir():
        return extension.parent.parent / "models", "the WebUI folder this extension is installed in"
    return cwd / "models", "default: no WebUI models folder found, pass --models-dir"


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
) -> Layout:
    """The same search order as the extension in the WebUI: InstantID's folder, then ControlNet's."""
    models, found_by = find_models_dir(models_dir, cwd or Path.cwd(), package_dir)
    controlnet = _controlnet_extension(models.parent)
    model_dirs = [models / "instantid", models / "ControlNet"]
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
        identity_dir=models / "instantid" / "identities",
        providers=providers,
    )


# --------------------------------------------------------------------------------------
# Python packages
# --------------------------------------------------------------------------------------

ONNXRUNTIME_FLAVOURS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-silicon",
    "onnxruntime-openvino",
    "onnxruntime-rocm",
    "onnxruntime-migraphx",
    "onnxruntime-qnn",
    "onnxruntime-training",
    "ort-nightly",
    "ort-nightly-gpu",
)
OPENCV_FLAVOURS = (
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
)


@dataclass(frozen=True)
class Package:
    """A package InstantID imports, the distributions that provide it and the minimum version."""

    label: str
    module: str
    dists: tuple[str, ...]
    minimum: str | None = None
    install: str = ""
    """What to ``pip install`` when it is missing."""


PACKAGES: tuple[Package, ...] = (
    Package("torch", "torch", ("torch",), "2.0", "torch"),
    Package("numpy", "numpy", ("numpy",), None, "numpy"),
    Package("opencv", "cv2", OPENCV_FLAVOURS, None, "opencv-python-headless"),
    Package("Pillow", "PIL", ("pillow",), None, "Pillow"),
    Package("safetensors", "safetensors", ("safetensors",), None, "safetensors"),
    Package("pydantic", "pydantic", ("pydantic",), None, "pydantic"),
    Package("onnxruntime", "onnxruntime", ONNXRUNTIME_FLAVOURS, "1.14", "onnxruntime"),
    Package("insightface", "insightface", ("insightface",), "0.7.3", "insightface"),
)


def version_key(version: str) -> tuple[int, ...]:
    """``"2.1.0+cu121"`` → ``(2, 1, 0)``: the leading numbers, enough for minimum checks."""
    numbers = re.findall(r"\d+", version.split("+")[0].split("-")[0])
    return tuple(int(n) for n in numbers[:4])


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pip_hint(requirement: str) -> str:
    return f'run: "{sys.executable}" -m pip install "{requirement}"'


def _import_error(package: Package) -> str | None:
    """Why ``package`` cannot be imported here, or None (imports it: catches broken installs)."""
    if package.module == "insightface":
        try:
            from .face import _import_insightface

            _import_insightface()
        except ImportError as err:  # numpy itself is missing: face.py cannot be imported
            return f"{type(err).__name__}: {err}"
        except InstantIDError as err:
            return str(err)
        return None
    try:
        importlib.import_module(package.module)
    except Exception as err:  # a broken install raises anything (ImportError, OSError for a DLL, ...)
        return f"{type(err).__name__}: {err}"
    if package.module == "pydantic":
        try:
            importlib.import_module("pydantic.v1")
        except ImportError:
            version = _dist_version("pydantic") or "?"
            if not version.startswith("1."):
                return f"pydantic {version} has no v1 API (pydantic.v1); InstantID needs pydantic 1.10 or 2.x"
    return None


def check_package(
    package: Package, importer: Callable[[Package], str | None] = _import_error
) -> dict[str, Any]:
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
    }
    requirement = f"{package.install}>={package.minimum}" if package.minimum else package.install
    if not installed and importlib.util.find_spec(package.module) is None:
        result["problem"] = f"{package.label} is not installed; {_pip_hint(requirement)}"
        return result
    if len(installed) > 1:
        names = ", ".join(installed)
        result["problem"] = (
            f"{len(installed)} builds of {package.label} are installed ({names}); they share the import name "
            f"'{package.module}' and break each other: uninstall all but one "
            f'("{sys.executable}" -m pip uninstall <name>)'
        )
        return result
    if version and package.minimum and version_key(version) < version_key(package.minimum):
        result["problem"] = (
            f"{package.label} {version} is older than {package.minimum}; {_pip_hint(requirement)}"
        )
        return result
    error = importer(package)
    if error:
        result["problem"] = f"{package.label} cannot be imported ({error})"
        if not installed:
            result["problem"] += f"; {_pip_hint(requirement)}"
    return result


# --------------------------------------------------------------------------------------
# doctor
# --------------------------------------------------------------------------------------


@dataclass
class Report:
    """What ``doctor`` found; ``problems`` maps a section to its sentence (None: fine)."""

    data: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str | None] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return not any(self.problems.values())


def _providers(layout: Layout) -> dict[str, Any]:
    info: dict[str, Any] = {"requested": layout.providers, "available": [], "used": [], "problem": None}
    try:
        import onnxruntime

        from .face import resolve_providers

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


def _identities(layout: Layout) -> list[dict[str, Any]]:
    from .identity import IdentityStore

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
    report.data["python"] = {"version": platform.python_version(), "executable": sys.executable}
    report.data["layout"] = layout.to_json()
    packages = [check_package(p) for p in PACKAGES]
    report.data["packages"] = packages
    for package in packages:
        report.problems[f"package {package['name']}"] = package["problem"]

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
        report.data["identities"] = _identities(layout)
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
    identities = data.get("identities") or []
    if not identities:
        w("  none yet\n")
    for item in identities:
        if item.get("problem"):
            w(f"  warn  {item['problem']}\n")
        else:
            w(f"  ok    {item['name']} ({item['source_count']} photo(s), {item['created'] or 'no date'})\n")

    count = sum(1 for p in report.problems.values() if p)
    if report.ready:
        w("\nReady: InstantID has everything it needs.\n")
    else:
        w(f"\nNot ready: {count} problem{'s' if count > 1 else ''} above (FAIL).\n")


# --------------------------------------------------------------------------------------
# analyze and identities
# --------------------------------------------------------------------------------------


def _analyzer(layout: Layout) -> Any:
    from .face import FaceAnalyzer

    return FaceAnalyzer(find_root(layout.insightface_roots), providers=layout.providers)


def _read_image(path: Path) -> Any:
    from .images import decode_image

    try:
        data = path.read_bytes()
    except OSError as err:
        msg = f"The image '{path}' cannot be read ({err.strerror or err})."
        raise InvalidInputError(msg) from err
    try:
        return decode_image(data)
    except InvalidInputError as err:
        msg = f"'{path}': {err}"
        raise InvalidInputError(msg) from err


def analyze(
    layout: Layout, image_path: Path, choice: str, index: int, out_path: Path | None
) -> dict[str, Any]:
    """Faces left to right, the chosen one, and the keypoint image written to ``out_path``."""
    from .face import choose_face
    from .keypoints import draw_kps

    image = _read_image(image_path)
    analyzer = _analyzer(layout)
    label = f"'{image_path}'"
    faces = analyzer.analyze(image, label=label)
    if not faces:
        analyzer.analyze_one(image, label=label)  # raises NoFaceError with its advice
    chosen_face = choose_face(faces, choice, index, label=label)  # type: ignore[arg-type]
    chosen = next(i for i, face in enumerate(faces) if face is chosen_face)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        draw_kps(image.size, chosen_face.kps).save(out_path)
    return {
        "image": str(image_path),
        "width": image.width,
        "height": image.height,
        "faces": [
            {
                "index": i,
                "bbox": [round(float(v), 2) for v in face.bbox],
                "kps": [[round(float(x), 2), round(float(y), 2)] for x, y in face.kps],
                "score": round(float(face.score), 4),
                "area": round(float(face.area), 1),
            }
            for i, face in enumerate(faces)
        ],
        "chosen": chosen,
        "face_choice": choice,
        "kps_image": None if out_path is None else str(out_path),
    }


def print_analysis(result: dict[str, Any], out: TextIO) -> None:
    faces = result["faces"]
    plural = "s" if len(faces) > 1 else ""
    size = f"{result['width']}x{result['height']}"
    out.write(f"{result['image']}: {size}, {len(faces)} face{plural} (left to right)\n")
    for face in faces:
        x1, y1, x2, y2 = face["bbox"]
        mark = (
            f"  <- used ({result['face_choice'].replace('_', ' ')})"
            if face["index"] == result["chosen"]
            else ""
        )
        box = f"({x1:.0f}, {y1:.0f})-({x2:.0f}, {y2:.0f})"
        out.write(f"  [{face['index']}] box {box}, score {face['score']:.3f}{mark}\n")
    if result["kps_image"]:
        out.write(f"Keypoint image of face {result['chosen']}: {result['kps_image']}\n")


def identity_save(
    layout: Layout, name: str, images: Sequence[Path], choice: str, index: int, overwrite: bool
) -> dict[str, Any]:
    from .identity import Identity, IdentityStore

    store = IdentityStore(layout.identity_dir)
    target = store.path_for(name)
    if not overwrite and target.exists():  # say so before the slow part
        msg = f"An identity named '{target.stem}' already exists; choose another name or add --overwrite."
        raise InvalidInputError(msg)
    analyzer = _analyzer(layout)
    faces, sizes = [], []
    for path in images:
        image = _read_image(path)
        faces.append(analyzer.analyze_one(image, choice, index, label=f"'{path}'"))  # type: ignore[arg-type]
        sizes.append(image.size)
    identity = Identity.from_faces(faces, sizes, name=name)
    saved = store.save(name, identity, overwrite=overwrite)
    return {
        "name": saved.stem,
        "file": str(saved),
        "source_count": identity.source_count,
        "created": identity.created,
    }


# --------------------------------------------------------------------------------------
# Arguments and main
# --------------------------------------------------------------------------------------


def _face_choice(value: str) -> str:
    normalized = "_".join(value.strip().lower().replace("-", " ").split())
    if normalized not in FACE_CHOICES:
        msg = f"choose from {', '.join(FACE_CHOICES)}"
        raise argparse.ArgumentTypeError(msg)
    return normalized


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The shared options, accepted before or after the command."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=default,
        help="the WebUI's models folder (default: ./models, else the WebUI this extension is installed in)",
    )
    parser.add_argument(
        "--insightface-dir",
        type=Path,
        default=default,
        help="a folder holding models/antelopev2 (searched before <models>/insightface)",
    )
    parser.add_argument(
        "--providers",
        default=argparse.SUPPRESS if suppress else "cpu",
        help="ONNX Runtime providers for face analysis: cpu (default), cuda, rocm, coreml or provider names",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print machine-readable JSON",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="InstantID outside the WebUI: check the install, analyse faces, manage identities.",
    )
    _common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    doctor_cmd = commands.add_parser(
        "doctor", help="check packages, models and face models; exit 1 if not ready"
    )
    _common(doctor_cmd, suppress=True)
    doctor_cmd.add_argument(
        "--hashes", action="store_true", help="also show each model's short SHA-256 (slow)"
    )
    doctor_cmd.add_argument(
        "--hash-cache", type=Path, help="keep computed hashes in this JSON file (created if missing)"
    )

    analyze_cmd = commands.add_parser(
        "analyze", help="find the faces in an image and draw the keypoint image"
    )
    _common(analyze_cmd, suppress=True)
    analyze_cmd.add_argument("image", type=Path)
    _face_options(analyze_cmd)
    analyze_cmd.add_argument("--out", type=Path, help="write the chosen face's keypoint image (PNG) here")

    identity_cmd = commands.add_parser(
        "identity", help="saved identities (the WebUI's models/instantid/identities)"
    )
    identity_commands = identity_cmd.add_subparsers(dest="identity_command", metavar="ACTION", required=True)
    save_cmd = identity_commands.add_parser(
        "save", help="average the faces of one person's photos under NAME"
    )
    _common(save_cmd, suppress=True)
    save_cmd.add_argument("name")
    save_cmd.add_argument("images", type=Path, nargs="+")
    _face_options(save_cmd)
    save_cmd.add_argument("--overwrite", action="store_true", help="replace an identity of the same name")
    list_cmd = identity_commands.add_parser("list", help="list the saved identities")
    _common(list_cmd, suppress=True)
    return parser


def _face_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--face-choice",
        type=_face_choice,
        default="largest",
        help="which face of a group photo: largest (default), index, highest_score",
    )
    parser.add_argument(
        "--face-index",
        type=int,
        default=0,
        help="with --face-choice index: faces counted from the left, from 0",
    )


def _emit(args: argparse.Namespace, out: TextIO, data: Any, text: Callable[[TextIO], None]) -> None:
    if args.json:
        json.dump(data, out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        text(out)


def run(args: argparse.Namespace, out: TextIO) -> int:
    layout = make_layout(args.models_dir, args.insightface_dir, args.providers)
    if args.command == "doctor":
        if args.hash_cache is not None:
            set_hash_store(JsonHashStore(args.hash_cache))
        try:
            report = doctor(layout, with_hashes=args.hashes)
        finally:
            if args.hash_cache is not None:
                set_hash_store(None)
        data = {**report.data, "ready": report.ready, "problems": report.problems}
        _emit(args, out, data, lambda o: print_doctor(report, o))
        return EXIT_OK if report.ready else EXIT_PROBLEM
    if args.command == "analyze":
        result = analyze(layout, args.image, args.face_choice, args.face_index, args.out)
        _emit(args, out, result, lambda o: print_analysis(result, o))
        return EXIT_OK
    if args.identity_command == "save":
        saved = identity_save(
            layout, args.name, args.images, args.face_choice, args.face_index, args.overwrite
        )
        _emit(
            args,
            out,
            saved,
            lambda o: o.write(
                f"Saved identity '{saved['name']}' from {saved['source_count']} photo(s): {saved['file']}\n"
            ),
        )
        return EXIT_OK
    items = _identities(layout)
    _emit(
        args,
        out,
        {"identity_dir": str(layout.identity_dir), "identities": items},
        lambda o: _print_list(items, layout, o),
    )
    return EXIT_OK


def _print_list(items: list[dict[str, Any]], layout: Layout, out: TextIO) -> None:
    if not items:
        out.write(f"No saved identities in {layout.identity_dir}\n")
    for item in items:
        if item.get("problem"):
            out.write(f"{item['name']}: {item['problem']}\n")
        else:
            out.write(f"{item['name']}: {item['source_count']} photo(s), saved {item['created'] or '-'}\n")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one command; returns the exit code (0 fine, 1 a problem, 2 bad arguments)."""
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=err)
    try:
        return run(args, out)
    except InstantIDError as error:
        err.write(f"error: {error}\n")
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        return 130
