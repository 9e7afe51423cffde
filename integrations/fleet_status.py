"""What operators see of a service's fleet policies: one read of their Redis state.

The admin, the operator API, the ``circuit_breakers list`` command and the Prometheus collector
all read it through ``fleet_status(service)``, so they agree. Reading never changes anything;
it costs one Redis round trip per service (``shared_state.read_status``), and none for a service
without fleet policies. When Redis cannot be read, the process does not ask it again for
``UNREADABLE_FOR`` seconds (the statuses say why, with the error remembered): a page listing
twenty services then waits one ``REDIS_TIMEOUT`` at most, not twenty.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from . import shared_state
from .calls import fleet_guard_for
from .conf import integrations_settings
from .resilience import get_backoff_clock
from .throttle import throttle_for

__all__ = [
    "UNREADABLE_FOR",
    "FleetStatus",
    "configured_services",
    "fleet_status",
    "forget_unreadable",
]


@dataclass(frozen=True)
class FleetStatus:
    """One service's fleet policies and their state now. A policy that is off is None (and
    its state None too); ``error`` names why Redis could not be read (its state is then None)."""

    service: str
    #: e.g. ``"80/1s (burst 10)"``.
    rate_limit: str | None = None
    #: Calls let out in the last whole second (Redis's clock).
    rate_used_last_second: int | None = None
    #: The calls per second the limit allows.
    rate_per_second: float | None = None
    shared_cooldown: bool = False
    #: Seconds left of a cool-down in force (0: none), and what started it.
    cooldown_left: float | None = None
    cooldown_reason: str = ""
    #: e.g. ``"RetryBudget(ratio=0.2, ...)"``, and its counts over its window.
    retry_budget: str | None = None
    budget_first_attempts: float | None = None
    budget_retries: float | None = None
    #: Retries the budget allows over its window now.
    budget_retries_allowed: float | None = None
    max_concurrency: int | None = None
    cluster_max_concurrency: int | None = None
    #: Fleet bulkhead places taken now.
    cluster_in_flight: int | None = None
    #: The adaptive throttle (``"K=2 over 120s"``), and in THIS process (the one reading):
    #: the probability it rejects an attempt now and the attempts it rejected since it started.
    adaptive_throttle: str | None = None
    throttle_probability: float | None = None
    throttle_rejected: int | None = None
    error: str | None = None

    @property
    def active(self) -> bool:
        return bool(
            self.rate_limit
            or self.shared_cooldown
            or self.retry_budget
            or self.max_concurrency
            or self.cluster_max_concurrency
            or self.adaptive_throttle
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for a list: ``rate 12/80 per s; cool-down 1.2s (429 ...); ...``."""
        if not self.active:
            return "-"
        parts = []
        if self.error:
            parts.append(f"Redis unreadable ({self.error})")
        if self.rate_limit:
            used = "?" if self.rate_used_last_second is None else self.rate_used_last_second
            parts.append(f"rate {used}/{self.rate_per_second:g} per s")
        if self.shared_cooldown or self.cooldown_left:
            if self.cooldown_left:
                parts.append(f"cool-down {self.cooldown_left:.1f}s ({self.cooldown_reason})")
            else:
                parts.append("no cool-down")
        if self.retry_budget and self.budget_retries is not None:
            parts.append(
                f"budget {self.budget_retries:.0f}/{self.budget_retries_allowed:.0f} retries"
            )
        if self.cluster_max_concurrency:
            used = "?" if self.cluster_in_flight is None else self.cluster_in_flight
            parts.append(f"in flight {used}/{self.cluster_max_concurrency}")
        if self.max_concurrency:
            parts.append(f"per process max {self.max_concurrency}")
        if self.adaptive_throttle and self.throttle_probability is not None:
            parts.append(
                f"throttle p={self.throttle_probability:.2f} here "
                f"({self.throttle_rejected} rejected)"
            )
        return "; ".join(parts)


def configured_services() -> list[str]:
    """The services named in ``INTEGRATIONS["SERVICES"]``, sorted."""
    return sorted(integrations_settings["SERVICES"])


def fleet_status(service: str) -> FleetStatus:
    """The fleet policies of ``service`` and their state in Redis now (and the adaptive
    throttle's in this process)."""
    guard = fleet_guard_for(service)
    throttle = throttle_for(service)
    local: dict[str, Any] = {}
    if throttle is not None:
        local = {
            "adaptive_throttle": str(throttle.policy),
            "throttle_probability": round(throttle.probability(get_backoff_clock().monotonic()), 3),
            "throttle_rejected": throttle.rejected,
        }
    if guard is None:
        return FleetStatus(service, **local)
    limit, budget = guard.rate_limit, guard.retry_budget
    fields: dict[str, Any] = {
        **local,
        "rate_limit": str(limit) if limit else None,
        "rate_per_second": limit.calls / limit.period if limit else None,
        "shared_cooldown": guard.shared_cooldown,
        "retry_budget": str(budget) if budget else None,
        "max_concurrency": guard.max_concurrency,
        "cluster_max_concurrency": guard.cluster_max_concurrency,
    }
    needs_redis = (
        limit is not None
        or guard.shared_cooldown
        or budget is not None
        or guard.cluster_max_concurrency is not None
    )
    if not needs_redis:
        return FleetStatus(service, **fields)
    remembered = _unreadable_now()
    if remembered is not None:
        return FleetStatus(service, **fields, error=remembered)
    try:
        state = shared_state.read_status(service, budget.window if budget is not None else None)
    except shared_state.SharedStateUnavailable as exc:
        _remember_unreadable(str(exc))
        return FleetStatus(service, **fields, error=str(exc))
    if limit is not None:
        fields["rate_used_last_second"] = state.rate_used_last_second
    fields["cooldown_left"] = round(state.cooldown_left, 3)
    fields["cooldown_reason"] = state.cooldown_reason
    if budget is not None:
        firsts, retries = state.budget_first_attempts, state.budget_retries
        fields["budget_first_attempts"] = round(firsts, 1)
        fields["budget_retries"] = round(retries, 1)
        fields["budget_retries_allowed"] = round(firsts * budget.ratio + budget.min_retries, 1)
    if guard.cluster_max_concurrency is not None:
        fields["cluster_in_flight"] = state.leases_in_force
    return FleetStatus(service, **fields)


#: Seconds a status read leaves Redis alone after it could not be read: a page listing many
#: services, or a scrape, then costs one ``REDIS_TIMEOUT`` at most, not one per service.
UNREADABLE_FOR = 5.0

#: (Redis URL and timeout, ``time.monotonic()`` until which it is not asked, the error's class)
_unreadable: tuple[tuple[str, float], float, str] | None = None


def _source() -> tuple[str, float]:
    return (
        str(integrations_settings["REDIS_URL"]),
        float(integrations_settings["REDIS_TIMEOUT"]),
    )


def _unreadable_now() -> str | None:
    remembered = _unreadable
    if remembered is None:
        return None
    source, until, error = remembered
    if time.monotonic() >= until or source != _source():
        return None
    return error


def _remember_unreadable(error: str) -> None:
    global _unreadable
    _unreadable = (_source(), time.monotonic() + UNREADABLE_FOR, error)


def forget_unreadable() -> None:
    """Read Redis again on the next status read, even within ``UNREADABLE_FOR`` of a failure
    (tests, and after Redis came back)."""
    global _unreadable
    _unreadable = None
