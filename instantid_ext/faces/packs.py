"""The insightface face-model packs the extension knows, and where to find them.

``antelopev2`` (SCRFD-10G detector + glintr100, an ArcFace ResNet-100 trained on Glint360K) is
the pack InstantID was trained on: its embedding conditions every generation, and
:mod:`.antelopev2` checks its layout in detail. ``buffalo_l`` (the same SCRFD-10G detector +
w600k_r50, an ArcFace ResNet-50 trained on WebFace600K) is optional: when it is installed, the
likeness score (:mod:`.likeness`) uses it as a second recognizer that took no part in the
generation. Both follow insightface's layout ``<root>/models/<pack>/*.onnx``, in the same roots.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFileError
from . import antelopev2 as av2

logger = logging.getLogger(__name__)

RootLike = str | Path

BUFFALO_HINT = (
    "buffalo_l is insightface's default pack: 'buffalo_l.zip' from the insightface GitHub releases, "
    "which insightface itself unpacks into '~/.insightface/models/buffalo_l'; copying that folder works."
)


@dataclass(frozen=True)
class FacePack:
    """One insightface pack: the two files the extension loads from ``<root>/models/<name>``."""

    name: str
    detector: str
    recognizer: str
    download_hint: str

    @property
    def files(self) -> tuple[str, str]:
        return (self.detector, self.recognizer)

    @property
    def label(self) -> str:
        """Pack and recognizer, e.g. ``"antelopev2 (glintr100)"`` (says which network scored)."""
        return f"{self.name} ({Path(self.recognizer).stem})"

    def folder(self, root: RootLike) -> Path:
        """Where insightface reads this pack for ``root``."""
        return Path(root).expanduser() / "models" / self.name


ANTELOPEV2 = FacePack(av2.PACK_NAME, av2.DETECTOR_FILE, av2.RECOGNIZER_FILE, av2.DOWNLOAD_HINT)
BUFFALO_L = FacePack("buffalo_l", "det_10g.onnx", "w600k_r50.onnx", BUFFALO_HINT)


def _problem(root: Path, pack: FacePack) -> str | None:
    """What is wrong with ``pack`` under ``root``; ``None`` when both files are there."""
    target = pack.folder(root)
    missing = [name for name in pack.files if not (target / name).is_file()]
    if not missing:
        return None
    nested = target / pack.name
    if all((nested / name).is_file() for name in pack.files):
        return (
            f"The {pack.name} face models are one folder too deep: the .onnx files are in '{nested}'. "
            f"Move them up one level into '{target}'."
        )
    if not target.is_dir():
        return f"The {pack.name} face models were not found: '{target}' does not exist. {pack.download_hint}"
    return (
        f"The {pack.name} folder '{target}' is incomplete: {' and '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} missing. Put {' and '.join(missing)} into it. "
        f"{pack.download_hint}"
    )


def validate_pack(root: RootLike, pack: FacePack) -> Path:
    """Check ``pack`` under ``root`` and return its folder, or raise :class:`ModelFileError`.

    antelopev2 gets :func:`.antelopev2.validate_root`'s detailed diagnosis; other packs the
    same file checks (present, not empty, not a Git LFS pointer).
    """
    if pack == ANTELOPEV2:
        return av2.validate_root(root)
    root = Path(root).expanduser()
    problem = _problem(root, pack)
    if problem is not None:
        raise ModelFileError(problem)
    target = pack.folder(root)
    av2.check_file_contents(target, pack.files, pack.name, pack.download_hint)
    return target.resolve()


_WARNED: set[str] = set()
_WARNED_LOCK = threading.Lock()


def find_optional_pack(candidates: Iterable[RootLike | None], pack: FacePack) -> tuple[Path | None, str]:
    """The first candidate root holding a usable ``pack``, for packs the extension can do without.

    Returns ``(root, "")`` when found, ``(None, "")`` when no candidate has the pack's folder
    (not installed: nothing to report), and ``(None, problem)`` when a folder is there but
    unusable, so the caller can say why it fell back (each problem is also logged once).
    """
    problems: list[str] = []
    for candidate in candidates:
        if candidate is None or str(candidate).strip() == "":
            continue
        root = Path(candidate).expanduser()
        target = pack.folder(root)
        if not target.is_dir():
            continue
        try:
            validate_pack(root, pack)
        except ModelFileError as exc:
            problems.append(str(exc))
            continue
        return root.resolve(), ""
    if problems:
        with _WARNED_LOCK:
            first = problems[0] not in _WARNED
            _WARNED.add(problems[0])
        if first:
            logger.warning("The optional %s face models cannot be used: %s", pack.name, problems[0])
        return None, problems[0]
    return None, ""
