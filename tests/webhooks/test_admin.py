"""Admin of webhook events: pages render, filters and search work, read-only, both actions."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from tests.webhooks.factories import WebhookEventFactory
from webhooks import on
from webhooks.models import WebhookEvent
from webhooks.testing import build_request, send_request

Status = WebhookEvent.Status
CHANGELIST = "admin:webhooks_webhookevent_changelist"


@pytest.fixture
def events(db):
    return {
        "failed": WebhookEventFactory(
            status=Status.FAILED, attempts=8, event_type="invoice.payment_failed",
            last_error="RuntimeError: boom",
            payload={"id": "evt_failed", "data": {"object": {"amount": 1099}}},
            headers={"Stripe-Signature": "t=1,v1=abc", "Content-Type": "application/json"},
        ),
        "processed": WebhookEventFactory(status=Status.PROCESSED, attempts=1),
        "github": WebhookEventFactory(endpoint="github", event_type="push", status=Status.IGNORED),
    }  # fmt: skip


def test_changelist_renders_with_filters_and_search(admin_client, events):
    url = reverse(CHANGELIST)
    response = admin_client.get(url)
    assert response.status_code == 200
    content = response.content.decode()
    for event in events.values():
        assert event.event_id in content

    response = admin_client.get(url, {"status__exact": "failed"})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [events["failed"]]

    response = admin_client.get(url, {"endpoint__exact": "github"})
    assert list(response.context["cl"].result_list) == [events["github"]]

    response = admin_client.get(url, {"event_type__exact": "invoice.payment_failed"})
    assert list(response.context["cl"].result_list) == [events["failed"]]

    response = admin_client.get(url, {"q": events["processed"].event_id})
    assert list(response.context["cl"].result_list) == [events["processed"]]

    response = admin_client.get(url, {"q": "no-such-event"})
    assert list(response.context["cl"].result_list) == []


def test_detail_shows_pretty_payload_and_headers_read_only(admin_client, events):
    event = events["failed"]
    url = reverse("admin:webhooks_webhookevent_change", args=[event.pk])
    response = admin_client.get(url)
    assert response.status_code == 200
    content = response.content.decode()
    assert "&quot;amount&quot;: 1099" in content  # indented JSON, escaped
    assert "Stripe-Signature" in content
    assert "RuntimeError: boom" in content
    assert "bytes, stored as received" in content
    assert 'name="_save"' not in content
    assert "<textarea" not in content and 'name="status"' not in content

    # A forged POST changes nothing: every field is read-only.
    response = admin_client.post(url, {"status": "processed", "attempts": "0", "body": "x"})
    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.FAILED, 8)


def test_no_add_or_delete(admin_client, events):
    assert admin_client.get(reverse("admin:webhooks_webhookevent_add")).status_code == 403
    delete_url = reverse("admin:webhooks_webhookevent_delete", args=[events["failed"].pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    assert WebhookEvent.objects.count() == 3


def test_replay_action_replays_the_selected_failed_event(admin_client, events, on_commit, handlers):
    on("stripe", "invoice.payment_failed")(lambda event: None)
    event = events["failed"]
    form = {"action": "replay", "_selected_action": [event.pk]}
    # First the confirmation page: nothing changes yet.
    response = admin_client.post(reverse(CHANGELIST), form)
    assert "Replay: this touches 1 event." in response.content.decode()
    event.refresh_from_db()
    assert event.status == Status.FAILED
    with on_commit(execute=False) as callbacks:
        response = admin_client.post(reverse(CHANGELIST), {**form, "post": "yes"}, follow=True)
    assert response.status_code == 200
    assert "1 event queued for replay." in response.content.decode()
    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.RECEIVED, 0)
    assert len(callbacks) == 1  # the processing task is published on commit


def test_mark_ignored_action(admin_client, events):
    form = {"action": "mark_ignored",
            "_selected_action": [events["failed"].pk, events["processed"].pk]}  # fmt: skip
    response = admin_client.post(reverse(CHANGELIST), form)
    assert "2 events selected, 1 of them will be marked ignored" in response.content.decode()
    response = admin_client.post(reverse(CHANGELIST), {**form, "post": "yes"}, follow=True)
    content = response.content.decode()
    assert response.status_code == 200
    assert "1 event marked ignored." in content
    assert "1 event was left alone" in content
    events["failed"].refresh_from_db()
    events["processed"].refresh_from_db()
    assert events["failed"].status == Status.IGNORED
    assert events["failed"].last_error == "RuntimeError: boom"  # the earlier error is kept
    assert events["processed"].status == Status.PROCESSED


def test_a_view_only_user_sees_events_but_no_actions(client, django_user_model, events):
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_webhookevent"))
    client.force_login(user)
    response = client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    assert 'value="replay"' not in response.content.decode()
    response = client.post(
        reverse(CHANGELIST), {"action": "replay", "_selected_action": [events["failed"].pk]}
    )
    events["failed"].refresh_from_db()
    assert events["failed"].status == Status.FAILED


def test_anonymous_is_sent_to_login(client, events):
    response = client.get(reverse(CHANGELIST))
    assert response.status_code == 302 and "/login/" in response["Location"]


# -- payloads the pretty printer cannot take whole --------------------------------------------


def change_page(admin_client, event):
    return admin_client.get(reverse("admin:webhooks_webhookevent_change", args=[event.pk]))


def nested_lists(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [300, 900])
def test_a_deeply_nested_payload_renders(admin_client, depth):
    # The receive view refuses payloads nested deeper than MAX_JSON_DEPTH (64); rows this deep
    # were stored by earlier versions, and the admin must still show them.
    event = WebhookEventFactory(
        event_id="evt_deep", event_type="deep.nesting", payload={"data": nested_lists(depth)}
    )
    response = change_page(admin_client, event)
    assert response.status_code == 200
    content = response.content.decode()
    assert "evt_deep" in content and "Cut:" not in content
    summarised = "[… 1 item]" in content and "deeper than 20 levels are summarised" in content
    as_stored = "[" * depth in content and "Nested too deep to lay out" in content
    if depth == 300:
        assert summarised
    else:  # depends on how deep the page's rendering already is
        assert summarised or as_stored


def test_a_payload_too_deep_to_load_back_renders_as_stored(admin_client):
    # 925 levels, as the audit stored them under gunicorn (a shallower stack than this test
    # client's: created directly). Django's JSONField cannot even load it back in the admin.
    event = WebhookEventFactory(payload={"id": "evt_deeper", "data": nested_lists(925)})
    response = change_page(admin_client, event)
    assert response.status_code == 200
    content = response.content.decode()
    assert "evt_deeper" in content
    assert "[" * 925 in content and "Nested too deep to lay out: shown as stored." in content
    assert admin_client.get(reverse(CHANGELIST)).status_code == 200


def test_a_huge_payload_is_cut_and_the_page_stays_small(client, admin_client):
    lines = [
        {"id": f"il_{n:07d}", "amount": n, "currency": "usd", "description": "Widget " * 8}
        for n in range(7900)
    ]
    payload = {"id": "evt_huge", "type": "invoice.created", "data": {"object": {"lines": lines}}}
    request = build_request("stripe", payload)
    assert 1_000_000 < len(request.body) <= 1_048_576  # just under the default body limit
    assert send_request(client, request).status_code == 200
    event = WebhookEvent.objects.get(event_id="evt_huge")
    whole = len(json.dumps(event.payload, indent=2, sort_keys=True, ensure_ascii=False))

    response = change_page(admin_client, event)
    assert response.status_code == 200
    content = response.content.decode()
    assert f"Cut: the first 50,000 of {whole:,} characters are shown." in content
    assert "il_0000000" in content and "il_0007899" not in content
    # The documented bound (API-CONTRACTS.md): 50,000 characters of text per value.
    assert len(response.content) < 200_000
    # The headers are small and shown whole.
    assert "Stripe-Signature" in content


# -- signature headers: only for users who may change events -------------------------------


@pytest.fixture
def signed_events(db):
    """Events whose stored signatures could be re-sent with their bodies, one per case: a
    configured endpoint's signature header, and an endpoint no longer configured."""
    return {
        "stripe": WebhookEventFactory(headers={
            "Stripe-Signature": "t=1,v1=stripesig0123", "Content-Type": "application/json",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}),
        "github": WebhookEventFactory(endpoint="github", event_type="push", headers={
            "X-Hub-Signature-256": "sha256=githubsig4567", "X-GitHub-Delivery": "delivery-89ab",
            "X-GitHub-Event": "push", "User-Agent": "GitHub-Hookshot/abc"}),
        "retired": WebhookEventFactory(endpoint="retired", event_type="x", headers={
            "X-Retired-Sig": "retiredsigcdef", "X-Retired-Id": "retired-id-77",
            "Content-Type": "application/json", "User-Agent": "Retired/2.0"}),
    }  # fmt: skip


