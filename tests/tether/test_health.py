"""``tether.health``: the apps' checks, registered in ``ready()``, make one report; the
database is reported once, from the checks that read it; only critical checks and the database
fail the view. (The view's answers with both apps are in tests/test_health.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import OperationalError

from tether import health


class Check(health.HealthCheck):
    def __init__(self, name: str, result: Any = None, *, critical=False, reads_database=False):
        self.name, self.result = name, result
        self.critical, self.reads_database = critical, reads_database
        self.runs = 0

    def run(self) -> dict[str, Any]:
        self.runs += 1
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    def unreadable(self) -> dict[str, Any]:
        return {"count": None}


@pytest.fixture
def checks():
    """An empty registry for the test; the apps' checks come back after it, in their order."""
    saved = health.registered()
    for check in saved:
        health.unregister(check.name)
    yield
    for check in health.registered():
        health.unregister(check.name)
    for check in saved:
        health.register(check)


def test_the_apps_register_their_checks_in_order():
    assert [check.name for check in health.registered()] == [
        "broker",
        "webhooks",
        "circuit_breakers",
    ]


def test_unregister_drops_a_check_from_the_report(checks):
    health.register(Check("queue", {"ok": True}, critical=True))
    health.register(Check("backlog", {"count": 3}))
    health.unregister("queue")
    health.unregister("not-there")  # nothing to drop
    assert [check.name for check in health.registered()] == ["backlog"]
    assert health.health_report() == (True, {"status": "ok", "backlog": {"count": 3}})


def test_entries_in_registration_order_after_the_database(checks):
    health.register(Check("queue", {"ok": True}, critical=True))
    health.register(Check("backlog", {"count": 3}, reads_database=True))
    health.register(Check("queue", {"ok": True, "replaced": True}, critical=True))
    healthy, report = health.health_report()
    assert healthy
    assert list(report) == ["status", "database", "queue", "backlog"]
    assert report == {
        "status": "ok",
        "database": {"ok": True},
        "queue": {"ok": True, "replaced": True},
        "backlog": {"count": 3},
    }


def test_no_database_entry_when_no_check_reads_it(checks):
    health.register(Check("queue", {"ok": True}, critical=True))
    assert health.health_report() == (True, {"status": "ok", "queue": {"ok": True}})


def test_a_failing_critical_check_is_unhealthy_and_others_are_not(checks):
    health.register(Check("backlog", {"count": 10_000}, reads_database=True))
    assert health.health_report()[0]
    health.register(Check("queue", {"ok": False, "error": "OperationalError"}, critical=True))
    healthy, report = health.health_report()
    assert not healthy
    assert report["status"] == "unavailable"
    assert report["queue"] == {"ok": False, "error": "OperationalError"}


def test_a_database_error_reports_the_database_and_skips_the_other_reads(checks):
    first = Check("backlog", OperationalError("password=hunter2 host=db"), reads_database=True)
    second = Check("breakers", {"count": 0}, reads_database=True)
    health.register(first)
    health.register(Check("queue", {"ok": True}, critical=True))
    health.register(second)
    healthy, report = health.health_report()
    assert not healthy
    assert report == {
        "status": "unavailable",
        "database": {"ok": False, "error": "OperationalError"},
        "backlog": {"count": None},
        "queue": {"ok": True},
        "breakers": {"count": None},
    }
    assert (first.runs, second.runs) == (1, 0)  # a dead database is not asked twice
