"""Fixtures for the Stripe tests: a FakeStripe over real HTTP and settings pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings

from integrations.testing import InstantBackoff, aclose_connections
from integrations.testing.stripe import FakeStripe
from integrations.vendors.stripe import StripeService

API_KEY = "sk_test_51TetherSecretKeyDoNotLeak0123456789abcdef"


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    with FakeStripe(api_key=API_KEY) as fake:
        yield fake


def stripe_settings(base_url: str | None, **overrides: Any) -> dict[str, Any]:
    service: dict[str, Any] = {
        "API_KEY": API_KEY,
        "TIMEOUT": {"CONNECT": 1.0, "READ": 2.0, "WRITE": 2.0, "POOL": 1.0},
        "RETRY": {"MAX_ATTEMPTS": 3, "BASE_DELAY": 0.1, "MAX_DELAY": 1.0, "DEADLINE": 10.0},
        "BREAKER": {"FAILURE_THRESHOLD": 5, "RESET_TIMEOUT": 30.0},
    }
    if base_url is not None:
        service["BASE_URL"] = base_url
    for key, value in overrides.items():
        if isinstance(value, dict):
            service[key] = {**service.get(key, {}), **value}
        else:
            service[key] = value
    return {"SERVICES": {"stripe": service}}


@pytest.fixture
def configure(fake_stripe: FakeStripe) -> Iterator[Any]:
    """``configure(**overrides)`` points the "stripe" service at the fake (with overrides)."""
    active: list[Any] = []

    def apply(**overrides: Any) -> None:
        while active:
            active.pop().disable()
        manager = override_settings(INTEGRATIONS=stripe_settings(fake_stripe.base_url, **overrides))
        manager.enable()
        active.append(manager)

    apply()
    yield apply
    while active:
        active.pop().disable()


class AwaitedStripe:
    """A ``StripeService`` whose calls go through its ``*_async`` methods, driven from a sync
    test: each runs to its end on an event loop (asgiref's ``async_to_sync``: the breaker's
    database work runs in the test's thread), whose connections are then closed."""

    def __init__(self, service: StripeService) -> None:
        self.service = service

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.service, f"{name}_async", None)
        if method is None:
            return getattr(self.service, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            async def run() -> Any:
                try:
                    return await method(*args, **kwargs)
                finally:
                    await self.service.aclose()
                    await aclose_connections()

            return async_to_sync(run)()

        return call


@pytest.fixture(params=["sync", "async"])
def service(request, configure: Any, backoff: InstantBackoff) -> Iterator[Any]:
    """``StripeService``, once called through its sync methods and once through its
    ``*_async`` ones: the tests that take it hold for both."""
    svc = StripeService()
    yield svc if request.param == "sync" else AwaitedStripe(svc)
    svc.close()
