"""The sandbox's demo shop: its handlers, driven by real-shaped vendor events through the view.

Stripe events are built from Stripe's own fixtures (``stripe/event.json`` as the envelope,
``stripe/payment_intent.json`` as ``data.object``), GitHub's from octokit's payload examples; see
``tests/vendor_payloads/SOURCES.md``. Each gets a fresh id and is signed at run time.
"""

from __future__ import annotations

import copy
import json
import time
import uuid

import pytest

from sandbox_project.demo.models import GitHubPush, Order, Subscription
from tests.servers import wait_until
from tests.vendor import vendor_bytes, vendor_json
from webhooks import processing, services
from webhooks.models import HandlerRun, ProcessingAttempt, WebhookEvent
from webhooks.testing import post_webhook, sample_event

Status = WebhookEvent.Status


def payment_intent_event(event_type="payment_intent.succeeded", **intent_fields) -> dict:
    event = copy.deepcopy(vendor_json("stripe/event.json"))
    intent = copy.deepcopy(vendor_json("stripe/payment_intent.json"))
    intent.update(status="succeeded", amount_received=intent["amount"])
    intent.update(intent_fields)
    event.update(
        id=f"evt_{uuid.uuid4().hex[:24]}", type=event_type, created=int(time.time()),
        data={"object": intent},
    )  # fmt: skip
    return event


def deliver(client, endpoint, payload, **kwargs) -> WebhookEvent:
    """Post through the real view, then process it here as the worker would (one attempt)."""
    response = post_webhook(client, endpoint, payload, **kwargs)
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "accepted"
    event = WebhookEvent.objects.get(endpoint=endpoint, event_id=response.json()["event_id"])
    processing.process_event(event.pk)
    event.refresh_from_db()
    return event


@pytest.mark.django_db
def test_payment_intent_succeeded_pays_the_order_named_in_metadata(client):
    order = Order.objects.create(reference="ord-1001", amount=1099, currency="usd")
    payload = payment_intent_event(metadata={"order_id": "ord-1001"})
    event = deliver(client, "stripe", payload)
    assert event.status == Status.PROCESSED
    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    assert order.payment_intent_id == payload["data"]["object"]["id"]
    assert order.paid_at is not None

    # A redelivery is a duplicate and a replay changes nothing: the order stays paid once.
    paid_at = order.paid_at
    response = post_webhook(client, "stripe", payload)
    assert response.json()["status"] == "duplicate"
    services.replay_event(event, sync=True)
    assert event.status == Status.PROCESSED
    order.refresh_from_db()
    assert order.paid_at == paid_at


@pytest.mark.django_db
def test_payment_intent_matched_by_its_id(client):
    intent_id = vendor_json("stripe/payment_intent.json")["id"]
    order = Order.objects.create(
        reference="ord-1002", amount=1099, currency="usd", payment_intent_id=intent_id
    )
    event = deliver(client, "stripe", payment_intent_event())
    assert event.status == Status.PROCESSED
    order.refresh_from_db()
    assert order.status == Order.Status.PAID


@pytest.mark.django_db
def test_a_payment_for_no_known_order_is_ignored(client):
    Order.objects.create(reference="ord-1003", amount=1099, currency="usd")
    event = deliver(client, "stripe", payment_intent_event(metadata={"order_id": "ord-missing"}))
    assert event.status == Status.IGNORED
    assert "no order for PaymentIntent" in event.last_error
    assert not Order.objects.filter(status=Order.Status.PAID).exists()


@pytest.mark.django_db
def test_a_wrong_amount_fails_permanently_without_paying(client):
    order = Order.objects.create(reference="ord-1004", amount=5000, currency="usd")
    event = deliver(client, "stripe", payment_intent_event(metadata={"order_id": "ord-1004"}))
    assert (event.status, event.attempts) == (Status.FAILED, 1)
    assert "expected 5000 usd, got 1099 usd" in event.last_error
    order.refresh_from_db()
    assert order.status == Order.Status.PENDING


@pytest.mark.django_db
def test_payment_failed_marks_a_pending_order(client):
    order = Order.objects.create(reference="ord-1005", amount=1099, currency="usd")
    payload = payment_intent_event(
        "payment_intent.payment_failed", status="requires_payment_method", amount_received=0,
        metadata={"order_id": "ord-1005"},
    )  # fmt: skip
    assert deliver(client, "stripe", payload).status == Status.PROCESSED
    order.refresh_from_db()
    assert order.status == Order.Status.PAYMENT_FAILED


@pytest.mark.django_db
def test_an_unhandled_stripe_event_is_ignored(client):
    event = deliver(client, "stripe", payment_intent_event("charge.refunded"))
    assert event.status == Status.IGNORED


@pytest.mark.django_db
def test_github_push_is_recorded(client):
    body = vendor_bytes("github/push.payload.json")
    delivery = str(uuid.uuid4())
    event = deliver(client, "github", body, event_type="push", event_id=delivery)
    assert event.status == Status.PROCESSED
    push = GitHubPush.objects.get(delivery_id=delivery)
    source = json.loads(body)
    assert push.repository == source["repository"]["full_name"] == "Codertocat/Hello-World"
    assert push.ref == source["ref"]
    assert push.deleted is source["deleted"]
    assert push.pusher == source["pusher"]["name"]
    assert push.commit_count == len(source["commits"])


@pytest.mark.django_db
def test_github_ping_is_ignored(client):
    body = vendor_bytes("github/ping.payload.json")
    event = deliver(client, "github", body, event_type="ping")
    assert event.status == Status.IGNORED
    assert "ping" in event.last_error
    assert not GitHubPush.objects.exists()


