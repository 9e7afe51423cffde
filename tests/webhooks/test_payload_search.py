"""The admin's search by a payload value (PostgreSQL): a string value anywhere in the payload,
matched whole, beside the exact event id; and the opt-in trigram index serves that query."""

from __future__ import annotations

import pytest
from django.db import connection
from django.urls import reverse

from tests import postgres
from tests.webhooks.factories import WebhookEventFactory
from webhooks import selectors
from webhooks.models import WebhookEvent

CHANGELIST = "admin:webhooks_webhookevent_changelist"


def intent(pi, customer):
    return {"type": "payment_intent.succeeded",
            "data": {"object": {"id": pi, "customer": customer, "amount": 1099}}}  # fmt: skip


@pytest.fixture
def events(db):
    return [
        WebhookEventFactory(payload=intent("pi_3Q2w3E", "cus_ALICE")),
        WebhookEventFactory(payload=intent("pi_9Z8x7C", "cus_ALICE")),
        WebhookEventFactory(payload=intent("pi_other", "cus_BOB")),
    ]


def found(admin_client, term):
    response = admin_client.get(reverse(CHANGELIST), {"q": term})
    assert response.status_code == 200
    return {event.pk for event in response.context["cl"].result_list}


@postgres.PAYLOAD_SEARCH
def test_a_payment_intent_or_customer_id_finds_its_events(admin_client, events):
    assert found(admin_client, "pi_3Q2w3E") == {events[0].pk}
    assert found(admin_client, "cus_ALICE") == {events[0].pk, events[1].pk}
    assert found(admin_client, "  cus_BOB ") == {events[2].pk}
    assert found(admin_client, events[2].event_id) == {events[2].pk}  # the event id still


def test_a_value_matches_whole_and_wildcards_are_literal(admin_client, events):
    assert found(admin_client, "pi_3Q2w") == set()  # part of a value
    assert found(admin_client, "pi%") == set()
    assert found(admin_client, "pi_3Q2w3_") == set()  # "_" is not a wildcard
    assert found(admin_client, "1099") == set()  # numbers are not strings
    assert found(admin_client, 'x" OR "1"="1') == set()


def test_a_very_long_term_searches_the_event_id_only(admin_client, db):
    long_value = "v" * (selectors.PAYLOAD_SEARCH_MAX_CHARS + 1)
    WebhookEventFactory(payload={"data": {"object": {"id": long_value}}})
    assert found(admin_client, long_value) == set()


@postgres.PAYLOAD_SEARCH
def test_the_opt_in_trigram_index_serves_the_admins_query(events):
    sql = selectors.PAYLOAD_SEARCH_INDEX_SQL.replace(" CONCURRENTLY", "")  # in a transaction
    with connection.cursor() as cursor:
        cursor.execute(sql)
        cursor.execute("SET LOCAL enable_seqscan = off")
        query = selectors.search_events(WebhookEvent.objects.all(), "pi_3Q2w3E").order_by()
        cursor.execute("EXPLAIN " + str(query.query.sql_with_params()[0]),
                       query.query.sql_with_params()[1])  # fmt: skip
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert selectors.PAYLOAD_SEARCH_INDEX in plan
    assert list(query) == [events[0]]
