"""Fixtures for the integrations tests: a fake vendor on 127.0.0.1 and instant backoff. The
clean process-local state (breaker snapshots, pooled connections) around every test comes from
django-tether's pytest plugin (``tether.pytest_plugin``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integrations.testing import FakeVendor, InstantBackoff, instant_backoff
from tests.integrations.rates import Rates, configure


@pytest.fixture
def vendor() -> Iterator[FakeVendor]:
    with FakeVendor() as fake:
        yield fake


@pytest.fixture
def backoff() -> Iterator[InstantBackoff]:
    with instant_backoff() as clock:
        yield clock


@pytest.fixture
def rates(vendor, settings, backoff) -> Rates:
    """The "rates" client (tests/integrations/rates.py) on the fake vendor, quick policies."""
    configure(settings, vendor.url)
    return Rates()
