"""An occurred time outside what Python can read back (years 1-9999 in UTC) never reaches the
database: the admin, the operator API, processing and replay keep working. And migration 0003
empties such values stored by earlier versions, so an operator who was bitten gets them back.

Real view, real PostgreSQL (which would store year 10000 and then fail every read of the row).
"""

from __future__ import annotations

import importlib
import json
from datetime import UTC, datetime

import pytest
from django.apps import apps
from django.db import DataError, connection
from django.urls import reverse

from tests import postgres
from tests.webhooks.factories import WebhookEventFactory
from webhooks import on, processing, services
from webhooks.models import WebhookEvent
from webhooks.testing import build_request, send_request

pytestmark = pytest.mark.django_db

Status = WebhookEvent.Status
#: Legal ISO 8601 values whose UTC time is year 10000 and year 0.
OUT_OF_RANGE = ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"]
SIGNED_AT = 1_900_000_000  # within the tolerance of ``now`` below


def read_everywhere(admin_client, event: WebhookEvent) -> None:
    """The pages and answers that read the row: each works."""
    changelist = admin_client.get(reverse("admin:webhooks_webhookevent_changelist"))
    assert changelist.status_code == 200
    assert event.event_id in changelist.content.decode()
    change = admin_client.get(reverse("admin:webhooks_webhookevent_change", args=[event.pk]))
    assert change.status_code == 200
    listed = admin_client.get("/api/webhook-events/")
    assert listed.status_code == 200
    assert [row["id"] for row in listed.json()["results"]] == [event.pk]
    detail = admin_client.get(f"/api/webhook-events/{event.pk}/")
    assert detail.status_code == 200
    assert detail.json()["event_id"] == event.event_id


@pytest.mark.parametrize("when", OUT_OF_RANGE)
def test_standard_webhooks_timestamp_out_of_range(client, admin_client, handlers, when):
    handled = []
    on("acme", "contact.created")(lambda event: handled.append(event.occurred_at))
    payload = {"type": "contact.created", "timestamp": when, "data": {"id": "c_1"}}
    request = build_request("acme", json.dumps(payload).encode())
    response = send_request(client, request)
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "accepted"

    event = WebhookEvent.objects.get()
    # The payload's time is unusable, so the occurred time is what any unusable payload time
    # gives: the signed webhook-timestamp (DESIGN.md: "the payload's timestamp or else
    # webhook-timestamp"), in UTC, within range.
    signed = int(request.headers["webhook-timestamp"])
    assert event.occurred_at == datetime.fromtimestamp(signed, tz=UTC)
    read_everywhere(admin_client, event)

    assert processing.process_event(event.pk) == Status.PROCESSED
    assert handled == [event.occurred_at]
    services.replay_event(event)
    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.RECEIVED, 0)
    assert processing.process_event(event.pk) == Status.PROCESSED
    read_everywhere(admin_client, event)


@pytest.mark.parametrize("created", [253_402_300_800, -62_135_596_801, 1e20, 10**30])
def test_stripe_created_out_of_range_is_left_empty(client, admin_client, created):
    payload = {"id": "evt_far", "type": "invoice.paid", "created": created, "data": {}}
    response = send_request(client, build_request("stripe", payload))
    assert response.status_code == 200, response.content
    event = WebhookEvent.objects.get()
    assert event.occurred_at is None
    read_everywhere(admin_client, event)


# -- migration 0003: rows stored by earlier versions ------------------------------------------


def store_raw_occurred_at(event: WebhookEvent, value: str) -> None:
    """Write ``value`` as PostgreSQL reads it, as the old code let it be stored."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {WebhookEvent._meta.db_table} SET occurred_at = %s::timestamptz WHERE id = %s",
            [value, event.pk],
        )


@postgres.SQL
def test_migration_0003_empties_unreadable_occurred_at(admin_client):
    migration = importlib.import_module("webhooks.migrations.0003_clear_unreadable_occurred_at")
    kept = {
        "last": ("9999-12-31 23:59:59.999999+00", datetime(9999, 12, 31, 23, 59, 59, 999999, UTC)),
        "first": ("0001-01-01 00:00:00+00", datetime(1, 1, 1, tzinfo=UTC)),
        "usual": ("2026-03-01 12:00:00+00", datetime(2026, 3, 1, 12, tzinfo=UTC)),
    }
    unreadable = [
        "10000-01-01 00:00:00+00",
        "10000-01-01 23:58:59+00",
        "0001-12-31 10:00:00+00 BC",
        "0001-12-31 23:59:59.999999+00 BC",
    ]
    events = {}
    for name, (raw, _) in kept.items():
        events[name] = WebhookEventFactory()
        store_raw_occurred_at(events[name], raw)
    for raw in unreadable:
        store_raw_occurred_at(WebhookEventFactory(), raw)
    with pytest.raises(DataError):  # what an operator saw
        list(WebhookEvent.objects.values_list("occurred_at", flat=True))

    with connection.schema_editor(atomic=False) as schema_editor:
        migration.clear_unreadable_occurred_at(apps, schema_editor)

    values = dict(WebhookEvent.objects.values_list("pk", "occurred_at"))
    assert len(values) == len(kept) + len(unreadable)
    for name, (_, expected) in kept.items():
        assert values.pop(events[name].pk) == expected
    assert set(values.values()) == {None}
    assert admin_client.get(reverse("admin:webhooks_webhookevent_changelist")).status_code == 200
    assert admin_client.get("/api/webhook-events/").status_code == 200


def test_migration_0003_follows_0002():
    migration = importlib.import_module("webhooks.migrations.0003_clear_unreadable_occurred_at")
    assert migration.Migration.dependencies == [("webhooks", "0002_remove_endpoint_status_index")]
