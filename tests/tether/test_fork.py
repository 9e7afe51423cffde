"""``tether.fork``: the library's one ``os.register_at_fork``; a forked child runs every reset
the apps registered, one failing not stopping the others.

What each app's reset does is tested where its state lives, by forking: the webhooks dispatcher
(tests/webhooks/test_dispatch.py), the integrations HTTP pools
(tests/integrations/test_client_calls.py) and the Stripe clients
(tests/integrations/vendors/test_stripe.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tether import fork

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def register():
    """``fork.after_fork`` for the test: what it registers is cancelled after it (it would run
    in later forks)."""
    registered: list = []

    def register(callback):
        fork.after_fork(callback)
        registered.append(callback)

    yield register
    for callback in registered:
        fork.cancel_after_fork(callback)


def run_in_a_child(path: Path) -> str:
    """Fork; the child exits at once. What the child's resets wrote to ``path``."""
    pid = os.fork()
    if pid == 0:  # the child: after_in_child hooks have run already
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return path.read_text() if path.exists() else ""


def test_a_child_runs_every_registered_reset_in_order(register, tmp_path):
    log = tmp_path / "resets"

    def write(text):
        def reset():
            with log.open("a") as out:
                out.write(text)

        return reset

    def broken():
        raise RuntimeError("this reset fails")

    first = write("first;")
    register(first)
    register(broken)
    register(write("second;"))
    register(first)  # once, however often registered

    assert run_in_a_child(log) == "first;second;"
    assert log.read_text() == "first;second;"  # and nothing ran in this process


def test_a_cancelled_reset_no_longer_runs_in_a_child(register, tmp_path):
    log = tmp_path / "resets"

    def kept():
        with log.open("a") as out:
            out.write("kept;")

    def cancelled():
        with log.open("a") as out:
            out.write("cancelled;")

    register(cancelled)
    register(kept)
    fork.cancel_after_fork(cancelled)
    fork.cancel_after_fork(cancelled)  # nothing left to cancel
    assert run_in_a_child(log) == "kept;"


def test_only_the_core_registers_at_fork():
    sources = [
        path
        for package in ("tether", "webhooks", "integrations")
        for path in (ROOT / package).rglob("*.py")
        if "os.register_at_fork(" in path.read_text(encoding="utf-8")
    ]
    assert [str(path.relative_to(ROOT)) for path in sources] == ["tether/fork.py"]
