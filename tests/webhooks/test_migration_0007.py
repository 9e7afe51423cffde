"""Migration 0007 (handler runs) on a database holding events stored before it: they keep their
status, have no runs, and are processed as before (every matching handler) when processed
again, getting runs from then on."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from tests.handler_runs import record_run_as, runs_as
from webhooks import on, processing, services
from webhooks.models import HandlerRun, WebhookEvent

BEFORE = [("webhooks", "0006_processing_attempts")]
AFTER = [("webhooks", "0007_handler_runs")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.fixture
def latest_schema():
    """Migrate back to the latest migrations after the test (later ones, such as 0008's
    ``OrderingState``, are needed by the tests that follow), whatever its outcome."""
    yield
    executor = MigrationExecutor(connection)
    migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_events_stored_before_runs_existed_migrate_and_are_processed_as_before(
    handlers, runs, latest_schema
):
    old_apps = migrate(BEFORE)
    try:
        assert "webhooks_handlerrun" not in connection.introspection.table_names()
        OldEvent = old_apps.get_model("webhooks", "WebhookEvent")
        now = timezone.now()
        common = {"endpoint": "stripe", "event_type": "test.old", "body": b"{}", "payload": {},
                  "headers": {}, "received_at": now}  # fmt: skip
        processed = OldEvent.objects.create(event_id="evt_old_1", status="processed", attempts=1,
                                            processed_at=now, **common)  # fmt: skip
        failed = OldEvent.objects.create(event_id="evt_old_2", status="failed", attempts=8,
                                         last_error="RuntimeError: boom", **common)  # fmt: skip
    finally:
        # Through 0007 to the latest (the models below have the later migrations' columns).
        migrate(AFTER)
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    assert WebhookEvent.objects.get(pk=processed.pk).status == "processed"
    assert WebhookEvent.objects.get(pk=failed.pk).last_error == "RuntimeError: boom"
    assert not HandlerRun.objects.exists()  # nothing backfilled: the table starts empty

    @on("stripe", "test.old")
    def one(event):
        record_run_as(event, "one")

    @on("stripe", "test.old")
    def two(event):
        record_run_as(event, "two")

    # The default replay of an old failed event (no failed runs to choose) runs every handler.
    services.replay_event(WebhookEvent.objects.get(pk=failed.pk), sync=True)
    assert runs_as("evt_old_2", "one") == [1] and runs_as("evt_old_2", "two") == [1]
    assert set(HandlerRun.objects.filter(event_id=failed.pk).values_list("status", flat=True)) == {
        "processed"
    }
    assert processing.process_event(processed.pk) is None  # finished: left alone
    assert runs_as("evt_old_1", "one") == []
