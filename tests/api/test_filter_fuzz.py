"""Any filter value gives a 200 or a 400 naming the field, never a 500 (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.webhooks.factories import WebhookEventFactory

pytestmark = pytest.mark.django_db

FILTERS = ("endpoint", "status", "type", "event_id", "since", "until", "page_size", "cursor")
values = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["[", "*[a-", "(?", "\\", "%", "_", "*", "**", "a.*.b", "2026-02-30", "0", "-1", "1e9"]
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(params=st.dictionaries(st.sampled_from(FILTERS), values, min_size=1, max_size=3))
def test_list_filters_never_500(api, params):
    response = api.get("/api/webhook-events/", params)
    assert response.status_code in (200, 400), (params, response.content[:300])
    if response.status_code == 400:
        assert set(response.json()) <= set(FILTERS)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.dictionaries(
        st.sampled_from(("endpoint", "status", "type", "event_id", "since", "until", "limit")),
        values | st.integers() | st.lists(values, max_size=3) | st.none(),
        max_size=3,
    )
)
def test_bulk_replay_bodies_never_500(api, body):
    response = api.post("/api/webhook-events/replay/", {**body, "dry_run": True}, format="json")
    assert response.status_code in (200, 400), (body, response.content[:300])


@pytest.fixture(autouse=True)
def _some_events(db):
    WebhookEventFactory(event_type="invoice.paid")
    WebhookEventFactory(endpoint="github", event_type="pull_request.opened")
