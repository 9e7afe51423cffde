"""The ordering states in the admin: read-only, searchable by key and event, a version shown as
people read it, and deletable (the way to forget a wrong newest version)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from tests.webhooks.factories import WebhookEventFactory
from webhooks import processing
from webhooks.models import OrderingState, WebhookEvent

pytestmark = pytest.mark.django_db

LIST = reverse("admin:webhooks_orderingstate_changelist")


@pytest.fixture
def states():
    time = Decimal(int(datetime(2026, 12, 1, 10, 5, tzinfo=UTC).timestamp()))
    return [
        OrderingState.objects.create(
            handler="shop.webhooks.sync_subscription", key="sub_1", version=time,
            version_kind="time", event_id="evt_newest",
            applied_at=datetime(2026, 12, 1, 10, 6, tzinfo=UTC),
        ),
        OrderingState.objects.create(
            handler="shop.webhooks.sync_order", key="ord_7", version=Decimal(42),
            version_kind="number", event_id="evt_42",
        ),
        OrderingState.objects.create(handler="shop.webhooks.sync_order", key="ord_8"),
    ]  # fmt: skip


def test_the_list_reads_versions_as_times_or_numbers_and_links_the_event(admin_client, states):
    page = admin_client.get(LIST).content.decode()
    assert "2026-12-01T10:05:00+00:00" in page  # a time version, not its Unix seconds
    assert ">42<" in page
    events = reverse("admin:webhooks_webhookevent_changelist")
    assert f'href="{events}?q=evt_newest"' in page
    assert "sub_1" in page and "ord_7" in page and "ord_8" in page


@pytest.mark.parametrize(
    ("query", "keys"),
    [("sub_1", {"sub_1"}), ("evt_42", {"ord_7"}), ("sync_order", {"ord_7", "ord_8"}),
     ("sub_", set()), ("x" * 10_000, set())],
)  # fmt: skip
def test_search_by_exact_key_or_event_or_part_of_the_handler(admin_client, states, query, keys):
    response = admin_client.get(LIST, {"q": query})
    assert response.status_code == 200
    assert {state.key for state in response.context["cl"].result_list} == keys


def test_nothing_can_be_added_or_changed(admin_client, states):
    assert admin_client.get(reverse("admin:webhooks_orderingstate_add")).status_code == 403
    change = reverse("admin:webhooks_orderingstate_change", args=[states[0].pk])
    assert admin_client.get(change).status_code == 200  # read-only view
    response = admin_client.post(change, {"key": "forged", "handler": "x"})
    assert response.status_code == 403
    states[0].refresh_from_db()
    assert states[0].key == "sub_1"


def test_a_missing_or_malformed_id_is_a_clean_not_found(admin_client, states):
    for pk in ("999999", "abc", "1%00"):
        response = admin_client.get(f"{LIST}{pk}/change/", follow=True)
        assert response.status_code == 200  # the admin redirects to the list with a message
        assert "exist. Perhaps it was deleted?" in response.content.decode()


def test_deleting_a_state_lets_the_keys_next_event_apply(admin_client, handlers):
    """A wrong far-future version made every later event stale; forgetting it is the way out."""
    from webhooks import on

    applied = []

    @on("stripe", "test.ordered", ordering_key="data.object.id", ordering_version="data.v")
    def sync(event):
        applied.append(event.payload["data"]["v"])

    def deliver(version: int) -> WebhookEvent:
        event = WebhookEventFactory(
            event_type="test.ordered", payload={"data": {"object": {"id": "sub_9"}, "v": version}}
        )
        processing.process_event(event.pk)
        return event

    deliver(10**12)  # the wrong one
    deliver(5)
    assert applied == [10**12]  # 5 was skipped as stale
    [state] = OrderingState.objects.filter(key="sub_9")

    delete = reverse("admin:webhooks_orderingstate_delete", args=[state.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 302
    deliver(6)
    assert applied == [10**12, 6]
    assert OrderingState.objects.get(key="sub_9").version == 6


def test_a_user_without_the_delete_permission_cannot_delete(client, states):
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_orderingstate"))
    client.force_login(user)
    assert client.get(LIST).status_code == 200
    delete = reverse("admin:webhooks_orderingstate_delete", args=[states[0].pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert OrderingState.objects.filter(pk=states[0].pk).exists()
