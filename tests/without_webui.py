"""Running a snippet in a fresh interpreter that cannot import the WebUI, its UI or insightface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Top-level modules the snippet's imports are refused.
BLOCKED = ("modules", "scripts", "gradio", "launch", "insightface")


def run_without_webui(code: str) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` from the repository root with :data:`BLOCKED` refused; its output is text."""
    block = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {BLOCKED!r}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    return subprocess.run(
        [sys.executable, "-c", block + code], cwd=ROOT, capture_output=True, text=True, check=False
    )
