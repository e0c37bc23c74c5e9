"""The exceptions the extension raises, written for the person using it.

Every message says what went wrong, on which input, and what to do about it, so the
WebUI glue can show it as-is (one console line, a UI error, an API 422) instead of a
traceback.
"""

from __future__ import annotations


class InstantIDError(Exception):
    """Base class: ``str(err)`` is a complete, user-facing sentence."""


class NoFaceError(InstantIDError):
    """No face could be detected in an input image."""


class ModelFileError(InstantIDError):
    """A model file or folder is missing, misplaced or unreadable."""


class IncompatibleModelError(InstantIDError):
    """A file or a loaded model is of the wrong kind (e.g. SD1.5 instead of SDXL)."""


class InvalidInputError(InstantIDError):
    """An argument or an image given to the extension is not usable."""


class DependencyError(InstantIDError):
    """A Python package or a host extension that InstantID needs is missing or too old."""
