"""No import cycle in our packages (``tether``, ``webhooks``, ``integrations``), within one or
across them.

An import inside a function to dodge a cycle is still a cycle, so every import counts wherever it
is written; only those under ``if TYPE_CHECKING:`` (never run) are left out. The graph is read
from the source with ``ast``, without importing anything, over every package at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The packages the distribution ships (pyproject.toml's ``packages.find``).
PACKAGES = ("tether", "webhooks", "integrations")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every module of ``packages`` under ``root`` but migrations, by dotted name."""
    return {
        module_name(path, root): path
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
        if "migrations" not in path.parts
    }


def type_checking_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skipped.update(id(n) for n in ast.walk(child))
    return skipped


def imported_names(module: str, is_package: bool, node: ast.AST) -> list[str]:
    """The dotted names an import statement may load (a ``from`` import may name modules)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        origin = ".".join(base + ([node.module] if node.module else []))
    else:
        origin = node.module or ""
    return [origin] + [f"{origin}.{alias.name}" for alias in node.names]


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package's modules it imports (at module level or in a function)."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {module: set() for module in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        skipped = type_checking_only(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in skipped:
                for name in imported_names(module, path.name == "__init__.py", node):
                    target = known(name)
                    if target is not None and target != module:
                        graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_our_packages_have_no_import_cycle():
    modules = package_modules()
    assert {name.split(".")[0] for name in modules} == set(PACKAGES)
    assert cycles(import_graph(modules)) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_is_read(package):
    """The walk sees each package's modules (a renamed package would otherwise pass unseen)."""
    modules = package_modules(packages=(package,))
    assert package in modules and len(modules) > 3
    assert not [name for name in modules if ".migrations" in name]


def test_the_check_sees_a_cycle_through_an_import_inside_a_function(tmp_path):
    """The checker itself: a function-level import closing a loop is found; one under
    ``TYPE_CHECKING`` is not."""
    (tmp_path / "a.py").write_text("from .b import thing\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import other\n")
    (tmp_path / "c.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from .a import x\n"
        "if TYPE_CHECKING:\n"
        "    from .d import y\n"
    )
    (tmp_path / "d.py").write_text("from .c import z\n")
    modules = {f"pkg.{name}": tmp_path / f"{name}.py" for name in "abcd"}
    assert cycles(import_graph(modules)) == [["pkg.a", "pkg.b"]]


def test_the_check_sees_a_cycle_across_packages_and_through_a_package(tmp_path):
    """Across packages, and through ``from . import module`` (which runs the package's
    ``__init__`` first), as the real tree is read."""
    for package, files in {
        "core": {"__init__.py": "", "base.py": "def f():\n    from app import jobs\n"},
        "app": {
            "__init__.py": "",
            "jobs.py": "from . import work\n",
            "work.py": "from core.base import f\n",
        },
    }.items():
        (tmp_path / package).mkdir()
        for name, text in files.items():
            (tmp_path / package / name).write_text(text)
    graph = import_graph(package_modules(tmp_path, ("core", "app")))
    assert cycles(graph) == [["app.jobs", "app.work", "core.base"]]
