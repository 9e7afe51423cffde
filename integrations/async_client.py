"""``AsyncServiceClient``: ``ServiceClient`` for code running on an event loop (ASGI views,
asyncio workers), on ``httpx.AsyncClient``.

It is the same client with an awaited call: everything but sending the request comes from
``ServiceClientBase`` (settings and policies, where a request may go, headers and idempotency keys,
error mapping, parsing), and every call runs under the service's ``CallPolicy`` through
``CallPolicy.run_async``, whose runner (``integrations.resilience.call_with_resilience_async``)
makes the same decisions as the sync one: retries of what is retryable only, jittered backoff,
``Retry-After``, the deadline, the shared circuit breaker (its database work off the event loop,
``integrations.breaker.AsyncBreaker``) and the fleet policies (redis.asyncio, the same scripts)::

    class ExchangeRates(AsyncServiceClient):
        service = "exchange-rates"

        async def rate(self, currency: str) -> Decimal:
            data = await self.get_json(f"/v1/rates/{currency}", operation="rate",
                                       required=["rate"])
            return Decimal(str(data["rate"]))

Connections are pooled per event loop and service; ``integrations.client.aclose_pools()``
closes the running loop's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import httpx

from .client import ServiceClientBase, _async_pool_for, _shown, _unparsed
from .resilience import AttemptInfo
from .transport import httpx_timeout

__all__ = ["AsyncServiceClient"]

T = TypeVar("T")


class AsyncServiceClient(ServiceClientBase):
    """A vendor's HTTP API, called with ``await``; the same class attributes, settings and
    behaviour as ``ServiceClient``. A cancelled call (its task cancelled) gives back its breaker
    permit and bulkhead places and closes its connection."""

    async def request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        idempotency_key: str | None = None,
        **httpx_kwargs: Any,
    ) -> httpx.Response:
        """``ServiceClient.request``, awaited."""
        method, url, headers, httpx_kwargs = self._prepare_request(
            method, path, operation, idempotency_key, httpx_kwargs
        )
        return await self._call(method, url, operation, headers, httpx_kwargs, parse=_unparsed)

    async def get_json(
        self,
        path: str,
        *,
        operation: str,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        required: Iterable[str] = (),
    ) -> Any:
        """GET ``path`` and return its parsed JSON (``required`` dotted paths must be present)."""
        return await self._json_call(
            "GET", path, operation, headers, {"params": params}, required, idempotency_key=None
        )

    async def post_json(
        self,
        path: str,
        *,
        operation: str,
        json: Any = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        required: Iterable[str] = (),
    ) -> Any:
        return await self._json_call(
            "POST", path, operation, headers, {"json": json}, required,
            idempotency_key=idempotency_key,
        )  # fmt: skip

    async def put_json(
        self,
        path: str,
        *,
        operation: str,
        json: Any = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        required: Iterable[str] = (),
    ) -> Any:
        return await self._json_call(
            "PUT", path, operation, headers, {"json": json}, required,
            idempotency_key=idempotency_key,
        )  # fmt: skip

    async def patch_json(
        self,
        path: str,
        *,
        operation: str,
        json: Any = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        required: Iterable[str] = (),
    ) -> Any:
        return await self._json_call(
            "PATCH", path, operation, headers, {"json": json}, required,
            idempotency_key=idempotency_key,
        )  # fmt: skip

    async def delete(
        self, path: str, *, operation: str, idempotency_key: str | None = None
    ) -> httpx.Response:
        return await self.request(
            "DELETE", path, operation=operation, idempotency_key=idempotency_key
        )

    # Internals.

    async def _json_call(
        self,
        method: str,
        path: str,
        operation: str,
        headers: Mapping[str, str] | None,
        kwargs: dict[str, Any],
        required: Iterable[str],
        *,
        idempotency_key: str | None,
    ) -> Any:
        url, merged, kwargs, parse = self._prepare_json(
            method, path, operation, headers, kwargs, required, idempotency_key
        )
        return await self._call(method, url, operation, merged, kwargs, parse=parse)

    async def _call(
        self,
        method: str,
        url: httpx.URL,
        operation: str,
        headers: dict[str, str],
        kwargs: dict[str, Any],
        *,
        parse: Callable[[httpx.Response], T],
    ) -> T:
        """One call under this client's ``CallPolicy`` (``run_async``)."""
        policy = self.call_policy()
        timeout = policy.timeout
        client = _async_pool_for(self.service)
        kwargs.pop("timeout", None)

        async def attempt(info: AttemptInfo) -> T:
            try:
                response = await client.request(
                    method,
                    url,
                    headers=headers or None,
                    timeout=httpx_timeout(timeout.capped(info.remaining)),
                    **kwargs,
                )
            except httpx.HTTPError as exc:
                raise self._map_transport_error(exc, operation, _shown(method, url)) from exc
            return self._answered(response, operation, method, url, parse)

        return await policy.run_async(attempt, operation=operation)
