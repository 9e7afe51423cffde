"""Layers: neither app imports the other at module level, and the shared core (``tether``)
imports neither; each app may import the core. Read from the source (an ``ast`` walk), so an
import that would only run in a project with both apps installed is caught too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: package -> the packages it must not import at module level.
FORBIDDEN = {
    "webhooks": {"integrations"},
    "integrations": {"webhooks"},
    "tether": {"webhooks", "integrations"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_at_module_level(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import outside functions (class bodies and ``if`` blocks
    count; ``if TYPE_CHECKING:`` blocks do not), relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else []
                name = ".".join([*base, child.module] if child.module else base)
                found.append((child.lineno, name))
            visit(child)

    visit(tree)
    return found


def cross_imports(package: str) -> list[str]:
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        for line, name in imported_at_module_level(path):
            if name.split(".")[0] in FORBIDDEN[package]:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return problems


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_level_import_across_layers(package):
    assert cross_imports(package) == []


def test_the_walk_sees_module_level_imports_only(tmp_path, monkeypatch):
    """The rule itself: module-level and relative imports are seen, function-level and
    ``TYPE_CHECKING`` ones are not."""
    source = tmp_path / "webhooks" / "sample.py"
    source.parent.mkdir()
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import integrations.models\n"
        "from ..integrations import conf\n"
        "if TYPE_CHECKING:\n"
        "    from integrations.breaker import Breaker\n"
        "class Admin:\n"
        "    from integrations.admin import site\n"
        "def later():\n"
        "    from integrations import services\n"
    )
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert [name for _, name in imported_at_module_level(source)] == [
        "typing",
        "integrations.models",
        "integrations",
        "integrations.admin",
    ]
