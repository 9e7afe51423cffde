"""The Prometheus registry both apps' metrics join (optional extra ``django-tether[metrics]``).

Each app's ``metrics`` module defines its instruments and signal receivers and calls
``connect()`` from its ``AppConfig.ready()``, only when ``available()``: without
``prometheus_client`` nothing is imported and everything else works. ``metrics_view`` serves
every metric of the process (``path("metrics", metrics_view)``), whichever apps are installed.

Scrape-time collectors (gauges read from the database) are registered here once each
(``add_scrape_collector``). With several processes per host (gunicorn workers, Celery prefork
children), set ``PROMETHEUS_MULTIPROC_DIR`` for all of them before start: the view then
aggregates every process's files (prometheus_client's multiprocess mode) and adds the
scrape-time collectors once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from django.dispatch import Signal
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

if TYPE_CHECKING:  # an optional extra: never imported here at run time
    from prometheus_client.registry import Collector

__all__ = [
    "EXTRA",
    "add_scrape_collector",
    "available",
    "connect",
    "metrics_view",
    "multiprocess_mode",
    "scrape_collectors",
]

logger = logging.getLogger("tether.metrics")

EXTRA = "django-tether[metrics]"

#: Collectors that read the database at scrape time (added once per scrape in multiprocess
#: mode, registered in the default registry otherwise); each app adds its own.
scrape_collectors: list[Collector] = []


def available() -> bool:
    """Whether the metrics extra (``prometheus_client``) is installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def add_scrape_collector(collector: Collector) -> None:
    """Register a scrape-time collector once (no-op if one of its class is already added)."""
    if any(type(c) is type(collector) for c in scrape_collectors):
        return
    scrape_collectors.append(collector)
    if not multiprocess_mode():
        from prometheus_client import REGISTRY

        REGISTRY.register(collector)


def connect(
    receivers: Iterable[tuple[Signal, Callable[..., None]]], *, collector: Collector | None = None
) -> None:
    """Connect an app's metric receivers to its signals (once each, whatever the number of
    calls) and add its scrape-time ``collector``. Call it only when ``available()``."""
    for signal, receiver in receivers:
        signal.connect(receiver, dispatch_uid=f"tether-metrics-{receiver.__name__}")
    if collector is not None:
        add_scrape_collector(collector)


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition of every django-tether metric (and the process's others)."""
    if not available():
        logger.error("metrics view: prometheus_client is not installed (extra %s)", EXTRA)
        return HttpResponse(
            f"Metrics need the optional extra: pip install '{EXTRA}'\n",
            status=501,
            content_type="text/plain; charset=utf-8",
        )
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    registry = REGISTRY
    if multiprocess_mode():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        for collector in scrape_collectors:
            registry.register(collector)
    response = HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
