"""Operator actions on circuit breakers: reset, force open, disable.

The admin, the ``circuit_breakers`` command, the operator API and ``integrations.testing`` all
call these; each records a ``BreakerTransition`` with who did it, why, and the counters at the
time. The process that runs the action forgets its snapshot at once; every other process sees
the change when its snapshot expires, within ``CACHE_TTL``.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .breaker import (
    CLOSED,
    CLOSED_COUNTS,
    DISABLED,
    FORCED_OPEN,
    DatabaseStorage,
    clear_local_cache,
)
from .conf import integrations_settings
from .models import CircuitBreaker

__all__ = [
    "BreakerNotFound",
    "InvalidExpiry",
    "disable_breaker",
    "force_open_breaker",
    "reset_breaker",
]


class BreakerNotFound(LookupError):
    """No circuit breaker has this name (it is created on a service's first call)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no circuit breaker named {name!r}")


class InvalidExpiry(ValueError):
    """``until`` must be an aware datetime in the future."""


def reset_breaker(
    name: str, *, actor: str, reason: str = "", create: bool = False
) -> CircuitBreaker:
    """Close the breaker whatever its state (ending a forced state), with its failure counts
    at zero. Totals are kept."""
    return _set_state(
        name,
        CLOSED,
        actor=actor,
        reason=reason or "reset",
        until=None,
        create=create,
        changes=CLOSED_COUNTS,
    )


def force_open_breaker(
    name: str,
    *,
    actor: str,
    reason: str,
    until: datetime | None = None,
    create: bool = False,
) -> CircuitBreaker:
    """Hold the breaker open: every call fails fast with ``CircuitOpenError`` (``retry_after``
    is the time left until ``until``, or None) until a person resets it or ``until`` passes."""
    return _set_state(
        name,
        FORCED_OPEN,
        actor=actor,
        reason=reason,
        until=until,
        create=create,
        changes={"half_open_in_flight": 0, "probe_lease_until": None},
    )


def disable_breaker(
    name: str,
    *,
    actor: str,
    reason: str,
    until: datetime | None = None,
    create: bool = False,
) -> CircuitBreaker:
    """Let every call through whatever fails (outcomes are still counted) until a person
    resets it or ``until`` passes; then the breaker is closed again."""
    return _set_state(
        name,
        DISABLED,
        actor=actor,
        reason=reason,
        until=until,
        create=create,
        changes={"half_open_in_flight": 0, "probe_lease_until": None},
    )


def _set_state(
    name: str,
    to_state: str,
    *,
    actor: str,
    reason: str,
    until: datetime | None,
    create: bool,
    changes: dict,
) -> CircuitBreaker:
    now = timezone.now()
    if until is not None:
        if timezone.is_naive(until):
            raise InvalidExpiry("until must be timezone-aware")
        if until <= now:
            raise InvalidExpiry(f"until ({until.isoformat()}) is not in the future")
    with transaction.atomic():
        # A breaker is created on its service's first call; one of a service configured in
        # INTEGRATIONS["SERVICES"] can be acted on before that (e.g. opened ahead of a vendor's
        # maintenance), from every surface alike. Any other unknown name is BreakerNotFound.
        if create or name in integrations_settings["SERVICES"]:
            CircuitBreaker.objects.get_or_create(name=name)
        try:
            breaker = CircuitBreaker.objects.select_for_update().get(name=name)
        except CircuitBreaker.DoesNotExist:
            raise BreakerNotFound(name) from None
        from_state = breaker.state
        CircuitBreaker.objects.filter(pk=breaker.pk).update(
            state=to_state,
            version=F("version") + 1,
            forced_until=until,
            updated_at=now,
            **changes,
        )
        breaker.refresh_from_db()
        DatabaseStorage.record_transition(breaker, from_state, reason=reason, actor=actor, at=now)
    clear_local_cache(name)
    return breaker
