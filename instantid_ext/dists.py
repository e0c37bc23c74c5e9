"""The Python distributions InstantID needs, and how their versions are compared.

Shared by ``install.py`` and :mod:`.doctor`. ``install.py`` runs before anything is installed
and must not import this package (that imports torch), so it loads this file by its path:
it uses only the standard library and ``packaging``, which pip and setuptools bring into
every WebUI environment.
"""

from __future__ import annotations

import re

from packaging.specifiers import InvalidSpecifier, Specifier
from packaging.version import InvalidVersion, Version

# Distributions that all install the import package ``onnxruntime``; any one of them will do.
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
# Distributions that all install the import package ``cv2``.
OPENCV_FLAVOURS = (
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
)

_LEADING_RELEASE = re.compile(r"\s*v?(\d+(?:\.\d+)*)")


def release(version: str) -> Version | None:
    """The release a version string names, without pre-release, post, dev or local parts
    (``2.1.2+cu121`` → 2.1.2, ``1.17.0rc1`` → 1.17.0); a build's own suffix (``1.2.3-custom``) is
    read up to its last number. None when it names no release."""
    try:
        return Version(Version(version.strip()).base_version)
    except InvalidVersion:
        match = _LEADING_RELEASE.match(version)
        return None if match is None else Version(match.group(1))


def satisfies(version: str | None, spec: str) -> bool | None:
    """Whether ``version`` meets ``spec`` (``>=1.2,<3``); None when either cannot be read.

    Pre-releases compare as their release, ``~=`` as ``>=``; ``===`` (arbitrary equality) is not
    read.
    """
    if not spec:
        return True
    if version is None:
        return None
    have = release(version)
    if have is None:
        return None
    for clause in spec.split(","):
        text = clause.strip()
        if text.startswith("==="):
            return None
        if text.startswith("~="):
            text = ">=" + text[2:]
        try:
            specifier = Specifier(text)
        except InvalidSpecifier:
            return None
        if not specifier.contains(have, prereleases=True):
            return False
    return True


def older_than(version: str, minimum: str) -> bool:
    """Whether ``version`` is an older release than ``minimum`` (unreadable: not older)."""
    have, want = release(version), release(minimum)
    return have is not None and want is not None and have < want


def newest(versions: list[str]) -> str:
    """The newest of several version strings (an unreadable one counts as the oldest)."""
    return max(versions, key=lambda version: release(version) or Version("0"))
