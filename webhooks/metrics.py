"""Prometheus metrics of webhooks (optional extra: ``pip install 'django-tether[metrics]'``).

Receivers connected to ``webhooks.signals`` count what happens to deliveries and events; the
stuck-event gauge is computed when Prometheus scrapes. ``connect_receivers()`` is called from
``WebhooksConfig.ready()`` and does nothing when ``prometheus_client`` is not installed, so
nothing is imported and everything else works. They join the registry of ``tether.metrics``,
whose ``metrics_view`` (also importable from here) serves every app's metrics; mount it with
``path("metrics", metrics_view)``.

Metrics (``endpoint`` is a configured endpoint name, or ``_unknown`` for any other path, so
that strangers cannot grow the label set):

- ``tether_webhooks_received_total{endpoint}``: new events stored.
- ``tether_webhooks_rejected_total{endpoint,reason}``: refused requests, ``reason`` being the
  response's error code (``invalid_signature``, ``malformed_payload``, ...).
- ``tether_webhooks_duplicates_total{endpoint}``: deliveries of an already stored event.
- ``tether_webhooks_processed_total{endpoint}``, ``..._failed_total``, ``..._ignored_total``.
- ``tether_webhook_processing_seconds{endpoint}``: histogram, last attempt start to processed.
- ``tether_webhook_end_to_end_seconds{endpoint}``: histogram, received to processed.
- ``tether_webhooks_stuck{endpoint}``: gauge at scrape time, events stuck past ``STUCK_AFTER``.
- ``tether_webhook_handler_runs_total{endpoint,handler,outcome}``: handler runs that recorded
  an outcome (``processed``, ``ignored``, ``skipped``, ``failed``, ``retry``). ``handler`` is
  the dotted name of a registered handler (code, not input: the label set is bounded).
- ``tether_webhook_handler_run_seconds{endpoint,handler}``: histogram, a run's duration.

With several processes per host, see ``tether.metrics`` (``PROMETHEUS_MULTIPROC_DIR``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from tether.metrics import available, connect
from tether.metrics import metrics_view as metrics_view  # documented: route it from here

from . import signals
from .conf import webhooks_settings

logger = logging.getLogger("webhooks.metrics")

UNKNOWN_ENDPOINT = "_unknown"
END_TO_END_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)


@functools.cache
def instruments() -> SimpleNamespace:
    """The metric objects, created (and registered) once per process on first use."""
    from prometheus_client import Counter, Histogram

    by_endpoint = ["endpoint"]
    return SimpleNamespace(
        received=Counter("tether_webhooks_received", "New webhook events stored.", by_endpoint),
        rejected=Counter(
            "tether_webhooks_rejected",
            "Webhook requests refused, by error code.",
            ["endpoint", "reason"],
        ),
        duplicates=Counter(
            "tether_webhooks_duplicates", "Deliveries of an already stored event.", by_endpoint
        ),
        processed=Counter("tether_webhooks_processed", "Events processed.", by_endpoint),
        failed=Counter("tether_webhooks_failed", "Events that ended failed.", by_endpoint),
        ignored=Counter("tether_webhooks_ignored", "Events that ended ignored.", by_endpoint),
        processing_seconds=Histogram(
            "tether_webhook_processing_seconds",
            "Time from the start of the successful attempt to processed.",
            by_endpoint,
        ),
        runs=Counter(
            "tether_webhook_handler_runs",
            "Handler runs that recorded an outcome, by handler and outcome.",
            ["endpoint", "handler", "outcome"],
        ),
        run_seconds=Histogram(
            "tether_webhook_handler_run_seconds",
            "Duration of a handler's run (its handler's call and outcome).",
            ["endpoint", "handler"],
        ),
        end_to_end_seconds=Histogram(
            "tether_webhook_end_to_end_seconds",
            "Time from receipt to processed, queueing and retries included.",
            by_endpoint,
            buckets=END_TO_END_BUCKETS,
        ),
    )


@functools.lru_cache(maxsize=1024)
def _labelled(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, remembered per metric and label values (prometheus_client's
    own advice: ``labels()`` takes a lock and checks the values at every call). Bounded: the
    endpoint label is a configured endpoint or ``_unknown``, the reason a refusal's code."""
    return metric.labels(*labels)


