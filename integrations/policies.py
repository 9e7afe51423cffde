"""Policy objects: timeouts, retries, the circuit breaker and the shared rate limit, built from
settings; and the half-open probe's lease that follows from the retry deadline.

Precedence, lowest first: ``INTEGRATIONS`` global dicts, the service's entry in
``INTEGRATIONS["SERVICES"]``, a ``ServiceClient`` subclass's class attribute, then what its
constructor is given. An override is either a whole policy object (it replaces what is below it)
or a dict of some fields (``{"READ": 2.0}``, keys in either case), merged over what is below it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Self, TypeVar, cast

from django.core.exceptions import ImproperlyConfigured

from .conf import integrations_settings, service_settings

#: (policy class, service) -> the policy built from settings, emptied when they reload.
_cache: dict[tuple[type[_Policy], str], _Policy] = {}
integrations_settings.register_cache(_cache.clear)


def _field_names(cls: type[_Policy]) -> set[str]:
    return {f.name for f in fields(cls)}


_P = TypeVar("_P", bound="_Policy")


def _from_dict(cls: type[_P], values: Mapping[str, Any]) -> _P:
    names = _field_names(cls)
    return cls(**{k.lower(): v for k, v in values.items() if k.lower() in names})


@dataclass(frozen=True)
class _Policy:
    """Shared behaviour of the three policy dataclasses (a dataclass without fields, so that
    ``dataclasses.replace`` and ``fields`` apply to each of them)."""

    #: The settings section this policy is read from (``"TIMEOUT"``, ...).
    section: ClassVar[str] = ""

    @classmethod
    def for_service(cls, service: str) -> Self:
        """The policy for ``service`` from settings (global dict, then the service's own)."""
        key = (cls, service)
        policy = _cache.get(key)
        if policy is None:
            merged = integrations_settings.merged
            policy = _from_dict(cls, service_settings(service)[cls.section])
            integrations_settings.remember(_cache, key, policy, source=merged)
        return cast(Self, policy)  # the entry under ``(cls, service)`` holds a ``cls``

    def merged(self, override: Self | Mapping[str, Any] | None) -> Self:
        """This policy with ``override`` applied: a policy object replaces it, a dict of some
        fields (keys in any case) changes those fields only."""
        if override is None:
            return self
        if isinstance(override, type(self)):
            return override
        if isinstance(override, Mapping):
            names = _field_names(type(self))
            changes = {str(k).lower(): v for k, v in override.items()}
            unknown = sorted(set(changes) - names)
            if unknown:
                raise ImproperlyConfigured(
                    f"Unknown {self.section} policy key(s) {', '.join(unknown).upper()}; "
                    f"known: {', '.join(sorted(names)).upper()}."
                )
            return replace(self, **changes)
        raise ImproperlyConfigured(
            f"A {self.section} policy override must be a {type(self).__name__} or a dict, "
            f"not {type(override).__name__}."
        )

    @classmethod
    def resolve(cls, service: str, *overrides: Self | Mapping[str, Any] | None) -> Self:
        """Settings for ``service``, then each override in turn (lowest precedence first)."""
        policy = cls.for_service(service)
        for override in overrides:
            policy = policy.merged(override)
        return policy


@dataclass(frozen=True)
class Timeout(_Policy):
    """httpx's four timeouts, in seconds: establishing a connection, waiting for each chunk of
    the answer, sending each chunk of the request, and waiting for a free pooled connection."""

    section = "TIMEOUT"

    connect: float = 3.05
    read: float = 10.0
    write: float = 10.0
    pool: float = 5.0

    def capped(self, remaining: float) -> Self:
        """Each timeout shortened so that none outlasts ``remaining`` seconds."""
        if remaining >= max(self.connect, self.read, self.write, self.pool):
            return self
        remaining = max(remaining, 0.001)
        return replace(
            self,
            connect=min(self.connect, remaining),
            read=min(self.read, remaining),
            write=min(self.write, remaining),
            pool=min(self.pool, remaining),
        )


@dataclass(frozen=True)
class RetryPolicy(_Policy):
    """Attempts, exponential backoff with full jitter, and an overall deadline per call.

    The n-th wait (n from 1) is uniform over ``[0, min(max_delay, base_delay * 2**(n-1))]``,
    or what the vendor's ``Retry-After`` asks; ``deadline`` bounds attempts plus waits.
    """

    section = "RETRY"

    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    deadline: float = 30.0


@dataclass(frozen=True)
class BreakerPolicy(_Policy):
    """When the breaker opens, how long it stays open, and how it is cached."""

    section = "BREAKER"

    failure_threshold: int = 5
    reset_timeout: float = 30.0
    half_open_max_calls: int = 1
    cache_ttl: float = 1.0
    fail_open_on_db_error: bool = True
    #: Optional failure-rate rule: open when, over the last ``window`` seconds and at least
    #: ``minimum_calls`` calls, the failure rate reaches ``failure_rate`` (0..1). None = off.
    failure_rate: float | None = None
    minimum_calls: int = 20
    window: float = 60.0
    #: A call whose attempt took longer than this many seconds counts as a failure even when
    #: it succeeded (Resilience4j's slow-call rate), in the failure count and the failure-rate
    #: window alike. None = off.
    slow_call_threshold: float | None = None


#: Seconds a half-open probe's lease outlasts the call deadline that bounds the probe's attempt
#: (``integrations.transport`` ends every socket operation of an attempt by then): time to write
#: the probe's outcome (a database write that may wait for a lock), to parse the answer, and for
#: the clocks of the processes that compare ``probe_lease_until`` to differ.
PROBE_LEASE_MARGIN = 5.0


def probe_lease_for(deadline: float) -> float:
    """The probe lease for calls bounded by ``deadline`` seconds: no new probe is granted while
    an earlier one can still be running."""
    return deadline + PROBE_LEASE_MARGIN


_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
            "h": 3600.0, "hour": 3600.0}  # fmt: skip
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")

