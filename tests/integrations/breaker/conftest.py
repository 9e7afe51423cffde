"""Fixtures for the breaker tests: a clean process-local snapshot cache and a movable clock."""

from __future__ import annotations

import pytest

from integrations.breaker import ManualClock, clear_local_cache


@pytest.fixture(autouse=True)
def _clear_breaker_cache():
    clear_local_cache()
    yield
    clear_local_cache()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
