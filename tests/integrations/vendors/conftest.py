"""Fixtures for the Stripe tests: a FakeStripe over real HTTP and settings pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from integrations.testing import InstantBackoff
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


@pytest.fixture
def service(configure: Any, backoff: InstantBackoff) -> Iterator[StripeService]:
    svc = StripeService()
    yield svc
    svc.close()
