"""The webhooks app's health checks, and the URL include of the health view.

``WebhooksConfig.ready()`` registers two checks with ``tether.health`` (which holds the view and
its JSON and status rules): ``broker``, critical (the view answers 503 when the Celery broker
cannot be reached; not probed with ``TASK_BACKEND = "django"``), and ``webhooks``, the backlog
of events stuck past ``STUCK_AFTER`` (reported, never failing).
``path("health/", include("webhooks.health"))`` mounts the view (``tether.health``'s
``urlpatterns``, re-exported here), as does ``include("tether.health")``.

Cost per request: one indexed ``COUNT`` of stuck events, and a broker connection at most once
every ``WEBHOOKS["HEALTH_CACHE_TTL"]`` seconds (its result is reused in between, per process),
with a connect timeout of ``WEBHOOKS["HEALTH_BROKER_TIMEOUT"]`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.db.models import Count

from tether.health import HealthCheck, register
from tether.health import app_name as app_name  # the URL include: include("webhooks.health")
from tether.health import health_view as health_view
from tether.health import urlpatterns as urlpatterns

from .conf import processing_setting, task_backend, webhooks_settings
from .services import stuck_events

logger = logging.getLogger("webhooks.health")


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
    return stuck_events(older_than=processing_setting("STUCK_AFTER")).count()


def stuck_event_counts() -> dict[str, int]:
    """The same, per endpoint (used by the metrics gauge)."""
    stuck = stuck_events(older_than=processing_setting("STUCK_AFTER"))
    rows = stuck.order_by().values_list("endpoint").annotate(count=Count("pk"))
    return dict(rows)


class BrokerCheck(HealthCheck):
    """``broker``: whether this process can publish to the Celery broker (``broker_probe``).
    With ``TASK_BACKEND = "django"`` there is no broker to probe: ``{"ok": true,
    "task_backend": "django"}`` (a database backend's queue is the database, which the view's
    database check covers)."""

    name = "broker"
    critical = True

    def run(self) -> dict[str, Any]:
        if task_backend() == "django":
            return {"ok": True, "task_backend": "django"}
        probe = broker_probe.check()
        return {"ok": True} if probe.ok else {"ok": False, "error": probe.error}


class BacklogCheck(HealthCheck):
    """``webhooks``: how many events are stuck, and past how many seconds."""

    name = "webhooks"
    reads_database = True

    def run(self) -> dict[str, Any]:
        return {"stuck": stuck_event_count(), "stuck_after": webhooks_settings["STUCK_AFTER"]}

    def unreadable(self) -> dict[str, Any]:
        return {"stuck": None, "stuck_after": webhooks_settings["STUCK_AFTER"]}


def register_checks() -> None:
    """Add the webhooks app's checks to the health view (from ``WebhooksConfig.ready()``)."""
    register(BrokerCheck())
    register(BacklogCheck())
