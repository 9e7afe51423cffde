"""``tether.fork``: the library's one ``os.register_at_fork``; a forked child runs every reset
the apps registered, one failing not stopping the others."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from integrations import client
from integrations.vendors import stripe
from tether import fork
from webhooks import dispatch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def callbacks(monkeypatch):
    """The registry, restored after the test (its callbacks would run in later forks)."""
    monkeypatch.setattr(fork, "_callbacks", list(fork._callbacks))
    return fork._callbacks


def run_in_a_child(path: Path) -> str:
    """Fork; the child exits at once. What the child's resets wrote to ``path``."""
    pid = os.fork()
    if pid == 0:  # the child: after_in_child hooks have run already
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return path.read_text() if path.exists() else ""


def test_a_child_runs_every_registered_reset_in_order(callbacks, tmp_path):
    log = tmp_path / "resets"

    def write(text):
        def reset():
            with log.open("a") as out:
                out.write(text)

        return reset

    def broken():
        raise RuntimeError("this reset fails")

    first = write("first;")
    fork.after_fork(first)
    fork.after_fork(broken)
    fork.after_fork(write("second;"))
    fork.after_fork(first)  # once, however often registered

    assert run_in_a_child(log) == "first;second;"
    assert log.read_text() == "first;second;"  # and nothing ran in this process


def test_the_apps_register_their_resets():
    assert dispatch.dispatcher._reset in fork._callbacks
    assert client._forget_pools_after_fork in fork._callbacks
    assert stripe._forget_clients_after_fork in fork._callbacks


def test_only_the_core_registers_at_fork():
    sources = [
        path
        for package in ("tether", "webhooks", "integrations")
        for path in (ROOT / package).rglob("*.py")
        if "os.register_at_fork(" in path.read_text(encoding="utf-8")
    ]
    assert [str(path.relative_to(ROOT)) for path in sources] == ["tether/fork.py"]
