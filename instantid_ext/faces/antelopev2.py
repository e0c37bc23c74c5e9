"""Find and check the insightface ``antelopev2`` face-model pack before insightface sees it.

insightface's ``FaceAnalysis(name="antelopev2", root=R)`` loads ``R/models/antelopev2/*.onnx``.
When that folder is missing it tries to download a zip that no longer exists, and when the
folder exists but holds no detector (empty, or the well-known nested
``antelopev2/antelopev2/`` left by unzipping) it fails with a bare ``AssertionError``. So the
extension checks the layout itself and explains the fix, naming the exact path, and never lets
insightface reach the network.

Only the detector and the recognizer are used by InstantID; the other three files of the
real pack are optional.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from ..errors import ModelFileError

logger = logging.getLogger(__name__)

PACK_NAME = "antelopev2"
DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNIZER_FILE = "glintr100.onnx"
REQUIRED_FILES: tuple[str, ...] = (DETECTOR_FILE, RECOGNIZER_FILE)
OPTIONAL_FILES: tuple[str, ...] = ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx")
ALL_FILES: tuple[str, ...] = REQUIRED_FILES + OPTIONAL_FILES
DOWNLOAD_HINT = (
    "The files are available for example from the Hugging Face repository "
    "'DIAMONIK7777/antelopev2' (the source sd-webui-controlnet uses)."
)

_LFS_POINTER_PREFIX = b"version https://git-lfs"
_ROLES = {DETECTOR_FILE: "face detector", RECOGNIZER_FILE: "face recognizer"}


RootLike = str | Path


def pack_dir(root: RootLike) -> Path:
    """The folder insightface reads for ``root``: ``<root>/models/antelopev2``."""
    return Path(root).expanduser() / "models" / PACK_NAME


def _all_files_text() -> str:
    return ", ".join(ALL_FILES)


def _onnx_names(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".onnx")
    except OSError:
        return []


def _has_required(folder: Path) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in REQUIRED_FILES)


def check_file_contents(
    folder: Path,
    files: Iterable[str] = REQUIRED_FILES,
    pack: str = PACK_NAME,
    hint: str = DOWNLOAD_HINT,
) -> None:
    """Catch the two broken-download cases that look like files: empty files and Git LFS pointers.

    ``files``, ``pack`` and ``hint`` let other insightface packs (see :mod:`.packs`) share
    the check; the defaults are this pack's.
    """
    for name in files:
        path = folder / name
        try:
            size = path.stat().st_size
            head = path.read_bytes()[:64] if size < 2048 else b""
        except OSError as exc:
            msg = f"The {pack} model file '{path}' cannot be read ({exc}). Check its permissions."
            raise ModelFileError(msg) from exc
        if size == 0:
            msg = (
                f"The {pack} model file '{path}' is empty (0 bytes): the download was interrupted. "
                f"Download {name} again and replace it. {hint}"
            )
            raise ModelFileError(msg)
        if head.startswith(_LFS_POINTER_PREFIX):
            msg = (
                f"The {pack} model file '{path}' is a Git LFS pointer, not the model "
                "(the repository was cloned without Git LFS). Download the real file "
                f"({name}, several MB) and replace it. {hint}"
            )
            raise ModelFileError(msg)


def _diagnose(root: Path) -> str | None:
    """Explain what is wrong with the pack under ``root``; ``None`` when it is usable."""
    target = pack_dir(root)
    if _has_required(target):
        return None
    nested = target / PACK_NAME
    if _has_required(nested) or (nested.is_dir() and _onnx_names(nested)):
        return (
            f"The antelopev2 face models are one folder too deep: the .onnx files are in '{nested}'. "
            f"Move them up one level into '{target}' (so that '{target / DETECTOR_FILE}' exists) "
            "and delete the empty inner folder."
        )
    present = _onnx_names(target) if target.is_dir() else []
    if not present:
        for archive in (
            target.with_suffix(".zip"),
            target / f"{PACK_NAME}.zip",
            root / f"{PACK_NAME}.zip",
        ):
            if archive.is_file():
                return (
                    f"The antelopev2 face models were downloaded as '{archive}' but not unpacked. "
                    f"Unzip it so that the .onnx files end up directly in '{target}' "
                    f"(for example '{target / DETECTOR_FILE}'), not in a sub-folder."
                )
    if target.is_dir():
        missing = [name for name in REQUIRED_FILES if not (target / name).is_file()]
        if present:
            which = " and ".join(f"{name} (the {_ROLES[name]})" for name in missing)
            return (
                f"The antelopev2 folder '{target}' is incomplete: {which} "
                f"{'is' if len(missing) == 1 else 'are'} missing. Put "
                f"{' and '.join(missing)} into '{target}'. {DOWNLOAD_HINT}"
            )
        return (
            f"The antelopev2 folder '{target}' is empty. Put the 5 files of the antelopev2 pack "
            f"({_all_files_text()}) into it; only {DETECTOR_FILE} and {RECOGNIZER_FILE} are required. "
            f"{DOWNLOAD_HINT}"
        )
    for stray in (root / PACK_NAME, root / "models", root):
        if _has_required(stray):
            return (
                f"The antelopev2 face models are in '{stray}', but insightface looks in '{target}'. "
                f"Move the .onnx files into '{target}'."
            )
    return None  # absent: reported by the caller, which knows every place searched


def validate_root(root: RootLike) -> Path:
    """Check one root and return its pack folder, or raise :class:`ModelFileError` saying how to fix it."""
    root = Path(root).expanduser()
    problem = _diagnose(root)
    if problem is not None:
        raise ModelFileError(problem)
    target = pack_dir(root)
    if not target.is_dir():
        raise ModelFileError(_absent_message([root]))
    check_file_contents(target)
    return target.resolve()


def _dedupe(candidates: Iterable[RootLike | None]) -> list[Path]:
    seen: set[str] = set()
    roots: list[Path] = []
    for candidate in candidates:
        if candidate is None or str(candidate).strip() == "":
            continue
        path = Path(candidate).expanduser()
        key = str(path.resolve())
        if key not in seen:
            seen.add(key)
            roots.append(path)
    return roots


def _absent_message(roots: list[Path]) -> str:
    searched = "; ".join(f"'{pack_dir(r)}'" for r in roots) or "(no folder was configured)"
    where = f"'{pack_dir(roots[0])}'" if roots else "'<WebUI>/models/insightface/models/antelopev2'"
    return (
        f"The insightface antelopev2 face models were not found. Searched: {searched}. "
        f"Create the folder {where} and put the 5 files of the antelopev2 pack ({_all_files_text()}) "
        f"directly into it; only {DETECTOR_FILE} and {RECOGNIZER_FILE} are required. {DOWNLOAD_HINT}"
    )


def find_root(candidates: Iterable[RootLike | None]) -> Path:
    """Return the first candidate root (the folder holding ``models/antelopev2``) with a usable pack.

    Candidates are tried in order; ``None`` and duplicates are skipped. When none works, the
    error describes the most actionable problem found (a layout mistake beats "absent") and
    lists every place searched.
    """
    roots = _dedupe(candidates)
    problems: list[str] = []
    for root in roots:
        try:
            validate_root(root)
        except ModelFileError as exc:
            if pack_dir(root).exists() or _diagnose(root) is not None:
                problems.append(str(exc))
            continue
        logger.debug("Using the antelopev2 pack in %s", pack_dir(root))
        return root.resolve()
    if problems:
        others = "; ".join(f"'{pack_dir(r)}'" for r in roots)
        msg = f"{problems[0]} (Places searched: {others}.)"
        raise ModelFileError(msg)
    raise ModelFileError(_absent_message(roots))


def candidate_roots(
    user_root: RootLike | None = None,
    webui_models_dir: RootLike | None = None,
    controlnet_annotator_dir: RootLike | None = None,
) -> list[Path]:
    """The usual places, most specific first.

    A root the user configured comes first (an explicit choice wins), then the WebUI's
    ``models/insightface`` and sd-webui-controlnet's ``<annotator>/insightface``, which already
    holds the pack for anyone who used ControlNet's InstantID preprocessor.
    """
    return _dedupe(
        [
            user_root,
            Path(webui_models_dir) / "insightface" if webui_models_dir else None,
            Path(controlnet_annotator_dir) / "insightface" if controlnet_annotator_dir else None,
        ]
    )


def pack_status(candidates: Iterable[RootLike | None]) -> list[dict[str, object]]:
    """Per candidate root: where it looks, which files are there and what is wrong (JSON-ready)."""
    status: list[dict[str, object]] = []
    for root in _dedupe(candidates):
        target = pack_dir(root)
        found = [name for name in ALL_FILES if (target / name).is_file()]
        problem: str | None
        try:
            validate_root(root)
            problem = None
        except ModelFileError as exc:
            problem = str(exc)
        status.append(
            {
                "root": str(root),
                "pack_dir": str(target),
                "exists": target.is_dir(),
                "usable": problem is None,
                "found": found,
                "missing_required": [n for n in REQUIRED_FILES if n not in found],
                "missing_optional": [n for n in OPTIONAL_FILES if n not in found],
                "problem": problem,
            }
        )
    return status
