"""Prometheus metrics of outbound calls (optional extra: ``pip install 'django-tether[metrics]'``).

Connected from ``IntegrationsConfig.ready()`` only when ``prometheus_client`` is installed;
served by ``tether.metrics.metrics_view`` together with the webhook metrics, if any.

- ``tether_integration_calls_total{service,operation,outcome}``: public calls that ended;
  ``outcome`` is ``success`` or the snake_case error class (``integration_timeout``, ...).
- ``tether_integration_call_seconds{service,operation}``: histogram of a call's duration,
  retries and backoff included.
- ``tether_integration_retries_total{service,operation}``: attempts that failed and were retried.
- ``tether_circuit_breaker_transitions_total{breaker,from_state,to_state}``.
- ``tether_integration_cooldowns_total{service,status}``: shared cool-downs started by a 429
  (or a 503 with ``Retry-After``); calls a cool-down or the shared rate limit refused end with
  ``outcome="rate_limited"`` in ``tether_integration_calls_total``.
- ``tether_integration_retry_budget_spent_total{service,operation}``: failures raised without
  a retry because the service's retry budget was spent.
- ``tether_integration_throttled_total{service,operation}``: attempts this process's adaptive
  throttle rejected locally (``Throttled``; never sent). No gauge of its probability: it is
  per-process state, and every gauge here is read at scrape time from the state the fleet shares
  (the database, Redis); the operator views show this process's.
- ``tether_integration_shared_state_errors_total{service}``: calls that found the shared
  policies' Redis unreachable and went out without them (failing open).
- ``tether_circuit_breaker_state{breaker,state}``: gauge at scrape time from the database (the
  state every process shares): 1 for the breaker's current state, 0 for the others.
- Gauges at scrape time from Redis, for each service in ``INTEGRATIONS["SERVICES"]`` with fleet
  policies (``integrations.fleet_status``): ``tether_integration_rate_limit_per_second`` and
  ``tether_integration_rate_limit_used`` (calls let out in the last whole second),
  ``tether_integration_cooldown_seconds`` (left of a cool-down in force, 0 when none),
  ``tether_integration_retry_budget_retries`` and ``..._allowed`` (over its window), and
  ``tether_integration_bulkhead_in_flight`` / ``tether_integration_bulkhead_limit`` (the fleet
  bulkhead), each labelled ``service``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tether.metrics import available, connect

from . import signals

if TYPE_CHECKING:  # an optional extra: imported at run time only once it is known installed
    from prometheus_client import Counter, Histogram
    from prometheus_client.metrics_core import Metric

logger = logging.getLogger("integrations.metrics")

CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class Instruments:
    """This app's Prometheus instruments (``instruments()`` makes them once)."""

    calls: Counter
    seconds: Histogram
    retries: Counter
    transitions: Counter
    cooldowns: Counter
    shared_state_errors: Counter
    budget_spent: Counter
    throttled: Counter


@functools.cache
def instruments() -> Instruments:
    from prometheus_client import Counter, Histogram

    call = ["service", "operation"]
    return Instruments(
        calls=Counter(
            "tether_integration_calls", "Outbound calls, by outcome.", [*call, "outcome"]
        ),
        seconds=Histogram(
            "tether_integration_call_seconds",
            "Duration of an outbound call, retries included.",
            call,
            buckets=CALL_BUCKETS,
        ),
        retries=Counter("tether_integration_retries", "Outbound attempts retried.", call),
        transitions=Counter(
            "tether_circuit_breaker_transitions",
            "Circuit breaker state changes.",
            ["breaker", "from_state", "to_state"],
        ),
        cooldowns=Counter(
            "tether_integration_cooldowns",
            "Shared cool-downs started by a vendor's 429 (or 503 with Retry-After).",
            ["service", "status"],
        ),
        shared_state_errors=Counter(
            "tether_integration_shared_state_errors",
            "Calls that could not ask the shared policies' Redis (they went out without them).",
            ["service"],
        ),
        budget_spent=Counter(
            "tether_integration_retry_budget_spent",
            "Failures raised without a retry: the service's retry budget was spent.",
            call,
        ),
        throttled=Counter(
            "tether_integration_throttled",
            "Attempts rejected locally by the process's adaptive throttle (never sent).",
            call,
        ),
    )


def on_call_finished(
    sender: Any, operation: str, outcome: str, duration: float, **kwargs: Any
) -> None:
    service = kwargs.get("service", sender)
    metrics = instruments()
    metrics.calls.labels(service, operation, outcome).inc()
    metrics.seconds.labels(service, operation).observe(max(0.0, duration))


def on_call_retried(sender: Any, operation: str, **kwargs: Any) -> None:
    instruments().retries.labels(kwargs.get("service", sender), operation).inc()


