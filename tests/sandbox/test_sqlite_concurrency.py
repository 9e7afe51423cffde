"""Concurrent deliveries on the sandbox's embedded default, SQLite, as ``make run`` starts it: the
web server and a real Celery worker (two pool processes and beat) all write to one file, so the
database must make writers wait for each other instead of failing with "database is locked"."""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.conf import settings

from tests.sandbox.sandbox_run import SandboxRun
from webhooks.testing import build_request, send_request

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.worker]

DELIVERIES = 20
AT_A_TIME = 4
# Well below the sweeper's REQUEUE_RECEIVED_AFTER (60 s): an event whose processing failed
# outside its handler would only be picked up again after that.
PROCESSED_WITHIN = 30


def statuses(database) -> dict[str, str]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as connection:
        rows = connection.execute("SELECT event_id, status FROM webhooks_webhookevent")
        return dict(rows.fetchall())


def test_concurrent_deliveries_all_end_processed_on_sqlite(tmp_path):
    secret = settings.WEBHOOKS["ENDPOINTS"]["github"]["SECRETS"][0]
    state_dir = tmp_path / "state"
    with SandboxRun(state_dir, env={"GITHUB_WEBHOOK_SECRET": secret}) as run:
        requests = [build_request("github", event_type="push") for _ in range(DELIVERIES)]
        with (
            httpx.Client(base_url=run.url, timeout=30, trust_env=False) as client,
            ThreadPoolExecutor(AT_A_TIME) as pool,
        ):
            answers = list(pool.map(lambda request: send_request(client, request), requests))
        for answer in answers:
            assert (answer.status_code, answer.json()["status"]) == (200, "accepted"), answer.text

        sent = {request.event_id for request in requests}
        deadline = time.monotonic() + PROCESSED_WITHIN
        while True:
            found = statuses(state_dir / "sandbox.sqlite3")
            if set(found) == sent and set(found.values()) == {"processed"}:
                break
            assert time.monotonic() < deadline, (
                f"not all processed within {PROCESSED_WITHIN}s: {found}\n{run.log()[-5000:]}"
            )
            time.sleep(0.25)
    log = run.log()
    assert "database is locked" not in log, log[-5000:]
    assert "OperationalError" not in log, log[-5000:]
