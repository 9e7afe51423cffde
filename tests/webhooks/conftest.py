"""Fixtures of the webhooks tests: handler registry isolation, handler runs (the real worker's
fixtures come from tests/celery_worker.py, a plugin of tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests import handler_runs
from tests.celery_worker import FAST_RETRIES
from webhooks.registry import registry

__all__ = ["FAST_RETRIES"]  # test_worker.py imports it from here


@pytest.fixture
def handlers():
    """The handler registry, restored after the test (register test handlers with ``@on``)."""
    saved = registry.snapshot()
    yield registry
    registry.restore(saved)


@pytest.fixture
def runs(django_db_setup, django_db_blocker):
    """The ``tether_handler_runs`` table, created and emptied: ``runs.runs(event_id)``."""
    with django_db_blocker.unblock():
        handler_runs.ensure_table()
        handler_runs.clear()
    return handler_runs


@pytest.fixture
def on_commit(django_capture_on_commit_callbacks):
    """``with on_commit(execute=True):`` runs on-commit callbacks inside a test transaction."""
    return django_capture_on_commit_callbacks
