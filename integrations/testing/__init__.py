"""Test helpers for code that calls vendors through ``integrations``.

- ``FakeVendor`` / ``Reply``: a real, scriptable HTTP server on 127.0.0.1 (``server.py``).
- ``instant_backoff()``: waits between retries return at once (and are recorded), while the
  deadline still sees them as elapsed (``ServiceClient`` and ``AsyncServiceClient`` alike).
- ``ManualBackoff``: a backoff clock that stands still until told (``use_backoff_clock``).
- ``force_breaker(name, state)``: put a service's circuit breaker in a state, the way an
  operator (or a run of failures) would.
- ``aclose_connections()``: close the running event loop's connections (``AsyncServiceClient``).
- ``reset_local_state()``: forget this process's breaker snapshots and pooled connections
  (django-tether's pytest plugin, ``tether.pytest_plugin``, calls it around each test).

``integrations.testing.stripe`` holds a fake Stripe API for ``StripeService``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from ..resilience import BackoffClock, use_backoff_clock
from .server import FakeVendor, RecordedRequest, Reply, Route, unused_port_url

if TYPE_CHECKING:
    from ..models import CircuitBreaker

__all__ = [
    "FakeVendor",
    "InstantBackoff",
    "ManualBackoff",
    "RecordedRequest",
    "Reply",
    "Route",
    "aclose_connections",
    "force_breaker",
    "instant_backoff",
    "reset_local_state",
    "unused_port_url",
]


class InstantBackoff(BackoffClock):
    """A backoff clock whose ``sleep`` returns at once. Each wait is recorded in ``sleeps`` and
    added to the clock, so deadlines behave as if the time had passed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sleeps: list[float] = []
        self._skipped = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self._skipped

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._skipped += max(0.0, seconds)

    async def sleep_async(self, seconds: float) -> None:
        """The same for ``AsyncServiceClient``'s waits (no await: instant)."""
        self.sleep(seconds)

    @property
    def total(self) -> float:
        """Seconds of waiting skipped so far."""
        return sum(self.sleeps)


class ManualBackoff(BackoffClock):
    """A backoff clock that stands still until told: ``now`` is its time (set it, or
    ``advance`` it), and a retry's wait moves it on by the wait. For exact tests of what
    depends on time in a call (a deadline, the adaptive throttle's window)::

        with use_backoff_clock(ManualBackoff()) as clock:
            ...
            clock.advance(61)
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    async def sleep_async(self, seconds: float) -> None:
        self.advance(seconds)


@contextmanager
def instant_backoff() -> Iterator[InstantBackoff]:
    """Make every retry wait instant inside the block (process-wide)::

    with instant_backoff() as backoff:
        client.get_json("/x", operation="x")
    assert len(backoff.sleeps) == 2
    """
    with use_backoff_clock(InstantBackoff()) as clock:
        yield clock


def reset_local_state() -> None:
    """Forget what this process keeps between calls: breaker snapshots and successes not yet
    written (which would outlive a test's rolled-back database), pooled connections (the event
    loops' are forgotten: close them with ``integrations.client.aclose_pools()`` on their loop),
    and the shared policies' Redis clients and their "Redis is down" memories (the calls' and
    the status reads'), and the adaptive throttles' counts. ``tether.pytest_plugin`` calls it
    around each test of any suite."""
    from .. import shared_state
    from ..breaker import clear_local_cache
    from ..client import close_pools
    from ..fleet import forget_unavailable
    from ..fleet_status import forget_unreadable
    from ..throttle import forget_throttles

    clear_local_cache()
    forget_throttles()
    close_pools()
    forget_unavailable()
    forget_unreadable()
    shared_state.close()


async def aclose_connections() -> None:
    """Close the running event loop's pooled connections and shared-policies Redis client
    (``AsyncServiceClient``'s): at the end of a test's (or a script's) event loop."""
    from .. import shared_state
    from ..client import aclose_pools

    await aclose_pools()
    await shared_state.aclose()


#: How many failures ``force_breaker(name, "open")`` records at most before giving up.
_FORCE_OPEN_MAX_FAILURES = 10_000


def force_breaker(
    name: str,
    state: Literal["closed", "open", "forced_open", "disabled"],
    *,
    reason: str = "set by integrations.testing.force_breaker",
    actor: str = "tests",
    until: datetime | None = None,
) -> CircuitBreaker:
    """Put breaker ``name`` in ``state`` and return its ``CircuitBreaker`` row.

    ``"closed"``, ``"forced_open"`` and ``"disabled"`` go through the operator actions of
    ``integrations.breaker`` (as the admin does, with a recorded transition). ``"open"`` is
    reached the way production reaches it: failures are recorded until the breaker's threshold
    trips it.
    """
    from ..breaker import (
        clear_local_cache,
        disable_breaker,
        force_open_breaker,
        get_breaker,
        reset_breaker,
    )
    from ..exceptions import IntegrationUnavailable
    from ..models import CircuitBreaker

    if state == "closed":
        reset_breaker(name, actor=actor, reason=reason, create=True)
    elif state == "forced_open":
        force_open_breaker(name, actor=actor, reason=reason, until=until, create=True)
    elif state == "disabled":
        disable_breaker(name, actor=actor, reason=reason, until=until, create=True)
    elif state == "open":
        reset_breaker(name, actor=actor, reason=reason, create=True)
        breaker = get_breaker(name)
        error = IntegrationUnavailable(name, "force_breaker", "forced failure")
        # Bounded: a breaker that cannot be read (degraded) would never be seen open.
        for _attempt in range(_FORCE_OPEN_MAX_FAILURES):
            if breaker.snapshot(fresh=True).state == "open":
                break
            breaker.record_failure(breaker.acquire("force_breaker"), error)
        else:
            raise RuntimeError(
                f"force_breaker: breaker {name!r} is not open after "
                f"{_FORCE_OPEN_MAX_FAILURES} recorded failures (is its database readable?)"
            )
    else:
        raise ValueError(
            f"force_breaker: state must be closed, open, forced_open or disabled, not {state!r}"
        )
    clear_local_cache(name)
    return CircuitBreaker.objects.get(name=name)
