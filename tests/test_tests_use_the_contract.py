"""The suite tests the contract, not the internals: no test reads, writes or calls a private
name (``_something``) of django-tether's own modules, reached through a module or a name
imported from one, nor imports one, nor patches one (by its dotted path or ``setattr``), nor
matches a function (an on-commit callback, say) by a private name. (Objects a test made
itself, e.g. a ``Dispatcher()`` of its own, are not followed; review keeps those honest.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
OURS = ("tether", "webhooks", "integrations", "sandbox_project")
PATCHED_PATH = re.compile(rf"^({'|'.join(OURS)})(\.\w+)*\._[a-z]\w*$")
#: Private-looking names that are Django's documented model API.
DJANGO_PUBLIC = {"_meta", "_default_manager", "_base_manager"}
#: Reaches that are not into our code: (file, expression, why).
ALLOWED = {
    ("conftest.py", "app._pool"): "Celery's own pool on the sandbox's Celery app (broker_down)",
    ("conftest.py", "app.amqp._producer_pool"): "the same, Celery's producer pool",
}


def is_ours(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in OURS


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def violations(source: str) -> list[str]:
    tree = ast.parse(source)
    imported: set[str] = set()  # names bound to our modules or to objects imported from them
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_ours(alias.name):
                    imported.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and is_ours(node.module):
            for alias in node.names:
                if private(alias.name):
                    found.append(f"line {node.lineno}: imports {node.module}.{alias.name}")
                imported.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and private(node.attr)
            and node.attr not in DJANGO_PUBLIC
        ):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in imported:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"setattr", "delattr"}
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in imported
            and isinstance(node.args[1], ast.Constant)
            and private(str(node.args[1].value))
        ):
            found.append(
                f"line {node.lineno}: {node.func.attr} {node.args[0].id}.{node.args[1].value}"
            )
        elif (
            isinstance(node, ast.Compare)
            and any(
                isinstance(side, ast.Attribute) and side.attr in {"__name__", "__qualname__"}
                for side in ast.walk(node)
            )
            and any(
                isinstance(side, ast.Constant) and private(str(side.value))
                for side in ast.walk(node)
            )
        ):
            found.append(f"line {node.lineno}: matches a private function's name")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and PATCHED_PATH.match(node.value)
        ):
            found.append(f"line {node.lineno}: {node.value!r}")
    return found


def test_no_test_reaches_a_private_name_of_ours():
    found = {}
    for path in sorted(TESTS.rglob("*.py")):
        name = str(path.relative_to(TESTS))
        problems = [
            problem
            for problem in violations(path.read_text(encoding="utf-8"))
            if (name, problem.split(": ", 1)[1]) not in ALLOWED
        ]
        if problems:
            found[name] = problems
    assert found == {}


def test_the_rule_sees_each_kind_of_reach():
    source = """
from webhooks import dispatch, storage
from webhooks.queueing import _configured_eager
import integrations.client as client
dispatch.dispatcher._reset()
storage._unprepared_aliases.clear()
client._pools
monkeypatch.setattr("tether.health._checks", {})
monkeypatch.setattr(storage, "_statements", {})
assert [cb for cb in callbacks if cb.func.__name__ == "_send_received"]
dispatch.flush()
stripe._error
"""
    assert sorted(problem.split(": ", 1)[1] for problem in violations(source)) == [
        "'tether.health._checks'",
        "client._pools",
        "dispatch.dispatcher._reset",
        "imports webhooks.queueing._configured_eager",
        "matches a private function's name",
        "setattr storage._statements",
        "storage._unprepared_aliases",
    ]
