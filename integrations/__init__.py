"""django-tether outbound integrations: service clients with timeouts, retries, circuit breakers
stored in the database, and fallbacks. Names are imported on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "AsyncServiceClient",
    "BreakerPolicy",
    "BulkheadFull",
    "RateLimited",
    "RetryPolicy",
    "ServiceClient",
    "Throttled",
    "Timeout",
    "with_fallback",
]

if TYPE_CHECKING:
    from .async_client import AsyncServiceClient
    from .client import ServiceClient
    from .exceptions import BulkheadFull, RateLimited, Throttled
    from .fallback import with_fallback
    from .policies import BreakerPolicy, RetryPolicy, Timeout

_LOCATIONS = {
    "AsyncServiceClient": "async_client",
    "ServiceClient": "client",
    "with_fallback": "fallback",
    "BreakerPolicy": "policies",
    "RetryPolicy": "policies",
    "Timeout": "policies",
    "RateLimited": "exceptions",
    "BulkheadFull": "exceptions",
    "Throttled": "exceptions",
}


def __getattr__(name: str) -> Any:
    if name in _LOCATIONS:
        from importlib import import_module

        return getattr(import_module(f".{_LOCATIONS[name]}", __name__), name)
    raise AttributeError(f"module 'integrations' has no attribute {name!r}")