#: The largest ``BURST`` a rate limit accepts (calls let through at once after a quiet spell).
MAX_BURST = 100_000


@dataclass(frozen=True)
class RateLimit:
    """At most ``calls`` calls per ``period`` seconds for the whole fleet, with up to ``burst``
    calls at once after a quiet spell (a GCRA: calls are spaced ``interval`` apart on average).

    Built from ``RATE_LIMIT``: ``"100/s"`` (also ``/m``, ``/h``, ``/10s``) or
    ``{"RATE": "100/s", "BURST": 10}``; ``BURST`` defaults to 1 (calls evenly spaced)."""

    calls: int
    period: float
    burst: int = 1

    @property
    def interval(self) -> float:
        """Seconds between two calls at the steady rate."""
        return self.period / self.calls

    def __str__(self) -> str:
        return f"{self.calls}/{self.period:g}s (burst {self.burst})"

    @classmethod
    def parse(cls, value: object, where: str = 'INTEGRATIONS["RATE_LIMIT"]') -> RateLimit | None:
        """The rate limit ``value`` describes (None for None); ``ImproperlyConfigured``, naming
        ``where``, for anything else."""
        if value is None:
            return None
        burst: object = 1
        rate = value
        if isinstance(value, Mapping):
            unknown = sorted(set(map(str, value)) - {"RATE", "BURST"})
            if unknown:
                raise ImproperlyConfigured(
                    f"{where} has unknown key(s) {', '.join(unknown)}; known: BURST, RATE."
                )
            rate, burst = value.get("RATE"), value.get("BURST", 1)
        match = _RATE.match(rate) if isinstance(rate, str) else None
        if match is None or match.group(3) not in _PERIODS:
            raise ImproperlyConfigured(
                f'{where} must be like "100/s" (or /m, /h, /10s) or {{"RATE": "100/s", '
                f'"BURST": 10}}, not {rate!r}.'
            )
        calls = int(match.group(1))
        period = int(match.group(2) or 1) * _PERIODS[match.group(3)]
        if calls < 1 or period <= 0:
            raise ImproperlyConfigured(f"{where}: {rate!r} must allow at least 1 call per period.")
        if not isinstance(burst, int) or isinstance(burst, bool) or not 1 <= burst <= MAX_BURST:
            raise ImproperlyConfigured(
                f"{where}: BURST must be an integer from 1 to {MAX_BURST}, not {burst!r}."
            )
        return cls(calls, period, burst)


def number_fields(
    value: object, where: str, known: Mapping[str, str], example: str
) -> dict[str, float] | None:
    """The fields of a policy written as a dict of numbers (``RETRY_BUDGET``,
    ``ADAPTIVE_THROTTLE``), by attribute name: None for None; ``ImproperlyConfigured``, naming
    ``where``, for a value that is not a dict (``example`` shows one), a key not in ``known``
    (setting key -> attribute), or a value that is not a finite number (bools refused). The
    ranges are the caller's to check."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(
            f"{where} must be None or a dict like {example}, not {type(value).__name__}."
        )
    unknown = sorted(set(map(str, value)) - set(known))
    if unknown:
        raise ImproperlyConfigured(
            f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}."
        )
    for name, number in value.items():
        numeric = isinstance(number, int | float) and not isinstance(number, bool)
        if not numeric or not math.isfinite(number):
            raise ImproperlyConfigured(f"{where}[{name!r}] must be a finite number.")
    return {known[str(name)]: float(number) for name, number in value.items()}


@dataclass(frozen=True)
class RetryBudget:
    """Retries of a service across the fleet stay under ``ratio`` of its first attempts over
    the last ``window`` seconds, plus ``min_retries_per_second`` (so a quiet service can still
    retry), the way Finagle and gRPC bound retries. Beyond it a failure is raised without
    retrying.

    Built from ``RETRY_BUDGET``: ``{"RATIO": 0.2, "MIN_RETRIES_PER_SECOND": 1.0,
    "WINDOW": 10.0}`` (these are the defaults of keys left out)."""

    ratio: float = 0.2
    min_retries_per_second: float = 1.0
    window: float = 10.0

    @property
    def min_retries(self) -> float:
        """Retries always allowed per window."""
        return self.min_retries_per_second * self.window

    @classmethod
    def parse(
        cls, value: object, where: str = 'INTEGRATIONS["RETRY_BUDGET"]'
    ) -> RetryBudget | None:
        """The budget ``value`` describes (None for None); ``ImproperlyConfigured``, naming
        ``where``, for anything else."""
        known = {"RATIO": "ratio", "MIN_RETRIES_PER_SECOND": "min_retries_per_second",
                 "WINDOW": "window"}  # fmt: skip
        values = number_fields(value, where, known, '{"RATIO": 0.2}')
        if values is None:
            return None
        budget = cls(**values)
        if not 0 <= budget.ratio <= 10:
            raise ImproperlyConfigured(f"{where}['RATIO'] must be in [0, 10].")
        if not 0 <= budget.min_retries_per_second <= 1_000_000:
            raise ImproperlyConfigured(f"{where}['MIN_RETRIES_PER_SECOND'] must be 0 or more.")
        if not 0.1 <= budget.window <= 3600:
            raise ImproperlyConfigured(f"{where}['WINDOW'] must be in [0.1, 3600] seconds.")
        return budget
