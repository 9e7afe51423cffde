"""``with_fallback``: serve the last good value from Django's cache when the vendor fails.

::

    class ExchangeRates(ServiceClient):
        service = "exchange-rates"

        @with_fallback("rates:{currency}", ttl=60, stale_ttl=86_400)
        def rate(self, currency: str) -> Decimal:
            ...

A value is fresh for ``ttl`` seconds (returned from the cache without calling the vendor) and
kept for ``stale_ttl`` seconds in all: when a call fails with an ``IntegrationError`` (timeout,
5xx, open breaker, ...), a value stored less than ``stale_ttl`` ago is returned instead, with a
WARNING saying it is stale and how old it is. With none, the error is raised. Other exceptions
(bugs) are never hidden. Values go through the cache's serializer (pickle by default).

An ``async def`` method (``AsyncServiceClient``) is decorated the same way: the same rules, the
cache read and written through its async API (``aget``/``aset``).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from django.core.cache import caches

from .exceptions import IntegrationError

__all__ = ["with_fallback"]

logger = logging.getLogger("integrations.fallback")

P = ParamSpec("P")
R = TypeVar("R")

KEY_PREFIX = "tether:fallback:"
_MAX_KEY = 200


def _cache_key(raw: str) -> str:
    if len(raw) > _MAX_KEY or any(c.isspace() or ord(c) < 33 for c in raw):
        raw = hashlib.sha256(raw.encode()).hexdigest()
    return KEY_PREFIX + raw


def with_fallback(
    key: str | Callable[..., str],
    *,
    ttl: float,
    stale_ttl: float,
    cache: str = "default",
    clock: Callable[[], float] = time.time,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a method (or function) whose result can be served stale when the vendor fails.

    ``key`` is a ``str.format`` template over the function's arguments by name
    (``"rates:{currency}"``; ``{self.service}`` works too) or a callable taking the same
    arguments and returning a string. ``ttl``: seconds a stored value is served without a call
    (0 = always call). ``stale_ttl``: seconds a value is kept in all, for fallbacks
    (``>= ttl``). ``cache``: the Django cache alias. ``clock``: seconds since the epoch.
    """
    if ttl < 0 or stale_ttl <= 0 or stale_ttl < ttl:
        raise ValueError("with_fallback needs 0 <= ttl <= stale_ttl and stale_ttl > 0")

    def decorator(func: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(func)

        def key_for(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            if callable(key):
                return _cache_key(str(key(*args, **kwargs)))
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return _cache_key(key.format(**bound.arguments))

        def fresh(entry: tuple[float, R] | None, now: float) -> bool:
            return entry is not None and ttl > 0 and now - entry[0] < ttl

        def stale_or_raise(
            error: IntegrationError, entry: tuple[float, R] | None, now: float, cache_key: str
        ) -> R:
            if entry is None or now - entry[0] >= stale_ttl:
                raise error
            age = max(0.0, now - entry[0])
            logger.warning(
                "%s.%s failed (%s): serving the stale value of %s, %.0f s old",
                error.service,
                error.operation,
                type(error).__name__,
                cache_key,
                age,
                extra={
                    "service": error.service,
                    "operation": error.operation,
                    "fallback_key": cache_key,
                    "stale": True,
                    "age": age,
                    "error": type(error).__name__,
                },
            )
            return entry[1]

        if inspect.iscoroutinefunction(func):
            # The same rules for a coroutine (``AsyncServiceClient``): the cache through its
            # async API (``aget``/``aset``), never a blocking call on the event loop.
            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                cache_key = key_for(args, kwargs)
                store = caches[cache]
                entry = await store.aget(cache_key)
                now = clock()
                if fresh(entry, now):
                    return entry[1]
                try:
                    value = await func(*args, **kwargs)
                except IntegrationError as error:
                    return stale_or_raise(error, entry, now, cache_key)
                await store.aset(cache_key, (clock(), value), timeout=stale_ttl)
                return value

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            cache_key = key_for(args, kwargs)
            store = caches[cache]
            entry: tuple[float, R] | None = store.get(cache_key)  # (stored at, value)
            now = clock()
            if fresh(entry, now):
                return entry[1]  # type: ignore[index]
            try:
                value = func(*args, **kwargs)
            except IntegrationError as error:
                return stale_or_raise(error, entry, now, cache_key)
            store.set(cache_key, (clock(), value), timeout=stale_ttl)
            return value

        return wrapper

    return decorator
