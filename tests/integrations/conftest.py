"""Fixtures for the integrations tests: a fake vendor on 127.0.0.1 and instant backoff. The
clean process-local state (breaker snapshots, pooled connections) around every test comes from
django-tether's pytest plugin (``tether.pytest_plugin``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from integrations.testing import FakeVendor, InstantBackoff, instant_backoff
from tests.integrations.rates import client_factory, configure


@pytest.fixture
def vendor() -> Iterator[FakeVendor]:
    with FakeVendor() as fake:
        yield fake


@pytest.fixture
def backoff() -> Iterator[InstantBackoff]:
    with instant_backoff() as clock:
        yield clock


@pytest.fixture(params=["sync", "async"])
def make_rates(request) -> Callable[..., Any]:
    """Makes the "rates" client, once as ``ServiceClient`` and once as ``AsyncServiceClient``
    (driven through ``tests.integrations.rates.Awaited``): the contract tests that take it run
    against both clients."""
    return client_factory(request.param)


@pytest.fixture
def rates(make_rates, vendor, settings, backoff) -> Any:
    """The "rates" client (tests/integrations/rates.py) on the fake vendor, quick policies;
    sync and async (``make_rates``)."""
    configure(settings, vendor.url)
    return make_rates()


@pytest.fixture
def sync_rates(vendor, settings, backoff) -> Any:
    """The "rates" ``ServiceClient`` only (tests of the sync client's own pool)."""
    configure(settings, vendor.url)
    return client_factory("sync")()
