"""Fixtures of the webhooks tests: handler registry isolation, handler runs, a real worker."""

from __future__ import annotations

import pytest

from tests import handler_runs
from tests.celery_worker import FAST_RETRIES, celery_worker, worker_factory
from webhooks.registry import registry

__all__ = ["FAST_RETRIES", "celery_worker", "worker_factory"]


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


CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


@pytest.fixture
def broker_down():
    """Point this process's Celery app at a closed port, as if the broker were down; ``yield``s
    a function that brings it back early (``broker_down()``)."""
    from sandbox_project.celery import app

    saved = app.conf.broker_url

    def switch(url):
        app.conf.broker_url = url
        # Drop the app's cached pools (as Celery does after a fork); kombu keeps one pool per
        # broker URL, so switching back finds the working one again.
        app._pool = None
        app.amqp._producer_pool = None

    switch(CLOSED_PORT_URL)
    yield lambda: switch(saved)
    switch(saved)
