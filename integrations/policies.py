"""Policy objects: timeouts, retries and the circuit breaker, built from settings.

Precedence, lowest first: ``INTEGRATIONS`` global dicts, the service's entry in
``INTEGRATIONS["SERVICES"]``, then what a ``ServiceClient`` subclass or constructor passes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Self

from .conf import service_settings


def _from_dict(cls: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k.lower(): v for k, v in values.items() if k.lower() in names})


@dataclass(frozen=True)
class Timeout:
    """httpx's four timeouts, in seconds."""

    connect: float = 3.05
    read: float = 10.0
    write: float = 10.0
    pool: float = 5.0

    @classmethod
    def for_service(cls, service: str) -> Self:
        return _from_dict(cls, service_settings(service)["TIMEOUT"])

    def with_overrides(self, **changes: Any) -> Self:
        return replace(self, **changes)


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts, exponential backoff with full jitter, and an overall deadline per call."""

    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    deadline: float = 30.0

    @classmethod
    def for_service(cls, service: str) -> Self:
        return _from_dict(cls, service_settings(service)["RETRY"])

    def with_overrides(self, **changes: Any) -> Self:
        return replace(self, **changes)


@dataclass(frozen=True)
class BreakerPolicy:
    """When the breaker opens, how long it stays open, and how it is cached."""

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

    @classmethod
    def for_service(cls, service: str) -> Self:
        return _from_dict(cls, service_settings(service)["BREAKER"])

    def with_overrides(self, **changes: Any) -> Self:
        return replace(self, **changes)
