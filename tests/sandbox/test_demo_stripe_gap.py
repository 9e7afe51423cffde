"""The sandbox's reconcile demo: a fake Stripe over real HTTP lists an event it never delivered;
``reconcile_webhooks`` stores it once and the demo's handler pays the order.

In-process first (the test database, the event processed here as the worker would), then the
whole sandbox as ``make run`` starts it (SQLite, its own worker), with ``demo_stripe_gap
--serve`` and ``reconcile_webhooks stripe`` run from the shell as docs/sandbox.md says."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command

from sandbox_project.demo.models import Order
from tests.sandbox.sandbox_run import SandboxRun
from tests.servers import ROOT, wait_until
from webhooks import processing
from webhooks.models import WebhookEvent


@pytest.mark.django_db
def test_the_missed_event_is_stored_once_and_pays_the_order():
    out = StringIO()
    call_command("demo_stripe_gap", stdout=out)
    output = out.getvalue()

    [order] = Order.objects.all()
    [event] = WebhookEvent.objects.filter(endpoint="stripe")
    assert event.source == WebhookEvent.Source.RECONCILE
    assert event.payload["data"]["object"]["metadata"] == {"order_id": order.reference}
    assert "would store 1, already stored 0, not handled 1" in output
    assert "stored and enqueued 1, already stored 0, not handled 1" in output
    assert "stored and enqueued 0, already stored 1, not handled 1" in output
    assert order.status == Order.Status.PENDING
    assert processing.process_event(event.pk) == WebhookEvent.Status.PROCESSED
    order.refresh_from_db()
    assert order.status == Order.Status.PAID


@pytest.mark.slow
@pytest.mark.multiprocess
def test_reconcile_from_the_shell_against_the_served_fake_in_the_running_sandbox(tmp_path):
    with SandboxRun(tmp_path / "state") as run:
        env = {**run.env, "PYTHONUNBUFFERED": "1"}
        env.pop("STRIPE_API_KEY", None)
        env.pop("STRIPE_API_BASE", None)
        serve = subprocess.Popen(
            [sys.executable, "manage.py", "demo_stripe_gap", "--serve"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            lines: list[str] = []
            assert serve.stdout is not None
            for line in serve.stdout:
                lines.append(line)
                if "Ctrl-C stops the fake" in line:
                    break
            text = "".join(lines)
            found = re.search(r"STRIPE_API_KEY=(\S+) STRIPE_API_BASE=(\S+) ", text)
            assert found, text
            reconcile = subprocess.run(
                [sys.executable, "manage.py", "reconcile_webhooks", "stripe"],
                cwd=ROOT, capture_output=True, text=True, timeout=120,
                env={**env, "STRIPE_API_KEY": found[1], "STRIPE_API_BASE": found[2]},
            )  # fmt: skip
            assert reconcile.returncode == 0, reconcile.stderr[-3000:]
            assert "stored and enqueued 1" in reconcile.stdout
            reference = re.search(r"Order (demo-\w+) is pending", text)
            assert reference, text
        finally:
            serve.terminate()
            serve.wait(timeout=30)

        database = tmp_path / "state" / "sandbox.sqlite3"

        def paid() -> bool:
            with sqlite3.connect(database, timeout=10) as connection:
                row = connection.execute(
                    "SELECT status FROM demo_order WHERE reference = ?", (reference[1],)
                ).fetchone()
            return bool(row and row[0] == "paid")

        wait_until(paid, timeout=60, message="the sandbox's worker to pay the order")
