"""Fixtures shared by the unit and stand-in host tests."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to reach the network (e.g. an insightface model download) fails the test.

    Attempts are also recorded, because some libraries swallow the error.
    """
    attempts: list[object] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    storage = sys.modules.get("insightface.utils.storage")  # not imported here: that is the code's job
    if storage is not None:
        monkeypatch.setattr(storage, "download_file", refuse)
    yield
    assert attempts == [], f"network access attempted: {attempts}"


@pytest.fixture
def fresh_face_results() -> Iterator[None]:
    """Loaded face models may stay cached between tests (fast); analysis results may not."""
    from instantid_ext.faces import analysis

    analysis._RESULTS.clear()
    yield
    analysis._RESULTS.clear()