def endpoint_label(endpoint: str | None) -> str:
    if endpoint is not None and endpoint in webhooks_settings["ENDPOINTS"]:
        return endpoint
    return UNKNOWN_ENDPOINT


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def on_received(sender: Any, event: Any, **kwargs: Any) -> None:
    _labelled(instruments().received, endpoint_label(event.endpoint)).inc()


def on_rejected(sender: Any, endpoint: str | None = None, reason: str = "", **kwargs: Any) -> None:
    _labelled(instruments().rejected, endpoint_label(endpoint), str(reason or "unknown")).inc()


def on_duplicate(sender: Any, endpoint: str | None = None, **kwargs: Any) -> None:
    _labelled(instruments().duplicates, endpoint_label(endpoint)).inc()


def on_processed(sender: Any, event: Any, **kwargs: Any) -> None:
    metrics, label = instruments(), endpoint_label(event.endpoint)
    _labelled(metrics.processed, label).inc()
    if (seconds := _seconds(event.last_attempt_at, event.processed_at)) is not None:
        _labelled(metrics.processing_seconds, label).observe(seconds)
    if (seconds := _seconds(event.received_at, event.processed_at)) is not None:
        _labelled(metrics.end_to_end_seconds, label).observe(seconds)


def on_failed(sender: Any, event: Any, **kwargs: Any) -> None:
    _labelled(instruments().failed, endpoint_label(event.endpoint)).inc()


def on_ignored(sender: Any, event: Any, **kwargs: Any) -> None:
    _labelled(instruments().ignored, endpoint_label(event.endpoint)).inc()


#: The outcome label of each run status (``processing``: failed, retry due).
RUN_OUTCOMES = {"processing": "retry"}


def on_run_finished(sender: Any, run: Any, event: Any, **kwargs: Any) -> None:
    metrics, label = instruments(), endpoint_label(event.endpoint)
    metrics.runs.labels(label, run.handler, RUN_OUTCOMES.get(run.status, run.status)).inc()
    if (seconds := _seconds(run.started_at, run.finished_at)) is not None:
        metrics.run_seconds.labels(label, run.handler).observe(seconds)


class StuckEventsCollector:
    """``tether_webhooks_stuck{endpoint}``, counted in the database at scrape time."""

    name = "tether_webhooks_stuck"
    documentation = "Events stuck past WEBHOOKS['STUCK_AFTER'] (requeued or not yet)."

    def describe(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(self.name, self.documentation, labels=["endpoint"])

    def collect(self) -> Iterator[Any]:
        from django.db import DatabaseError
        from prometheus_client.core import GaugeMetricFamily

        from .health import stuck_event_counts

        try:
            counts = stuck_event_counts()
        except DatabaseError as exc:  # the rest of the scrape still answers
            logger.warning("metrics: cannot count stuck events (%s)", type(exc).__name__)
            return
        family = GaugeMetricFamily(self.name, self.documentation, labels=["endpoint"])
        for endpoint, count in sorted(counts.items()):
            family.add_metric([endpoint], count)
        yield family


_RECEIVERS = (
    (signals.webhook_received, on_received),
    (signals.webhook_rejected, on_rejected),
    (signals.webhook_duplicate, on_duplicate),
    (signals.webhook_processed, on_processed),
    (signals.webhook_failed, on_failed),
    (signals.webhook_ignored, on_ignored),
    (signals.webhook_run_finished, on_run_finished),
)


def connect_receivers() -> bool:
    """Connect the metric receivers; False (and nothing imported) without the extra."""
    if not available():
        return False
    instruments()
    connect(_RECEIVERS, collector=StuckEventsCollector())
    return True
