"""Fixtures shared by the whole suite. App-specific ones live in tests/<app>/conftest.py.

Process-local state (circuit-breaker snapshots, pooled connections, the health view's broker
probe) is reset around every test by django-tether's own pytest plugin (``tether.pytest_plugin``,
installed with the package), as in a user's suite."""

from __future__ import annotations

from collections import Counter

import pytest
from django.core.cache import cache

# The real-worker fixtures (celery_worker, worker_factory; db_worker_factory, Django Tasks'
# database worker), for every test directory.
pytest_plugins = ["tests.celery_worker", "tests.db_worker"]

#: Why the tests marked ``postgres`` were deselected in this run, with how many of each.
_needs_postgresql: Counter[str] = Counter()


def pytest_collection_modifyitems(config, items):
    """On a database other than PostgreSQL (``make test-sqlite``), deselect the tests marked
    ``@pytest.mark.postgres("why")``; every such marker must say why."""
    from django.conf import settings

    engine = settings.DATABASES["default"]["ENGINE"]
    on_postgresql = engine.endswith(("postgresql", "postgis"))
    kept, deselected = [], []
    for item in items:
        marker = item.get_closest_marker("postgres")
        if marker is None:
            kept.append(item)
            continue
        reason = marker.args[0] if marker.args else marker.kwargs.get("reason")
        if not reason:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.postgres needs a reason")
        if on_postgresql:
            kept.append(item)
        else:
            deselected.append(item)
            _needs_postgresql[reason] += 1
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_terminal_summary(terminalreporter):
    if _needs_postgresql:
        terminalreporter.section("deselected: they need PostgreSQL")
        for reason, count in sorted(_needs_postgresql.items()):
            terminalreporter.write_line(f"{count:5d}  {reason}")


@pytest.fixture(autouse=True)
def _clear_cache():
    """Each test starts with an empty Django cache (Redis, in a database of its own)."""
    cache.clear()
    yield


@pytest.fixture(autouse=True)
def _flush_webhook_dispatcher():
    """Publish, before the next test starts, what this test's events left in this process's
    dispatcher (``webhooks.dispatch``), so no message of one test lands in another's queue."""
    yield
    from webhooks import dispatch

    dispatch.flush()


@pytest.fixture
def broker_down():
    """Point this process's Celery app at a closed port, as if the broker were down; ``yield``s
    a function that brings it back early (``broker_down()``); restored after the test."""
    from sandbox_project.celery import app

    saved = app.conf.broker_url

    def switch(url):
        app.conf.broker_url = url
        # Drop the app's cached pools (as Celery does after a fork); kombu keeps one pool per
        # broker URL, so switching back finds the working one again.
        app._pool = None
        app.amqp._producer_pool = None

    switch("redis://127.0.0.1:1/0")  # port 1: nothing listens there
    yield lambda: switch(saved)
    switch(saved)
