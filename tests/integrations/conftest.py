"""Fixtures for the integrations tests: a fake vendor on 127.0.0.1, instant backoff, and a
clean process-local state (breaker snapshots, pooled connections) around every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integrations.breaker import clear_local_cache
from integrations.client import close_pools
from integrations.testing import FakeVendor, InstantBackoff, instant_backoff


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    """The database is rolled back after each test: forget what this process cached of it."""
    clear_local_cache()
    yield
    clear_local_cache()
    close_pools()


@pytest.fixture
def vendor() -> Iterator[FakeVendor]:
    with FakeVendor() as fake:
        yield fake


@pytest.fixture
def backoff() -> Iterator[InstantBackoff]:
    with instant_backoff() as clock:
        yield clock
