"""The core package imports without the WebUI, and keeps its public API."""

from __future__ import annotations

from pathlib import Path

from tests.without_webui import run_without_webui

ROOT = Path(__file__).resolve().parents[2]
#: The host modules only a host adapter (``instantid_ext/webui``) may import.
HOSTS = ("modules", "scripts", "modules_forge", "ldm_patched", "backend")


def test_core_imports_with_webui_modules_blocked() -> None:
    result = run_without_webui(
        "import instantid_ext, instantid_ext.args, instantid_ext.models.discovery\n"
        "import instantid_ext.faces.identity, instantid_ext.job.conditioning, instantid_ext.job.lifecycle\n"
        "print(sorted(instantid_ext.__all__)[:3])\n"
    )
    assert result.returncode == 0, result.stderr


def test_public_api_names() -> None:
    import instantid_ext

    for name in ("draw_kps", "load_ip_adapter", "FaceAnalyzer", "IPAdapter"):
        assert callable(getattr(instantid_ext, name))


def test_only_the_host_adapters_touch_the_host() -> None:
    offenders = []
    for path in (ROOT / "instantid_ext").rglob("*.py"):
        if {"webui", "forge"} & set(path.relative_to(ROOT / "instantid_ext").parts):
            continue
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(tuple(f"{verb} {host}" for verb in ("import", "from") for host in HOSTS)):
                offenders.append(f"{path.name}: {stripped}")
    assert offenders == []
