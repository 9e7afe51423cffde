"""Health view for load balancers and uptime checks: ``GET`` answers JSON, 200 or 503.

Mount it with ``path("health/", include("webhooks.health"))`` (or route ``health_view``
yourself). It lives in the webhooks app because everything it checks is what that app needs to
take a delivery: the database, the Celery broker and the event backlog; it adds the circuit
breakers when ``integrations`` is installed.

- **503** when the database or the broker cannot be reached: this process cannot do its job.
- **200** otherwise. Stuck events and open breakers are reported but do not fail the check: a
  vendor being down is no reason to take the web process out of the load balancer.

Cost per request: one indexed ``COUNT`` of stuck events, one small query of breakers that are
not closed (when integrations is installed), and a broker connection at most once every
``WEBHOOKS["HEALTH_CACHE_TTL"]`` seconds (its result is reused in between, per process), with
a connect timeout of ``WEBHOOKS["HEALTH_BROKER_TIMEOUT"]`` seconds. Errors are reported by
class name only: driver messages can carry hostnames and credentials.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.db import DatabaseError
from django.db.models import Count
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from .conf import webhooks_settings

logger = logging.getLogger("webhooks.health")

#: Breaker states reported as open (calls are refused or only probes go through).
OPEN_BREAKER_STATES = ("open", "half_open", "forced_open")


@dataclass
class _Probe:
    ok: bool
    error: str | None
    checked_at: float


class BrokerProbe:
    """Connects to the Celery broker, reusing the last result for a short while (per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: _Probe | None = None
        self._url: str | None = None

    def reset(self) -> None:
        with self._lock:
            self._last = None

    def check(self) -> _Probe:
        from celery import current_app

        url = current_app.conf.broker_url
        ttl = float(webhooks_settings["HEALTH_CACHE_TTL"])
        now = time.monotonic()
        with self._lock:
            last = self._last
            if last is not None and self._url == url and now - last.checked_at < ttl:
                return last
            probe = self._connect(current_app, float(webhooks_settings["HEALTH_BROKER_TIMEOUT"]))
            self._last, self._url = probe, url
            return probe

    @staticmethod
    def _connect(app: Any, timeout: float) -> _Probe:
        try:
            with app.connection_for_write(connect_timeout=timeout) as conn:
                conn.ensure_connection(max_retries=0, timeout=timeout)
        except Exception as exc:
            logger.warning("health: broker unreachable (%s)", type(exc).__name__)
            return _Probe(False, type(exc).__name__, time.monotonic())
        return _Probe(True, None, time.monotonic())


broker_probe = BrokerProbe()


def stuck_event_count() -> int:
    """Events stuck past ``STUCK_AFTER``, ``received`` or ``processing`` (one indexed ``COUNT``;
    the sweeper requeues ``received`` ones sooner, after ``REQUEUE_RECEIVED_AFTER``)."""
    from .services import processing_setting, stuck_events

    return stuck_events(older_than=processing_setting("STUCK_AFTER")).count()


def stuck_event_counts() -> dict[str, int]:
    """The same, per endpoint (used by the metrics gauge)."""
    from .services import processing_setting, stuck_events

    stuck = stuck_events(older_than=processing_setting("STUCK_AFTER"))
    rows = stuck.order_by().values_list("endpoint").annotate(count=Count("pk"))
    return dict(rows)


def open_breakers() -> list[dict[str, str]] | None:
    """Breakers that are not closed, or None when the integrations app is not installed."""
    if not apps.is_installed("integrations"):
        return None
    from integrations.models import CircuitBreaker

    rows = CircuitBreaker.objects.filter(state__in=OPEN_BREAKER_STATES).order_by("name")
    return [{"name": name, "state": state} for name, state in rows.values_list("name", "state")]


def health_report() -> tuple[bool, dict[str, Any]]:
    """``(healthy, report)``: the JSON body of the health view."""
    report: dict[str, Any] = {}
    try:
        stuck = stuck_event_count()
        breakers = open_breakers()
    except DatabaseError as exc:
        logger.warning("health: database unreachable (%s)", type(exc).__name__)
        report["database"] = {"ok": False, "error": type(exc).__name__}
        stuck = breakers = None
    else:
        report["database"] = {"ok": True}
    probe = broker_probe.check()
    report["broker"] = {"ok": probe.ok} if probe.ok else {"ok": False, "error": probe.error}
    report["webhooks"] = {"stuck": stuck, "stuck_after": webhooks_settings["STUCK_AFTER"]}
    if apps.is_installed("integrations"):
        report["circuit_breakers"] = {"open": breakers}
    healthy = report["database"]["ok"] and probe.ok
    return healthy, {"status": "ok" if healthy else "unavailable", **report}


@never_cache
@require_safe
def health_view(request: HttpRequest) -> JsonResponse:
    healthy, report = health_report()
    return JsonResponse(report, status=200 if healthy else 503)


app_name = "health"
urlpatterns = [path("", health_view, name="health")]