def on_breaker_transitioned(
    sender: Any, breaker: Any, from_state: str, to_state: str, **kwargs: Any
) -> None:
    name = getattr(breaker, "name", breaker)
    instruments().transitions.labels(name, from_state, to_state).inc()


def on_cooldown_started(sender: Any, status: str, **kwargs: Any) -> None:
    instruments().cooldowns.labels(kwargs.get("service", sender), status).inc()


def on_retry_budget_spent(sender: Any, operation: str, **kwargs: Any) -> None:
    instruments().budget_spent.labels(kwargs.get("service", sender), operation).inc()


def on_call_throttled(sender: Any, operation: str, **kwargs: Any) -> None:
    instruments().throttled.labels(kwargs.get("service", sender), operation).inc()


def on_shared_state_unavailable(sender: Any, **kwargs: Any) -> None:
    instruments().shared_state_errors.labels(kwargs.get("service", sender)).inc()


class BreakerStateCollector:
    """``tether_circuit_breaker_state{breaker,state}``, read from the database at scrape time."""

    name = "tether_circuit_breaker_state"
    documentation = "1 for each circuit breaker's current state, 0 for its other states."

    def describe(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(self.name, self.documentation, labels=["breaker", "state"])

    def collect(self) -> Iterator[Metric]:
        from django.db import DatabaseError
        from prometheus_client.core import GaugeMetricFamily

        from .models import CircuitBreaker

        try:
            rows = list(CircuitBreaker.objects.order_by("name").values_list("name", "state"))
        except DatabaseError as exc:  # the rest of the scrape still answers
            logger.warning("metrics: cannot read circuit breakers (%s)", type(exc).__name__)
            return
        states = [value for value, _label in CircuitBreaker.State.choices]
        family = GaugeMetricFamily(self.name, self.documentation, labels=["breaker", "state"])
        for name, current in rows:
            for state in states:
                family.add_metric([name, state], 1 if state == current else 0)
        yield family


#: Gauge name -> (help, the ``FleetStatus`` field it reads).
FLEET_GAUGES = {
    "tether_integration_rate_limit_per_second": (
        "The service's shared rate limit, calls per second.",
        "rate_per_second",
    ),
    "tether_integration_rate_limit_used": (
        "Calls the shared rate limit let out in the last whole second, fleet-wide.",
        "rate_used_last_second",
    ),
    "tether_integration_cooldown_seconds": (
        "Seconds left of the service's shared cool-down (0: none).",
        "cooldown_left",
    ),
    "tether_integration_retry_budget_retries": (
        "Retries counted in the service's retry budget window.",
        "budget_retries",
    ),
    "tether_integration_retry_budget_allowed": (
        "Retries the service's retry budget allows over its window now.",
        "budget_retries_allowed",
    ),
    "tether_integration_bulkhead_in_flight": (
        "Calls holding a place in the service's fleet bulkhead.",
        "cluster_in_flight",
    ),
    "tether_integration_bulkhead_limit": (
        "Places in the service's fleet bulkhead (CLUSTER_MAX_CONCURRENCY).",
        "cluster_max_concurrency",
    ),
}


class FleetPolicyCollector:
    """The fleet policies' state, read from Redis at scrape time (one service failing to be
    read is logged and left out; the rest of the scrape still answers)."""

    def describe(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        for name, (documentation, _field) in FLEET_GAUGES.items():
            yield GaugeMetricFamily(name, documentation, labels=["service"])

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        from .fleet_status import configured_services, fleet_status

        families = {
            name: GaugeMetricFamily(name, documentation, labels=["service"])
            for name, (documentation, _field) in FLEET_GAUGES.items()
        }
        for service in configured_services():
            try:
                status = fleet_status(service)
            except Exception as exc:  # a bad setting: the rest of the scrape still answers
                logger.warning("metrics: cannot read %s's fleet policies (%s)", service, exc)
                continue
            for name, (_documentation, field) in FLEET_GAUGES.items():
                value = getattr(status, field)
                if value is not None:
                    families[name].add_metric([service], float(value))
        yield from families.values()


_RECEIVERS = (
    (signals.call_finished, on_call_finished),
    (signals.call_retried, on_call_retried),
    (signals.breaker_transitioned, on_breaker_transitioned),
    (signals.cooldown_started, on_cooldown_started),
    (signals.shared_state_unavailable, on_shared_state_unavailable),
    (signals.retry_budget_spent, on_retry_budget_spent),
    (signals.call_throttled, on_call_throttled),
)


def connect_receivers() -> bool:
    """Connect the metric receivers; False (and nothing imported) without the extra."""
    if not available():
        return False
    instruments()
    connect(_RECEIVERS, collector=BreakerStateCollector())
    connect((), collector=FleetPolicyCollector())
    return True
