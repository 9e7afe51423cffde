"""The health view: JSON, 200 when the database and the broker answer, 503 when either does
not; stuck events and open breakers reported; cheap enough to poll every second.

The outage tests run the sandbox under gunicorn as a subprocess: its broker is a Redis server
of the test's own (started, killed, started again; the shared Redis on 6379 is never touched),
or its database is a closed port."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
import urllib.request

import pytest
from celery import current_app
from django.db import connection
from django.utils import timezone

from tests.integrations.factories import CircuitBreakerFactory
from tests.servers import GunicornServer, RedisServer, free_port, wait_until
from tests.webhooks.factories import WebhookEventFactory
from webhooks.conf import webhooks_settings
from webhooks.health import broker_probe
from webhooks.models import WebhookEvent

Status = WebhookEvent.Status


# --- in process -------------------------------------------------------------------------


@pytest.mark.django_db
def test_healthy_report(client, settings):
    stale = timezone.now() - dt.timedelta(seconds=webhooks_settings.STUCK_AFTER + 60)
    WebhookEventFactory.create_batch(2, received_at=stale)  # received, never picked up
    WebhookEventFactory(status=Status.PROCESSING, received_at=stale, last_attempt_at=stale)
    WebhookEventFactory()  # fresh: not stuck
    WebhookEventFactory(status=Status.FAILED, received_at=stale)  # finished: not stuck
    CircuitBreakerFactory(name="stripe", tripped=True)
    CircuitBreakerFactory(name="github", state="forced_open")
    CircuitBreakerFactory(name="rates")  # closed
    CircuitBreakerFactory(name="maps", state="disabled")

    response = client.get("/health/")
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    assert response.json() == {
        "status": "ok",
        "database": {"ok": True},
        "broker": {"ok": True},
        "webhooks": {"stuck": 3, "stuck_after": 600},
        "circuit_breakers": {
            "open": [
                {"name": "github", "state": "forced_open"},
                {"name": "stripe", "state": "open"},
            ]
        },
    }


@pytest.mark.django_db
def test_stuck_after_setting_is_honoured(client, settings):
    WebhookEventFactory(received_at=timezone.now() - dt.timedelta(seconds=90))
    assert client.get("/health/").json()["webhooks"]["stuck"] == 0
    settings.WEBHOOKS = {**settings.WEBHOOKS, "STUCK_AFTER": 60}
    assert client.get("/health/").json()["webhooks"] == {"stuck": 1, "stuck_after": 60}


@pytest.mark.django_db
def test_only_get_and_head(client):
    assert client.head("/health/").status_code == 200
    assert client.post("/health/").status_code == 405


@pytest.mark.django_db
def test_a_poll_costs_two_queries_and_reuses_the_broker_probe(
    client, django_assert_max_num_queries, settings
):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "HEALTH_CACHE_TTL": 60}
    client.get("/health/")
    first = broker_probe.check()
    for _ in range(5):
        with django_assert_max_num_queries(2):  # stuck COUNT + breakers not closed
            assert client.get("/health/").status_code == 200
    assert broker_probe.check() is first  # no new broker connection within the TTL


@pytest.mark.slow
@pytest.mark.django_db
def test_poll_cost_with_a_large_table(client, settings, capsys):
    """Measured: 20,000 events (200 stuck), 200 polls. Printed, and bounded loosely."""
    old = timezone.now() - dt.timedelta(hours=2)
    WebhookEvent.objects.bulk_create(
        WebhookEventFactory.build(
            status=Status.RECEIVED if n % 100 == 0 else Status.PROCESSED, received_at=old
        )
        for n in range(20_000)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE webhooks_webhookevent")
    assert client.get("/health/").json()["webhooks"]["stuck"] == 200
    polls = 200
    started = time.perf_counter()
    for _ in range(polls):
        client.get("/health/")
    mean_ms = (time.perf_counter() - started) / polls * 1000
    with capsys.disabled():
        print(f"\nhealth poll: {mean_ms:.2f} ms mean over {polls} polls, 20k events")
    assert mean_ms < 100  # generous on a shared 2-core machine; typically a few ms


@pytest.mark.django_db
def test_broker_down_is_503_and_names_no_url(client, settings):
    port = free_port()  # nothing listens there
    original = current_app.conf.broker_url
    current_app.conf.broker_url = f"redis://:s3cret-pass@127.0.0.1:{port}/0"
    try:
        started = time.perf_counter()
        response = client.get("/health/")
        elapsed = time.perf_counter() - started
    finally:
        current_app.conf.broker_url = original
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["database"] == {"ok": True}
    assert body["broker"] == {"ok": False, "error": "OperationalError"}
    assert "s3cret" not in response.content.decode() and str(port) not in response.content.decode()
    assert elapsed < 2


# --- real server subprocesses -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.django_db(transaction=True)
def test_health_flips_to_503_when_redis_stops_and_back_when_it_starts():
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed for this test (apt-get install redis-server)")
    redis = RedisServer()
    redis.start()
    server = GunicornServer(
        broker_url=f"redis://127.0.0.1:{redis.port}/0", webhooks={"HEALTH_CACHE_TTL": 0.5}
    ).start()
    try:
        status, body = server.get("/health/")
        assert (status, body["broker"], body["database"]) == (200, {"ok": True}, {"ok": True})

        redis.kill()
        status, body = wait_until(
            lambda: (r := server.get("/health/"))[0] == 503 and r, timeout=10, message="503"
        )
        assert body["status"] == "unavailable"
        assert body["broker"] == {"ok": False, "error": "OperationalError"}
        assert body["database"] == {"ok": True}

        redis.start()  # same port
        status, body = wait_until(
            lambda: (r := server.get("/health/"))[0] == 200 and r, timeout=10, message="200"
        )
        assert body["status"] == "ok" and body["broker"] == {"ok": True}
    finally:
        server.close()
        redis.kill()


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.django_db(transaction=True)
def test_health_and_api_answer_503_when_the_database_is_unreachable():
    closed = free_port()
    server = GunicornServer(
        env={"TETHER_PG_URL": f"postgres://postgres:pg-pass@127.0.0.1:{closed}/nowhere"}
    ).start()
    try:
        status, body = server.get("/health/")
        assert status == 503
        assert body["status"] == "unavailable"
        assert body["database"] == {"ok": False, "error": "OperationalError"}
        assert body["broker"] == {"ok": True}
        assert body["webhooks"]["stuck"] is None
        assert body["circuit_breakers"] == {"open": None}
        assert "pg-pass" not in json.dumps(body)

        # the operator API says so too, rather than a 500 (authentication needs the database)
        status, body = server.get(
            "/api/webhook-events/", headers={"Authorization": "Basic cm9vdDpwdw=="}
        )
        assert status == 503
        assert body == {"detail": "The database is unavailable; try again later."}

        # a scrape still answers: the database-backed gauges are left out, the rest is there
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as r:
            text = r.read().decode()
        assert "tether_webhooks_stuck{" not in text
        assert "tether_circuit_breaker_state{" not in text
        assert "# TYPE tether_webhooks_received_total counter" in text
    finally:
        server.close()
