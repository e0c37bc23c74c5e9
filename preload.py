"""Command-line flags of InstantID, added to the WebUI's parser before it parses the command line.

The WebUI calls ``preload(parser)`` from ``script_loading.preload_extensions`` while it builds
``shared.cmd_opts``, before ``modules.shared`` exists; so this file imports nothing of the WebUI
and nothing heavy. The values are read later as ``shared.cmd_opts.instantid_*``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PROVIDER_ALIASES = ("cpu", "cuda", "rocm", "coreml")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def folder(value: str) -> str:
    """An absolute path (relative ones are taken from the current folder, like the WebUI's own flags)."""
    if not value.strip():
        msg = "expected a folder, got an empty value"
        raise argparse.ArgumentTypeError(msg)
    return str(Path(value).expanduser().absolute())


def providers(value: str) -> str:
    """A comma-separated list of ONNX Runtime providers, normalized: ``"CUDA, cpu"`` → ``"cuda,cpu"``.

    Accepts the short names in ``PROVIDER_ALIASES`` (any case) and full ONNX Runtime names such as
    ``DmlExecutionProvider``; the order is the order of preference, repeats are dropped.
    """
    chosen: list[str] = []
    for item in value.split(","):
        name = item.strip()
        if not name:
            continue
        if name.lower() in PROVIDER_ALIASES:
            name = name.lower()
        elif not (name.endswith("ExecutionProvider") and name.isidentifier()):
            msg = (
                f"unknown provider {name!r}; use a comma-separated list of {', '.join(PROVIDER_ALIASES)} "
                "or ONNX Runtime provider names such as CUDAExecutionProvider"
            )
            raise argparse.ArgumentTypeError(msg)
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        msg = f"expected at least one provider out of {', '.join(PROVIDER_ALIASES)}"
        raise argparse.ArgumentTypeError(msg)
    return ",".join(chosen)


def log_level(value: str) -> str:
    return value.strip().upper()


def preload(parser: argparse.ArgumentParser) -> None:
    """Add the ``--instantid-*`` flags to the WebUI's parser."""
    group = parser.add_argument_group("InstantID")
    group.add_argument(
        "--instantid-models-dir",
        type=folder,
        default=None,
        metavar="DIR",
        help="folder with the IdentityNet (ControlNet) model and ip-adapter.bin "
        "(default: <models dir>/instantid)",
    )
    group.add_argument(
        "--instantid-insightface-dir",
        type=folder,
        default=None,
        metavar="DIR",
        help="insightface root folder, which holds models/antelopev2/*.onnx "
        "(default: <models dir>/insightface)",
    )
    group.add_argument(
        "--instantid-providers",
        type=providers,
        default="cpu",
        metavar="LIST",
        help="ONNX Runtime providers for the face models, comma-separated, in order "
        f"of preference: {', '.join(PROVIDER_ALIASES)} (default: cpu; the CPU is always the fallback)",
    )
    group.add_argument(
        "--instantid-loglevel",
        type=log_level,
        choices=LOG_LEVELS,
        default="INFO",
        help="console log level (default: INFO)",
    )
