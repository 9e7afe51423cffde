"""Fixtures shared by the whole suite. App-specific ones live in tests/<app>/conftest.py."""

from __future__ import annotations

import pytest
from django.core.cache import cache


@pytest.fixture(autouse=True)
def _clear_cache():
    """Each test starts with an empty Django cache (Redis, in a database of its own) and no
    process-local circuit-breaker snapshot (a rolled-back test's rows must not linger there)."""
    from integrations.breaker import clear_local_cache

    cache.clear()
    clear_local_cache()
    yield


@pytest.fixture(autouse=True)
def _flush_webhook_dispatcher():
    """Publish, before the next test starts, what this test's events left in this process's
    dispatcher (``webhooks.dispatch``), so no message of one test lands in another's queue."""
    yield
    from webhooks import dispatch

    dispatch.flush()
