"""Each app works alone: a project that installs only ``webhooks``, or only ``integrations`` (plus
Django's contrib apps and ``rest_framework``), passes ``manage.py check``, migrates, serves its
admin pages, its operator API, the health view and the metrics, and runs its commands.

Each project runs in subprocesses (``manage.py``, and ``tests.alone`` for the pages) on a
PostgreSQL database of the test's own, created and dropped by the test."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest

from tests.servers import ROOT, own_database, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


class Project:
    """``manage.py`` and ``python -m tests.alone`` under one settings module and database."""

    def __init__(self, settings_module: str, database: str) -> None:
        self.env = subprocess_env(
            extra={"DJANGO_SETTINGS_MODULE": settings_module, "TETHER_DB_NAME": database}
        )
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def manage(self, *args: str) -> str:
        """Run a management command; its output, or a failure showing its stderr."""
        result = self.run("manage.py", *args)
        assert result.returncode == 0, f"manage.py {' '.join(args)}:\n{result.stderr[-3000:]}"
        return result.stdout

    def use(self) -> dict:
        result = self.run("-m", "tests.alone")
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def project():
    """``project(settings_module, label)``: a migrated project on a database of its own."""
    with own_database("alone") as database:

        def make(settings_module: str) -> Project:
            made = Project(settings_module, database)
            made.manage("check", "--fail-level", "WARNING")
            made.manage("migrate", "--noinput", "-v", "0")
            return made

        yield make


def test_webhooks_alone(project):
    webhooks = project("tests.settings_webhooks_only")
    report = webhooks.use()

    assert report["installed"] == "webhooks"
    answer, status = report["used"]["receive"], report["used"]["status"]
    assert (answer[0], answer[1]["status"], status) == (200, "accepted", "ignored")
    assert set(report["pages"].values()) == {200}, report["pages"]
    status, health = report["health"]
    assert status == 200
    assert health == {
        "status": "ok",
        "database": {"ok": True},
        "broker": {"ok": True},
        "webhooks": {"stuck": 0, "stuck_after": 600},
    }

    assert "Would replay 1 event(s)" in webhooks.manage(
        "replay_webhooks", "--dry-run", "--status", "any", "--since", "2026-01-01"
    )
    assert "Would requeue 0" in webhooks.manage("requeue_stuck_webhooks", "--dry-run")
    assert "Would delete 0" in webhooks.manage("prune_webhooks", "--dry-run")
    assert "--bad-signature" in webhooks.manage("send_test_webhook", "--help")
    # Without integrations nothing lists Stripe's undelivered events: reconcile says what it
    # needs, with its own exit code, and receiving (above) is unaffected.
    reconcile = webhooks.run("manage.py", "reconcile_webhooks", "stripe")
    assert reconcile.returncode == 6, reconcile.stderr[-3000:]
    assert "needs a lister of stripe's events: add 'integrations' to INSTALLED_APPS" in (
        reconcile.stderr
    )
    assert "Traceback" not in reconcile.stderr


def test_integrations_alone(project):
    integrations = project("tests.settings_integrations_only")
    report = integrations.use()

    assert report["installed"] == "integrations"
    assert report["used"] == {
        "call": {"rate": "1.08"},
        "breakers": [["maps", "forced_open"], ["rates", "closed"]],
    }
    assert set(report["pages"].values()) == {200}, report["pages"]
    status, health = report["health"]
    assert status == 200
    assert health == {
        "status": "ok",
        "database": {"ok": True},
        "circuit_breakers": {"open": [{"name": "maps", "state": "forced_open"}]},
    }

    listing = integrations.manage("circuit_breakers", "list")
    assert "maps" in listing and "forced_open" in listing
    until = (dt.date.today() + dt.timedelta(days=30)).isoformat()  # within MAX_HOLD
    integrations.manage(
        "circuit_breakers", "disable", "rates", "--reason", "flapping", "--until", until
    )
    assert "disabled" in integrations.manage("circuit_breakers", "list")
    history = integrations.manage(
        "shell",
        "-c",
        "from django.contrib.admin.models import LogEntry; "
        "print([(e.user.username, e.change_message) for e in LogEntry.objects.all()])",
    )
    assert (
        "('tether-system', 'Disabled via command circuit_breakers: flapping "
        "(closed -> disabled, until "
    ) in history
