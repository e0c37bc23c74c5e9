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
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from .doctor import Layout, doctor, identities, make_layout, print_doctor
from .errors import InstantIDError, InvalidInputError
from .faces.antelopev2 import find_root
from .models.file_hashes import JsonHashStore, set_hash_store

PROG = "python -m instantid_ext"
FACE_CHOICES = ("largest", "index", "highest_score")
EXIT_OK, EXIT_PROBLEM = 0, 1


# --------------------------------------------------------------------------------------
# analyze and identities
# --------------------------------------------------------------------------------------


def _analyzer(layout: Layout) -> Any:
    from .faces.analysis import FaceAnalyzer

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
    from .faces.analysis import choose_face
    from .method.keypoints import draw_kps

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
    from .faces.identity import IdentityStore, save_from_photos

    saved, identity = save_from_photos(
        IdentityStore(layout.identity_dir),
        lambda: _analyzer(layout),
        name,
        ((f"'{path}'", _read_image(path)) for path in images),
        face_choice=choice,  # type: ignore[arg-type]
        face_index=index,
        overwrite=overwrite,
        overwrite_hint="add --overwrite",
    )
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
        "--instantid-dir",
        type=Path,
        default=default,
        help="InstantID's folder if the WebUI has --instantid-models-dir (default: <models>/instantid)",
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
    _common(identity_cmd, suppress=True)
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
    layout = make_layout(
        args.models_dir, args.insightface_dir, args.providers, instantid_dir=args.instantid_dir
    )
    if args.command == "doctor":
        if args.hash_cache is not None:
            set_hash_store(JsonHashStore(args.hash_cache))
        try:
            report = doctor(layout, with_hashes=args.hashes)
        finally:
            if args.hash_cache is not None:
                set_hash_store(None)
        data = {**report.data, "ready": report.ready, "problems": report.problems, "notes": report.notes}
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
    items = identities(layout)
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
