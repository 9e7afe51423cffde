"""What the event list and page show an on-call engineer: times to the second, the status as a
badge, the last error's first line as a column; ``processed_at`` empty for an ignored event
(and migration 0006 clearing it on the ignored events stored before)."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

import pytest
from django.apps import apps
from django.db import connection
from django.test import override_settings
from django.urls import reverse

from tests.webhooks.factories import WebhookEventFactory
from webhooks import Ignore, on, processing, services
from webhooks import admin as webhooks_admin
from webhooks.models import WebhookEvent

Status = WebhookEvent.Status
CHANGELIST = "admin:webhooks_webhookevent_changelist"


@pytest.fixture
def event(db):
    return WebhookEventFactory(
        status=Status.FAILED, attempts=8,
        received_at=datetime(2026, 12, 5, 3, 4, 5, 678000, tzinfo=UTC),
        last_attempt_at=datetime(2026, 12, 5, 3, 9, 59, tzinfo=UTC),
        last_error="KeyError: 'customer'\nHandler: app.handlers.on_invoice\nTraceback (most...",
    )  # fmt: skip


@override_settings(TIME_ZONE="UTC")
def test_the_list_shows_seconds_a_status_badge_and_the_errors_first_line(admin_client, event):
    content = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "2026-12-05 03:04:05 UTC" in content
    assert 'border-radius:8px;font-weight:bold;white-space:nowrap">failed</span>' in content
    assert "background:#c62828" in content
    assert '<td class="field-last_error_short">KeyError: &#x27;customer&#x27;</td>' in content
    assert "Handler: app.handlers" not in content  # only the first line


def test_the_list_cuts_a_long_first_line(admin_client, db):
    WebhookEventFactory(status=Status.FAILED, last_error="ValueError: " + "v" * 500)
    content = admin_client.get(reverse(CHANGELIST)).content.decode()
    cut = "ValueError: " + "v" * (webhooks_admin.LIST_ERROR_CHARS - len("ValueError: ") - 1) + "…"
    assert f'<td class="field-last_error_short">{cut}</td>' in content


def test_the_list_sorts_by_received_at_to_the_second_column(admin_client, event):
    older = WebhookEventFactory(received_at=datetime(2026, 1, 1, tzinfo=UTC))
    response = admin_client.get(reverse(CHANGELIST), {"o": "6"})  # received_at_s ascending
    assert next(iter(response.context["cl"].result_list)) == older


@override_settings(TIME_ZONE="UTC")
def test_the_page_shows_times_to_the_second_and_the_whole_error(admin_client, event):
    url = reverse("admin:webhooks_webhookevent_change", args=[event.pk])
    content = admin_client.get(url).content.decode()
    assert "2026-12-05 03:04:05 UTC" in content and "2026-12-05 03:09:59 UTC" in content
    assert ">failed</span>" in content
    assert "Handler: app.handlers.on_invoice" in content  # the whole last error, in a <pre>


@pytest.mark.django_db
def test_an_ignored_event_has_no_processed_at(handlers):
    @on("stripe", "t.skip")
    def skip(event):
        raise Ignore("not ours")

    by_handler = WebhookEventFactory(event_type="t.skip")
    no_handler = WebhookEventFactory(event_type="t.nobody")
    by_operator = WebhookEventFactory(status=Status.FAILED)
    processing.process_event(by_handler.pk)
    processing.process_event(no_handler.pk)
    services.mark_ignored(by_operator)
    for event in (by_handler, no_handler, by_operator):
        event.refresh_from_db()
        assert (event.status, event.processed_at) == (Status.IGNORED, None)


@pytest.mark.django_db
def test_migration_0006_clears_processed_at_of_the_ignored_events_only():
    migration = importlib.import_module("webhooks.migrations.0006_processing_attempts")
    when = datetime(2026, 11, 1, tzinfo=UTC)
    ignored = WebhookEventFactory(status=Status.IGNORED, processed_at=when)
    processed = WebhookEventFactory(status=Status.PROCESSED, processed_at=when)
    # The data step uses no DDL: its schema editor is not entered (SQLite refuses to enter one
    # inside the test's transaction).
    migration.clear_processed_at_of_ignored(apps, connection.schema_editor())
    ignored.refresh_from_db()
    processed.refresh_from_db()
    assert ignored.processed_at is None
    assert processed.processed_at == when
    assert migration.Migration.dependencies == [("webhooks", "0005_signed_content_digest")]
