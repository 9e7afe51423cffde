"""Prometheus metrics: real traffic shows up on ``/metrics``; without the extra nothing is
imported and everything still works; several web processes aggregate in multiprocess mode."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat

import httpx
import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from integrations import ServiceClient
from integrations.exceptions import IntegrationUnavailable, Throttled
from integrations.testing import FakeVendor, Reply, instant_backoff
from integrations.throttle import use_throttle_random
from tests import handler_runs, postgres
from tests.celery_worker import CeleryWorker, purge_broker
from tests.integrations.factories import CircuitBreakerFactory
from tests.servers import ROOT, GunicornServer, subprocess_env, wait_until
from tests.webhooks.factories import WebhookEventFactory
from webhooks import PermanentFailure, on, processing, services
from webhooks.models import WebhookEvent
from webhooks.registry import registry
from webhooks.testing import build_request, post_webhook


class Scrape:
    """One scrape of ``/metrics``: ``scrape.value(name, **labels)`` (0 when absent)."""

    def __init__(self, text: str) -> None:
        self.samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    return Scrape(response.content.decode())


@pytest.fixture
def handlers():
    saved = registry.snapshot()
    yield registry
    registry.restore(saved)


@pytest.mark.django_db
def test_webhook_traffic_shows_on_metrics(client, handlers, django_capture_on_commit_callbacks):
    on("stripe", "metrics.ok")(lambda event: None)

    @on("stripe", "metrics.bad")
    def bad(event):
        raise PermanentFailure("cannot use it")

    before = scrape(client)
    with django_capture_on_commit_callbacks(execute=True):
        ok = post_webhook(client, "stripe", event_type="metrics.ok")
        assert ok.json()["status"] == "accepted"
        again = build_request("stripe", event_type="metrics.bad")
        for _ in range(2):  # a delivery and its duplicate
            client.post(
                again.path,
                data=again.body,
                content_type="application/json",
                headers={k: v for k, v in again.headers.items() if k != "Content-Type"},
            )
        post_webhook(client, "stripe", event_type="metrics.none")  # no handler: ignored
        assert post_webhook(client, "stripe", bad_signature=True).status_code == 400
        assert post_webhook(client, "github", b"{}", bad_signature=True).status_code == 400
        assert (
            client.post("/webhooks/some-random-path/", b"{}", "application/json").status_code == 404
        )

        for event in WebhookEvent.objects.all():
            processing.process_event(event.pk)
    after = scrape(client)

    def delta(name, **labels):
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("tether_webhooks_received_total", endpoint="stripe") == 3
    assert delta("tether_webhooks_duplicates_total", endpoint="stripe") == 1
    assert (
        delta("tether_webhooks_rejected_total", endpoint="stripe", reason="invalid_signature") == 1
    )
    assert (
        delta("tether_webhooks_rejected_total", endpoint="github", reason="invalid_signature") == 1
    )
    # an unknown path never becomes a label value of its own
    assert (
        delta("tether_webhooks_rejected_total", endpoint="_unknown", reason="unknown_endpoint") == 1
    )
    assert not any("some-random-path" in str(key) for key in after.samples)
    assert delta("tether_webhooks_processed_total", endpoint="stripe") == 1
    assert delta("tether_webhooks_failed_total", endpoint="stripe") == 1
    assert delta("tether_webhooks_ignored_total", endpoint="stripe") == 1
    assert delta("tether_webhook_processing_seconds_count", endpoint="stripe") == 1
    assert delta("tether_webhook_end_to_end_seconds_count", endpoint="stripe") == 1
    assert delta("tether_webhook_end_to_end_seconds_sum", endpoint="stripe") > 0
    # Runs by handler and outcome: the ok lambda processed, ``bad`` failed; no run for the
    # event no handler matched.
    ok_name = "tests.test_metrics.test_webhook_traffic_shows_on_metrics.<locals>.<lambda>"
    bad_name = "tests.test_metrics.test_webhook_traffic_shows_on_metrics.<locals>.bad"
    runs = "tether_webhook_handler_runs_total"
    assert delta(runs, endpoint="stripe", handler=ok_name, outcome="processed") == 1
    assert delta(runs, endpoint="stripe", handler=bad_name, outcome="failed") == 1
    assert delta(runs, endpoint="stripe", handler=bad_name, outcome="processed") == 0
    seconds = "tether_webhook_handler_run_seconds_count"
    assert delta(seconds, endpoint="stripe", handler=ok_name) == 1
    assert delta(seconds, endpoint="stripe", handler=bad_name) == 1


@pytest.mark.django_db
def test_ignoring_through_the_service_counts(client):
    event = WebhookEventFactory(endpoint="acme", status=WebhookEvent.Status.FAILED)
    before = scrape(client).value("tether_webhooks_ignored_total", endpoint="acme")
    assert services.mark_ignored(event, reason="operator")
    assert scrape(client).value("tether_webhooks_ignored_total", endpoint="acme") == before + 1


@pytest.mark.django_db
def test_stuck_gauge_is_counted_at_scrape_time(client):
    stale = timezone.now() - dt.timedelta(hours=1)
    WebhookEventFactory.create_batch(2, endpoint="github", received_at=stale)
    WebhookEventFactory(endpoint="stripe", received_at=stale)
    WebhookEventFactory(endpoint="stripe")
    now = scrape(client)
    assert now.value("tether_webhooks_stuck", endpoint="github") == 2
    assert now.value("tether_webhooks_stuck", endpoint="stripe") == 1
    WebhookEvent.objects.filter(endpoint="github").update(status=WebhookEvent.Status.PROCESSED)
    assert scrape(client).value("tether_webhooks_stuck", endpoint="github") == 0


class Rates(ServiceClient):
    service = "metrics-rates"

    def rate(self) -> dict:
        return self.get_json("/v1/rate", operation="rate")


@pytest.mark.django_db
def test_outbound_calls_retries_and_breakers_show_on_metrics(
    client, settings, django_capture_on_commit_callbacks
):
    # breaker_transitioned is sent once the transition commits
    with FakeVendor() as vendor, instant_backoff():
        settings.INTEGRATIONS = {
            "SERVICES": {
                "metrics-rates": {
                    "BASE_URL": vendor.url,
                    "RETRY": {"MAX_ATTEMPTS": 2},
                    "BREAKER": {"FAILURE_THRESHOLD": 2},
                }
            }
        }
        vendor.route(
            "GET",
            "/v1/rate",
            Reply.server_error(503),  # retried, then succeeds
            Reply.json({"rate": 1}),
            Reply.server_error(503),  # two failures: the call fails and the breaker opens
            Reply.server_error(503),
        )
        before = scrape(client)
        with django_capture_on_commit_callbacks(execute=True):
            assert Rates().rate() == {"rate": 1}
            with pytest.raises(IntegrationUnavailable):
                Rates().rate()
        after = scrape(client)

    def delta(name, **labels):
        return after.value(name, **labels) - before.value(name, **labels)

    call = {"service": "metrics-rates", "operation": "rate"}
    assert delta("tether_integration_calls_total", **call, outcome="success") == 1
    assert delta("tether_integration_calls_total", **call, outcome="integration_unavailable") == 1
    assert delta("tether_integration_retries_total", **call) == 2
    assert delta("tether_integration_call_seconds_count", **call) == 2
    assert (
        delta(
            "tether_circuit_breaker_transitions_total",
            breaker="metrics-rates",
            from_state="closed",
            to_state="open",
        )
        == 1
    )
    assert after.value("tether_circuit_breaker_state", breaker="metrics-rates", state="open") == 1
    assert after.value("tether_circuit_breaker_state", breaker="metrics-rates", state="closed") == 0


@pytest.mark.django_db
def test_cooldowns_refusals_and_redis_errors_show_on_metrics(client, settings):
    from integrations.exceptions import RateLimited, RateLimitedError
    from integrations.testing import unused_port_url

    with FakeVendor() as vendor:
        vendor.route("GET", "/v1/rate", Reply.rate_limited(30), Reply.json({"rate": 1}))
        service = {
            "BASE_URL": vendor.url,
            "RETRY": {"MAX_ATTEMPTS": 1, "DEADLINE": 2.0},
            "SHARED_COOLDOWN": True,
        }
        settings.INTEGRATIONS = {
            "REDIS_URL": settings.REDIS_URL,
            "SERVICES": {"metrics-rates": service},
        }
        before = scrape(client)
        with pytest.raises(RateLimitedError):
            Rates().rate()  # the vendor's 429: a cool-down of 30 s for every process
        with pytest.raises(RateLimited):
            Rates().rate()  # refused by the cool-down, longer than the deadline
        settings.INTEGRATIONS = {
            "REDIS_URL": unused_port_url().replace("http", "redis"),
            "SERVICES": {"metrics-rates": service},
        }
        assert Rates().rate() == {"rate": 1}  # Redis down: fails open
        after = scrape(client)

    def delta(name, **labels):
        return after.value(name, **labels) - before.value(name, **labels)

    call = {"service": "metrics-rates", "operation": "rate"}
    assert delta("tether_integration_cooldowns_total", service="metrics-rates", status="429") == 1
    assert delta("tether_integration_calls_total", **call, outcome="rate_limited") == 1
    assert delta("tether_integration_calls_total", **call, outcome="rate_limited_error") == 1
    assert delta("tether_integration_shared_state_errors_total", service="metrics-rates") == 1


@pytest.mark.django_db
def test_fleet_policy_state_is_a_gauge_read_at_scrape_time(client, settings):
    from integrations import shared_state

    with FakeVendor() as vendor:
        vendor.route("GET", "/v1/rate", Reply.json({"rate": 1}))
        settings.INTEGRATIONS = {
            "REDIS_URL": settings.REDIS_URL,
            "SERVICES": {
                "metrics-rates": {
                    "BASE_URL": vendor.url,
                    "RATE_LIMIT": {"RATE": "50/s", "BURST": 5},
                    "SHARED_COOLDOWN": True,
                    "RETRY_BUDGET": {"RATIO": 0.5, "MIN_RETRIES_PER_SECOND": 0, "WINDOW": 10},
                    "CLUSTER_MAX_CONCURRENCY": 3,
                }
            },
        }
        shared_state.take_lease("metrics-rates", limit=3, lease=30, token="held")
        shared_state.start_cooldown("metrics-rates", 30, "429 from metrics-rates.rate")
        seconds, _ = shared_state.get_redis().time()
        while shared_state.get_redis().time()[0] == seconds:  # start of a second
            pass
        shared_state.get_redis().delete(shared_state.key("metrics-rates", "cooldown"))
        for _ in range(4):
            Rates().rate()
        shared_state.start_cooldown("metrics-rates", 30, "429 from metrics-rates.rate")
        while shared_state.get_redis().time()[0] == seconds + 1:  # that second is over
            pass
        after = scrape(client)
    service = {"service": "metrics-rates"}
    assert after.value("tether_integration_rate_limit_per_second", **service) == 50
    assert after.value("tether_integration_rate_limit_used", **service) == 4
    assert 27 < after.value("tether_integration_cooldown_seconds", **service) <= 30
    assert after.value("tether_integration_retry_budget_allowed", **service) == 2  # 0.5 x 4
    assert after.value("tether_integration_retry_budget_retries", **service) == 0
    assert after.value("tether_integration_bulkhead_in_flight", **service) == 1
    assert after.value("tether_integration_bulkhead_limit", **service) == 3


@pytest.mark.django_db
def test_a_spent_retry_budget_shows_on_metrics(client, settings):
    with FakeVendor() as vendor, instant_backoff():
        vendor.route("GET", "/v1/rate", Reply.server_error(503))
        settings.INTEGRATIONS = {
            "REDIS_URL": settings.REDIS_URL,
            "SERVICES": {
                "metrics-rates": {
                    "BASE_URL": vendor.url,
                    "RETRY": {"MAX_ATTEMPTS": 2},
                    "BREAKER": {"FAILURE_THRESHOLD": 100},
                    "RETRY_BUDGET": {"RATIO": 0.0, "MIN_RETRIES_PER_SECOND": 0.1, "WINDOW": 10},
                }
            },
        }
        before = scrape(client)
        for _ in range(3):  # one retry allowed (0.1/s x 10 s), then none
            with pytest.raises(IntegrationUnavailable):
                Rates().rate()
        after = scrape(client)
    call = {"service": "metrics-rates", "operation": "rate"}
    spent = "tether_integration_retry_budget_spent_total"
    assert after.value(spent, **call) - before.value(spent, **call) == 2
    retried = "tether_integration_retries_total"
    assert after.value(retried, **call) - before.value(retried, **call) == 1
    assert vendor.count() == 4


@pytest.mark.django_db
def test_local_rejections_of_the_adaptive_throttle_show_on_metrics(client, settings):
    with FakeVendor() as vendor, use_throttle_random(repeat(0.5).__next__):
        vendor.route("GET", "/v1/rate", Reply.server_error(503))
        settings.INTEGRATIONS = {
            "SERVICES": {
                "metrics-rates": {
                    "BASE_URL": vendor.url,
                    "RETRY": {"MAX_ATTEMPTS": 1},
                    "BREAKER": {"FAILURE_THRESHOLD": 100},
                    "ADAPTIVE_THROTTLE": {"K": 2, "WINDOW": 600},
                }
            },
        }
        before = scrape(client)
        for _ in range(5):  # p = 0, 1/2 (both sent), then 2/3, 3/4, 4/5 (rejected here)
            with pytest.raises(IntegrationUnavailable):
                Rates().rate()
        after = scrape(client)
    call = {"service": "metrics-rates", "operation": "rate"}
    throttled = "tether_integration_throttled_total"
    assert after.value(throttled, **call) - before.value(throttled, **call) == 3
    calls = "tether_integration_calls_total"
    shed = {**call, "outcome": "throttled"}
    assert after.value(calls, **shed) - before.value(calls, **shed) == 3
    assert vendor.count() == 2
    assert issubclass(Throttled, IntegrationUnavailable)


@pytest.mark.django_db
def test_breaker_state_gauge_reads_the_shared_state(client):
    CircuitBreakerFactory(name="github", state="forced_open")
    metrics = scrape(client)
    assert metrics.value("tether_circuit_breaker_state", breaker="github", state="forced_open") == 1
    for state in ("closed", "open", "half_open", "disabled"):
        assert metrics.value("tether_circuit_breaker_state", breaker="github", state=state) == 0


# --- without the extra ------------------------------------------------------------------

NO_EXTRA = textwrap.dedent(
    """
    import json, sys

    class BlockPrometheus:
        def find_spec(self, name, path=None, target=None):
            if name == "prometheus_client" or name.startswith("prometheus_client."):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, BlockPrometheus())

    import django
    django.setup()

    from django.test import Client
    from django.test.utils import setup_test_environment
    setup_test_environment()
    from webhooks.models import WebhookEvent
    from webhooks.signals import webhook_received, webhook_rejected
    from integrations.signals import call_finished

    # the signals still fire without a metrics receiver
    webhook_rejected.send(sender=None, endpoint="stripe", reason="invalid_signature")
    call_finished.send(sender="x", service="x", operation="y", outcome="success",
                       duration=0.1, attempts=1)
    client = Client()
    health = client.get("/health/")
    metrics = client.get("/metrics")
    bad = client.post("/webhooks/stripe/", b"{}", content_type="application/json")
    print(json.dumps({
        "loaded": sorted(m for m in sys.modules if m.startswith("prometheus")),
        "health": health.status_code,
        "metrics": [metrics.status_code, metrics.content.decode()],
        "webhook": [bad.status_code, bad.json()],
        "receivers": len(webhook_received.receivers),
    }))
    """
)


@postgres.SUBPROCESS
@pytest.mark.django_db(transaction=True)
def test_without_the_extra_nothing_is_imported_and_everything_works():
    env = subprocess_env(extra={"DJANGO_SETTINGS_MODULE": "tests.settings"})
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    result = subprocess.run(
        [sys.executable, "-c", NO_EXTRA], cwd=ROOT, env=env, capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    report = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert report["loaded"] == []
    assert report["health"] == 200
    status, text = report["metrics"]
    assert status == 501 and "django-tether[metrics]" in text
    assert report["webhook"] == [400, {"error": "invalid_signature"}]


# --- several web processes --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.worker
@pytest.mark.multiprocess
@pytest.mark.django_db(transaction=True)
def test_web_workers_and_celery_worker_aggregate_in_multiprocess_mode(tmp_path):
    """With one PROMETHEUS_MULTIPROC_DIR per host, whichever gunicorn worker answers the scrape
    reports the counts of every web process and of the Celery worker's processes (which is
    where events are processed), and the scrape-time stuck gauge once."""
    handler_runs.ensure_table()
    handler_runs.clear()
    purge_broker()
    shared = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    server = GunicornServer(env=shared, workers=2).start()
    base_url = server.url

    def deliver(n: int) -> str:
        endpoint, event_type = ("stripe", "test.record") if n % 4 == 0 else ("acme", None)
        with httpx.Client(base_url=base_url, timeout=20) as http:
            request = build_request(endpoint, event_type=event_type)
            response = http.post(request.path, content=request.body, headers=request.headers)
            return response.json()["status"]

    try:
        with CeleryWorker(pool="prefork", concurrency=2, extra_env=shared):
            # concurrent deliveries: a sync worker serves one at a time, so both take some
            with ThreadPoolExecutor(max_workers=6) as pool:
                assert list(pool.map(deliver, range(24))) == ["accepted"] * 24
            wait_until(
                lambda: (
                    WebhookEvent.objects.filter(status__in=("processed", "ignored")).count() == 24
                ),
                timeout=60,
                message="the worker to process every event",
            )
        writers = {path.name.split("_")[1] for path in tmp_path.glob("counter_*.db")}
        assert len(writers) >= 3, writers  # two web processes and at least one worker process
        with httpx.Client(base_url=base_url, timeout=20) as http:
            for _ in range(6):  # whichever web worker answers
                text = http.get("/metrics").text
                counts = Scrape(text)
                received = counts.value("tether_webhooks_received_total", endpoint="acme")
                received += counts.value("tether_webhooks_received_total", endpoint="stripe")
                assert received == 24
                assert counts.value("tether_webhooks_ignored_total", endpoint="acme") == 18
                assert counts.value("tether_webhooks_processed_total", endpoint="stripe") == 6
                assert (
                    counts.value("tether_webhook_end_to_end_seconds_count", endpoint="stripe") == 6
                )
                assert text.count("# TYPE tether_webhooks_stuck gauge") == 1
    finally:
        server.close()
        purge_broker()
