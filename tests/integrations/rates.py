"""The client the ``test_client_*`` files call: service "rates" on a FakeVendor, with quick
policies."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync

from integrations import AsyncServiceClient, ServiceClient
from integrations.testing import aclose_connections

API_KEY = "sk_live_h3_SUPER_SECRET_51Hx"


class Rates(ServiceClient):
    service = "rates"

    def default_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def rate(self, currency: str) -> Decimal:
        data = self.get_json(f"/v1/rates/{currency}", operation="rate", required=["rate"])
        return Decimal(str(data["rate"]))


class AsyncRates(AsyncServiceClient):
    """``Rates`` on an event loop."""

    service = "rates"

    def default_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    async def rate(self, currency: str) -> Decimal:
        data = await self.get_json(f"/v1/rates/{currency}", operation="rate", required=["rate"])
        return Decimal(str(data["rate"]))


class Awaited:
    """An ``AsyncServiceClient`` driven from a sync test, so that one test body runs against
    both clients: each coroutine method runs to its end on an event loop through asgiref's
    ``async_to_sync`` (the breaker's database work, ``sync_to_async``, then runs in the test's
    thread, inside its transaction), and the loop's connections are closed after it."""

    def __init__(self, client: AsyncServiceClient) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            async def run() -> Any:
                try:
                    return await attribute(*args, **kwargs)
                finally:
                    await aclose_connections()

            return async_to_sync(run)()

        return call


def client_factory(kind: str) -> Callable[..., Any]:
    """``Rates`` (``kind`` "sync") or an ``Awaited(AsyncRates)`` ("async"), made with the
    constructor's arguments."""
    if kind == "sync":
        return Rates
    return lambda **kwargs: Awaited(AsyncRates(**kwargs))


def configure(settings, vendor_url: str, **service) -> None:
    """Point service "rates" at the fake, with quick policies unless told otherwise."""
    entry = {
        "BASE_URL": vendor_url,
        "TIMEOUT": {"CONNECT": 1.0, "READ": 1.0, "WRITE": 1.0, "POOL": 1.0},
        "RETRY": {"MAX_ATTEMPTS": 3, "BASE_DELAY": 0.5, "MAX_DELAY": 4.0, "DEADLINE": 30.0},
        "BREAKER": {"FAILURE_THRESHOLD": 50},
    }
    for key, value in service.items():
        entry[key] = {**entry.get(key, {}), **value} if isinstance(value, dict) else value
    settings.INTEGRATIONS = {"SERVICES": {"rates": entry}}
