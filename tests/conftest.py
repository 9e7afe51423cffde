"""Fixtures shared by the whole suite. App-specific ones live in tests/<app>/conftest.py."""

from __future__ import annotations

import pytest
from django.core.cache import cache


@pytest.fixture(autouse=True)
def _clear_cache():
    """Each test starts with an empty Django cache (Redis, in a database of its own)."""
    cache.clear()
    yield