def staff_with(django_user_model, *codenames: str):
    user = django_user_model.objects.create_user("-".join(codenames), password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def change_page_text(client, event) -> str:
    response = client.get(reverse("admin:webhooks_webhookevent_change", args=[event.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_a_view_only_user_does_not_see_signature_headers(client, django_user_model, signed_events):
    client.force_login(staff_with(django_user_model, "view_webhookevent"))
    stripe = change_page_text(client, signed_events["stripe"])
    assert "stripesig0123" not in stripe and "Stripe-Signature" not in stripe
    assert "Stripe/1.0" in stripe and "application/json" in stripe
    github = change_page_text(client, signed_events["github"])
    assert "githubsig4567" not in github and "X-Hub-Signature-256" not in github
    assert "delivery-89ab" in github and "GitHub-Hookshot/abc" in github
    # The endpoint's provider cannot be built: only headers known to be harmless are shown.
    retired = change_page_text(client, signed_events["retired"])
    assert "retiredsigcdef" not in retired and "retired-id-77" not in retired
    assert "Retired/2.0" in retired and "application/json" in retired


def test_a_user_who_may_change_events_sees_every_stored_header(
    client, django_user_model, signed_events
):
    client.force_login(staff_with(django_user_model, "view_webhookevent", "change_webhookevent"))
    assert "stripesig0123" in change_page_text(client, signed_events["stripe"])
    assert "githubsig4567" in change_page_text(client, signed_events["github"])
    retired = change_page_text(client, signed_events["retired"])
    assert "retiredsigcdef" in retired and "retired-id-77" in retired
