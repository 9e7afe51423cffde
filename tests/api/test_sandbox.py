"""The operator surface on the running sandbox: gunicorn serving the API over HTTP with Basic
auth, a real Celery worker processing what the API replays, PostgreSQL and Redis."""

from __future__ import annotations

import httpx
import pytest

from integrations.models import CircuitBreaker
from tests import handler_runs
from tests.api.conftest import make_user
from tests.celery_worker import CeleryWorker, purge_broker
from tests.integrations.factories import CircuitBreakerFactory
from tests.servers import GunicornServer, wait_until
from tests.webhooks.factories import WebhookEventFactory
from webhooks.models import WebhookEvent

Status = WebhookEvent.Status


@pytest.mark.slow
@pytest.mark.worker
@pytest.mark.multiprocess
@pytest.mark.django_db(transaction=True)
def test_operator_works_the_sandbox_over_http():
    handler_runs.ensure_table()
    handler_runs.clear()
    purge_broker()
    make_user("ops", superuser=True)
    failed = WebhookEventFactory(event_type="test.record", status=Status.FAILED, attempts=8)
    others = WebhookEventFactory.create_batch(
        3, event_type="test.record", status=Status.FAILED, attempts=8
    )
    CircuitBreakerFactory(name="stripe", tripped=True)

    server = GunicornServer().start()
    auth = httpx.BasicAuth("ops", "pw-ops")
    try:
        with (
            CeleryWorker(),
            httpx.Client(base_url=server.url, auth=auth, timeout=20) as http,
        ):
            listing = http.get("/api/webhook-events/", params={"status": "failed"}).json()
            assert {row["id"] for row in listing["results"]} == {failed.pk} | {e.pk for e in others}
            assert http.get("/api/webhook-events/", params={"since": "soon"}).status_code == 400

            assert http.post(f"/api/webhook-events/{failed.pk}/replay/").status_code == 202
            wait_until(
                lambda: WebhookEvent.objects.get(pk=failed.pk).status == Status.PROCESSED,
                timeout=60,
                message="the worker to process the replayed event",
            )
            detail = http.get(f"/api/webhook-events/{failed.pk}/").json()
            assert (detail["status"], detail["attempts"]) == ("processed", 1)

            bulk = http.post("/api/webhook-events/replay/", json={"dry_run": True})
            assert (bulk.status_code, bulk.json()) == (200, {"count": 3})
            assert http.post("/api/webhook-events/replay/", json={}).json() == {"count": 3}
            wait_until(
                lambda: not WebhookEvent.objects.exclude(status=Status.PROCESSED).exists(),
                timeout=60,
                message="the worker to process the bulk replay",
            )
            assert len(handler_runs.runs()) == 4

            reset = http.post("/api/circuit-breakers/stripe/reset/", json={"reason": "fixed"})
            assert reset.json()["recent_transitions"][0]["actor"] == "api:ops"
            assert CircuitBreaker.objects.get(name="stripe").state == "closed"

            assert http.get("/health/").json()["status"] == "ok"
            assert http.get("/api/schema/", params={"format": "json"}).status_code == 200
            anonymous = httpx.get(f"http://127.0.0.1:{server.port}/api/webhook-events/")
            assert anonymous.status_code == 403
    finally:
        server.close()
        purge_broker()
