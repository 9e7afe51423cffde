"""Fixtures for the integrations tests: a fake vendor on 127.0.0.1, instant backoff, and a
clean process-local state (breaker snapshots, pooled connections) around every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integrations.testing import FakeVendor, InstantBackoff, instant_backoff, reset_local_state


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    """The database is rolled back after each test: forget what this process cached of it."""
    reset_local_state()
    yield
    reset_local_state()


@pytest.fixture
def vendor() -> Iterator[FakeVendor]:
    with FakeVendor() as fake:
        yield fake


@pytest.fixture
def backoff() -> Iterator[InstantBackoff]:
    with instant_backoff() as clock:
        yield clock