@pytest.mark.worker
@pytest.mark.slow
def test_end_to_end_with_the_worker_the_order_is_paid(celery_worker, client):
    order = Order.objects.create(reference="ord-2001", amount=1099, currency="usd")
    payload = payment_intent_event(metadata={"order_id": "ord-2001"})
    response = post_webhook(client, "stripe", payload)
    assert response.json() == {"status": "accepted", "event_id": payload["id"]}

    def paid():
        order.refresh_from_db()
        return order.status == Order.Status.PAID

    wait_until(paid, timeout=30, message="the order to be paid by the worker")
    event = WebhookEvent.objects.get(event_id=payload["id"])
    assert (event.status, event.attempts) == (Status.PROCESSED, 1)


@pytest.mark.django_db
def test_demo_admin_pages_render(admin_client):
    from django.urls import reverse

    order = Order.objects.create(reference="ord-3001", amount=500, currency="eur")
    push = GitHubPush.objects.create(
        delivery_id=str(uuid.uuid4()), repository="octo/repo", ref="refs/heads/main", after="a" * 40
    )
    subscription = Subscription.objects.create(
        stripe_id="sub_admin", status="active", event_id="evt_admin"
    )
    for name, obj, text in (
        ("order", order, "ord-3001"),
        ("githubpush", push, "octo/repo"),
        ("subscription", subscription, "sub_admin"),
    ):
        changelist = reverse(f"admin:demo_{name}_changelist")
        response = admin_client.get(changelist)
        assert response.status_code == 200
        assert text in response.content.decode()
        assert (
            admin_client.get(reverse(f"admin:demo_{name}_change", args=[obj.pk])).status_code == 200
        )
    assert (
        admin_client.get(reverse("admin:demo_order_changelist"), {"q": "ord-3001"}).status_code
        == 200
    )
    # Pushes and subscriptions are a record: not added by hand.
    assert admin_client.get(reverse("admin:demo_githubpush_add")).status_code == 403
    assert admin_client.get(reverse("admin:demo_subscription_add")).status_code == 403


def subscription_event(event_type, created, **subscription_fields) -> dict:
    """A ``customer.subscription.*`` event in Stripe's envelope (``stripe/event.json``); the
    subscription object has the fields the demo reads, shaped as Stripe sends them."""
    event = copy.deepcopy(vendor_json("stripe/event.json"))
    subscription = {
        "id": "sub_1QDemoOrdered",
        "object": "subscription",
        "customer": "cus_QXg1o8vcGmoR32",
        "status": "active",
        "cancel_at_period_end": False,
        "current_period_end": 1767225600,
        **subscription_fields,
    }
    event.update(
        id=f"evt_{uuid.uuid4().hex[:24]}", type=event_type, created=created,
        data={"object": subscription},
    )  # fmt: skip
    return event


@pytest.mark.django_db
def test_subscription_events_arriving_out_of_order_leave_the_newest_state(client):
    now = int(time.time())
    created = subscription_event("customer.subscription.created", now - 30, status="trialing")
    past_due = subscription_event("customer.subscription.updated", now - 20, status="past_due")
    canceled = subscription_event("customer.subscription.deleted", now - 10, status="canceled")

    assert deliver(client, "stripe", created).status == Status.PROCESSED
    assert deliver(client, "stripe", canceled).status == Status.PROCESSED
    late = deliver(client, "stripe", past_due)  # older than the deletion: skipped

    subscription = Subscription.objects.get(stripe_id="sub_1QDemoOrdered")
    assert (subscription.status, subscription.event_id) == ("canceled", canceled["id"])
    assert subscription.customer == "cus_QXg1o8vcGmoR32"
    assert subscription.current_period_end.timestamp() == 1767225600
    assert late.status == Status.PROCESSED
    run = HandlerRun.objects.get(
        event=late, handler="sandbox_project.demo.webhooks.sync_subscription"
    )
    assert run.status == HandlerRun.Status.SKIPPED
    assert run.last_error.startswith("stale: version ")
    assert f"applied by event '{canceled['id']}'" in run.last_error
    (attempt,) = ProcessingAttempt.objects.filter(event=late)
    assert (attempt.outcome, attempt.error) == ("processed", "")


@pytest.mark.django_db
def test_a_subscription_event_with_an_unknown_status_fails_for_a_person(client):
    event = deliver(
        client,
        "stripe",
        subscription_event("customer.subscription.updated", int(time.time()), status="x" * 50),
    )
    assert event.status == Status.FAILED
    assert event.last_error.splitlines()[0] == (
        "webhooks.exceptions.PermanentFailure: unknown subscription status"
    )
    assert "x" * 50 not in event.last_error
    assert not Subscription.objects.exists()


@pytest.mark.django_db
def test_a_subscription_event_without_its_id_fails_naming_the_path(client):
    payload = subscription_event("customer.subscription.updated", int(time.time()))
    del payload["data"]["object"]["id"]
    event = deliver(client, "stripe", payload)
    assert event.status == Status.FAILED
    assert "ordering_key 'data.object.id' is missing from the payload" in event.last_error


@pytest.mark.django_db
def test_the_sample_subscription_event_is_kept_by_the_demo(client):
    """What ``send_test_webhook stripe --type customer.subscription.updated`` sends."""
    sample = sample_event("stripe", "customer.subscription.updated")
    event = deliver(client, "stripe", sample.body)
    assert event.status == Status.PROCESSED
    subscription = Subscription.objects.get(event_id=sample.event_id)
    assert (subscription.stripe_id, subscription.status) == (
        "sub_1PgcDsB7WZ01zgkWnEyMwiTb",
        "active",
    )
