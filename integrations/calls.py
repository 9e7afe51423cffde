"""``CallPolicy``: what governs one service's outbound calls, resolved in one place.

Every vendor client (``ServiceClient``, ``StripeService``) resolves one for each call: the
settings (``INTEGRATIONS``, then the service's entry in ``SERVICES``), then its overrides, lowest
first: its class attributes, then its constructor's arguments (``PolicyOverrides``). Resolving at
call time means that a settings change applies at once.

The client hands ``CallPolicy.run`` a callable that makes ONE attempt. ``run`` bounds each attempt
(``integrations.transport``: every socket operation ends by the call's deadline, and the answer is
read up to ``max_response_bytes``) and runs the attempts through
``integrations.resilience.call_with_resilience``, under the retry policy and the service's circuit
breaker, whose half-open probe lease outlasts the call's deadline. A policy added later is one
more field resolved here and applied by ``run``, so that every client shares one definition of
it; ``run_async`` runs the same resolved ``CallPolicy`` for asynchronous clients
(``AsyncServiceClient``), through ``call_with_resilience_async``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .conf import integrations_settings, service_settings
from .exceptions import IntegrationTimeout
from .fleet import FleetGuard
from .policies import (
    BreakerPolicy,
    RateLimit,
    RetryBudget,
    RetryPolicy,
    Timeout,
    probe_lease_for,
)
from .resilience import AttemptInfo, call_with_resilience, call_with_resilience_async
from .throttle import ClientThrottle, throttle_for
from .transport import AttemptBounds

if TYPE_CHECKING:
    from .breaker import AsyncBreaker, Breaker

__all__ = ["CallPolicy", "PolicyOverrides", "PolicySource"]

T = TypeVar("T")


class PolicySource(Protocol):
    """Overrides of a service's settings: a client class (its attributes) or a
    ``PolicyOverrides``. Each of ``timeout``, ``retry`` and ``breaker`` is a policy object (it
    replaces what is below it), a dict of some of its fields (merged over what is below it), or
    None; ``max_response_bytes`` is a number of bytes, or None. Read only: a frozen
    ``PolicyOverrides`` or a class's attributes will do."""

    @property
    def timeout(self) -> Timeout | Mapping[str, Any] | None: ...
    @property
    def retry(self) -> RetryPolicy | Mapping[str, Any] | None: ...
    @property
    def breaker(self) -> BreakerPolicy | Mapping[str, Any] | None: ...
    @property
    def max_response_bytes(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class PolicyOverrides:
    """What a client's constructor was given to override its class and the settings."""

    timeout: Timeout | Mapping[str, Any] | None = None
    retry: RetryPolicy | Mapping[str, Any] | None = None
    breaker: BreakerPolicy | Mapping[str, Any] | None = None
    max_response_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """The policies of one service's calls, resolved: ``timeout`` (httpx's four timeouts, each
    capped by what the deadline leaves), ``retry`` (attempts, backoff, deadline), ``breaker``
    (the circuit breaker's policy) and ``max_response_bytes`` (the largest answer read)."""

    service: str
    timeout: Timeout
    retry: RetryPolicy
    breaker: BreakerPolicy
    max_response_bytes: int
    #: The policies shared by every process (rate limit, cool-down, bulkheads, retry budget),
    #: from the settings only.
    fleet: FleetGuard | None = None
    #: This process's adaptive throttle of the service (``ADAPTIVE_THROTTLE``; None: off), from
    #: the settings only.
    throttle: ClientThrottle | None = None

    @classmethod
    def resolve(cls, service: str, *sources: PolicySource) -> CallPolicy:
        """The policies of ``service`` from its settings, overridden by each of ``sources`` in
        turn (lowest precedence first)."""
        timeout = Timeout.for_service(service)
        retry = RetryPolicy.for_service(service)
        breaker = BreakerPolicy.for_service(service)
        max_response_bytes = service_settings(service)["MAX_RESPONSE_BYTES"]
        for source in sources:  # most overrides are None: skip them without a call
            if source.timeout is not None:
                timeout = timeout.merged(source.timeout)
            if source.retry is not None:
                retry = retry.merged(source.retry)
            if source.breaker is not None:
                breaker = breaker.merged(source.breaker)
            if source.max_response_bytes:
                max_response_bytes = source.max_response_bytes
        return cls(
            service,
            timeout,
            retry,
            breaker,
            int(max_response_bytes),
            fleet_guard_for(service),
            throttle_for(service),
        )

    @property
    def probe_lease(self) -> float:
        """How long a half-open probe holds its slot: past the call's deadline, which bounds
        every attempt of the call."""
        return probe_lease_for(self.retry.deadline)

    def get_breaker(self) -> Breaker:
        """The service's circuit breaker, with this policy and probe lease."""
        return _breaker_factory()(
            self.service, self.breaker, probe_lease=probe_lease_for(self.retry.deadline)
        )

    def run(self, attempt: Callable[[AttemptInfo], T], *, operation: str) -> T:
        """One call of ``operation``: ``attempt`` (one try, raising an ``IntegrationError``
        mapped from its transport's) run under this policy; its result, or the last error."""
        max_response_bytes = self.max_response_bytes

        def bounded(info: AttemptInfo) -> T:
            with AttemptBounds(info.remaining, max_response_bytes):
                return attempt(info)

        return call_with_resilience(
            bounded,
            service=self.service,
            operation=operation,
            retry=self.retry,
            breaker=self.get_breaker(),
            guard=self.fleet,
            slow_call_threshold=self.breaker.slow_call_threshold,
            throttle=self.throttle,
        )

    async def run_async(
        self, attempt: Callable[[AttemptInfo], Awaitable[T]], *, operation: str
    ) -> T:
        """``run`` on an event loop (``AsyncServiceClient``): the same policies, through
        ``call_with_resilience_async``. Each attempt is cancelled when the call's deadline
        passes (``asyncio.timeout``; an ``IntegrationTimeout``), its connection closed."""
        max_response_bytes = self.max_response_bytes
        service = self.service

        async def bounded(info: AttemptInfo) -> T:
            with AttemptBounds(info.remaining, max_response_bytes):
                try:
                    async with asyncio.timeout(info.remaining):
                        return await attempt(info)
                except TimeoutError as exc:  # only asyncio.timeout raises it here
                    raise IntegrationTimeout(
                        service,
                        operation,
                        f"the attempt outlasted the call's deadline ({info.remaining:.3f}s left)",
                        cause=exc,
                    ) from exc

        return await call_with_resilience_async(
            bounded,
            service=service,
            operation=operation,
            retry=self.retry,
            breaker=_async_breaker()(self.get_breaker()),
            guard=self.fleet,
            slow_call_threshold=self.breaker.slow_call_threshold,
            throttle=self.throttle,
        )


#: service -> its ``FleetGuard`` (None when no shared policy is on), emptied when settings reload.
_guards: dict[str, FleetGuard | None] = {}
integrations_settings.register_cache(_guards.clear)


def fleet_guard_for(service: str) -> FleetGuard | None:
    """The shared policies of ``service`` from its settings; None when none is on."""
    try:
        return _guards[service]
    except KeyError:
        pass
    merged = integrations_settings.merged
    own = service_settings(service)
    where = f'INTEGRATIONS["SERVICES"][{service!r}]["RATE_LIMIT"]'
    guard: FleetGuard | None = FleetGuard(
        service,
        RateLimit.parse(own["RATE_LIMIT"], where),
        bool(own["SHARED_COOLDOWN"]),
        own["MAX_CONCURRENCY"],
        own["CLUSTER_MAX_CONCURRENCY"],
        RetryBudget.parse(
            own["RETRY_BUDGET"], f'INTEGRATIONS["SERVICES"][{service!r}]["RETRY_BUDGET"]'
        ),
    )
    if guard is not None and not guard.active:
        guard = None
    integrations_settings.remember(_guards, service, guard, source=merged)
    return guard


_get_breaker: Callable[..., Breaker] | None = None


def _breaker_factory() -> Callable[..., Breaker]:
    """``integrations.breaker.get_breaker``, imported on first use (once: an import statement
    on every call would cost more than the rest of the breaker check). The breaker's module loads
    the models, which need the app registry, and a client's module may be imported before it is
    ready."""
    global _get_breaker
    if _get_breaker is None:
        from .breaker import get_breaker

        _get_breaker = get_breaker
    return _get_breaker


_async_breaker_class: type[AsyncBreaker] | None = None


def _async_breaker() -> type[AsyncBreaker]:
    """``integrations.breaker.AsyncBreaker``, imported on first use (as ``_breaker_factory``)."""
    global _async_breaker_class
    if _async_breaker_class is None:
        from .breaker import AsyncBreaker

        _async_breaker_class = AsyncBreaker
    return _async_breaker_class
