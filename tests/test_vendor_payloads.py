"""The vendor payloads exist once in the repository and are read through one helper."""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

import pytest

from tests.vendor import PAYLOADS, vendor_bytes, vendor_json

TESTS = Path(__file__).resolve().parent


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_no_second_copy_of_a_vendor_file_anywhere_in_the_repository():
    ours = {digest(path): path for path in PAYLOADS.rglob("*.json")}
    root = TESTS.parent
    elsewhere = [
        path.relative_to(root)
        for path in root.rglob("*.json")
        if not path.is_relative_to(PAYLOADS)
        and not any(part.startswith(".") or part in {"node_modules", "site"} for part in path.parts)
        and digest(path) in ours
    ]
    assert elsewhere == []


def path_strings(source: str) -> list[str]:
    """The string literals of a module that name a vendor payload's place (not its docstrings:
    saying where the files are is fine)."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and re.search(r"vendor_payloads|vendor-payloads|(^|/)vendor(/|$)", node.value)
    ]


def test_tests_name_the_payloads_only_through_the_helper():
    helper = TESTS / "vendor.py"
    readers = {
        str(path.relative_to(TESTS)): found
        for path in TESTS.rglob("*.py")
        if path not in {helper, Path(__file__)}
        and (found := path_strings(path.read_text(encoding="utf-8")))
    }
    assert readers == {}


def test_the_rule_sees_a_path_of_its_own():
    source = 'VENDOR = Path(__file__).parent / "vendor"\nx = ROOT / "providers/vendor/a.json"\n'
    assert path_strings(source) == ["vendor", "providers/vendor/a.json"]


def test_every_file_says_where_it_comes_from():
    sources = (PAYLOADS / "SOURCES.md").read_text()
    files = sorted(str(path.relative_to(PAYLOADS)) for path in PAYLOADS.rglob("*.json"))
    assert files and [name for name in files if f"`{name}`" not in sources] == []


def test_the_helper_reads_bytes_and_fresh_json():
    assert vendor_bytes("github/ping.payload.json").startswith(b"{")
    first = vendor_json("stripe/event.json")
    first["id"] = "changed"
    assert vendor_json("stripe/event.json")["id"] != "changed"


@pytest.mark.parametrize("name", ["../vendor.py", "/etc/hostname", "stripe/nothing.json", "stripe"])
def test_the_helper_reads_nothing_outside_the_payloads(name):
    with pytest.raises(FileNotFoundError):
        vendor_bytes(name)
