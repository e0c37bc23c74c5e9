"""The import rules of docs/architecture.md hold in the code, and the doc's table is this one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "instantid_ext"

HOST_MODULES = frozenset({"modules", "scripts", "modules_forge", "ldm_patched", "backend", "launch"})
HOST_FRAMEWORKS = frozenset({"gradio", "fastapi"})

#: part -> the parts it may import ("version": the package's ``__version__``; "host": the host's
#: modules and UI frameworks). The same table stands in docs/architecture.md.
RULES: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "dists": frozenset(),
    "images": frozenset({"errors"}),
    "models": frozenset({"errors"}),
    "method": frozenset({"errors", "images", "models"}),
    "faces": frozenset({"errors", "images"}),
    "args": frozenset({"errors", "images", "models", "method", "faces"}),
    "job": frozenset({"errors", "images", "models", "method", "faces", "args"}),
    "doctor": frozenset({"errors", "images", "models", "method", "faces", "dists", "version"}),
    "cli": frozenset({"errors", "images", "models", "method", "faces", "doctor"}),
    "forge": frozenset({"errors", "method", "host"}),
    "webui": frozenset(
        {"errors", "images", "models", "method", "faces", "args", "job", "forge", "version", "host"}
    ),
}
#: The package's front door and ``python -m`` entry, which only re-export.
ENTRY_POINTS = {"__init__": frozenset({"errors", "faces", "method"}), "__main__": frozenset({"cli"})}


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _package_of(path: Path) -> list[str]:
    parts = ["instantid_ext", *path.relative_to(PACKAGE).with_suffix("").parts]
    return parts[:-1]


def imported_parts(path: Path) -> set[str]:
    """The parts of the package and the host that ``path`` imports (at any depth of its code)."""
    package = _package_of(path)
    targets: list[list[str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets += [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            targets.append(str(node.module).split("."))
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1]
            if node.module:
                targets.append(base + node.module.split("."))
            else:
                targets += [[*base, alias.name] for alias in node.names]
    found = set()
    for target in targets:
        if target[0] in HOST_MODULES | HOST_FRAMEWORKS:
            found.add("host")
        elif target[0] == "instantid_ext" and len(target) > 1:
            found.add("version" if target[1] == "__version__" else target[1])
    return found - {part_of(path)}


def test_every_part_imports_only_what_its_rule_allows() -> None:
    rules = {**RULES, **ENTRY_POINTS}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = part_of(path)
        assert part in rules, f"{path.relative_to(ROOT)} belongs to no part of docs/architecture.md"
        extra = imported_parts(path) - rules[part]
        if extra:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(extra)}")
    assert offenders == []


def test_only_a_host_adapter_imports_the_host() -> None:
    adapters = {part for part, allowed in RULES.items() if "host" in allowed}
    assert adapters == {"forge", "webui"}
    for path in PACKAGE.rglob("*.py"):
        if part_of(path) not in adapters:
            assert "host" not in imported_parts(path), path


def test_the_architecture_doc_shows_the_same_table() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Which part may import which", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\w+) \|([^|\n]*)\|$", section, flags=re.MULTILINE)
    table = {
        part: frozenset(n.strip() for n in allowed.split(",") if n.strip())
        for part, allowed in rows
        if part != "part"  # the header
    }
    assert table == RULES


def test_the_readme_links_the_architecture_doc() -> None:
    assert "docs/architecture.md" in (ROOT / "README.md").read_text(encoding="utf-8")
