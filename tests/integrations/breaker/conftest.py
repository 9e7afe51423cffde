"""Fixtures for the breaker tests: a movable clock. (The clean process-local state around each
test comes from django-tether's pytest plugin, ``tether.pytest_plugin``.)"""

from __future__ import annotations

import pytest

from integrations.breaker import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
