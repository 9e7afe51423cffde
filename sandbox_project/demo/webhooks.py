"""Webhook handlers of the demo shop, written the way a user of django-tether writes them.

Each handler receives the stored ``WebhookEvent`` and runs inside the transaction that marks it
processed: if it raises, its writes are rolled back and the event is retried later. Handlers
must be idempotent (an operator may replay an event), so they check before they change.
"""

from datetime import UTC, datetime

from django.utils import timezone

from webhooks import Ignore, PermanentFailure, on

from .models import GitHubPush, Order, Subscription


def _order_for(payment_intent: dict) -> Order | None:
    """Our order for a PaymentIntent: by ``metadata.order_id`` (set when we created it), or by
    the PaymentIntent id stored on the order."""
    queryset = Order.objects.select_for_update()
    reference = (payment_intent.get("metadata") or {}).get("order_id")
    if reference:
        return queryset.filter(reference=reference).first()
    return queryset.filter(payment_intent_id=payment_intent["id"]).first()


@on("stripe", "payment_intent.succeeded")
def mark_order_paid(event):
    payment_intent = event.payload["data"]["object"]
    order = _order_for(payment_intent)
    if order is None:
        raise Ignore(f"no order for PaymentIntent {payment_intent['id']}")
    if order.status == Order.Status.PAID:
        return  # already paid: a replayed or redelivered event changes nothing
    received = payment_intent.get("amount_received", payment_intent.get("amount"))
    if received != order.amount or payment_intent.get("currency") != order.currency:
        # Retrying cannot fix a wrong amount: end the event failed, for a person to look at.
        raise PermanentFailure(
            f"order {order.reference}: expected {order.amount} {order.currency}, "
            f"got {received} {payment_intent.get('currency')}"
        )
    order.status = Order.Status.PAID
    order.payment_intent_id = payment_intent["id"]
    order.paid_at = timezone.now()
    order.save(update_fields=["status", "payment_intent_id", "paid_at"])


@on("stripe", "payment_intent.payment_failed")
def mark_payment_failed(event):
    payment_intent = event.payload["data"]["object"]
    order = _order_for(payment_intent)
    if order is None:
        raise Ignore(f"no order for PaymentIntent {payment_intent['id']}")
    if order.status == Order.Status.PENDING:
        order.status = Order.Status.PAYMENT_FAILED
        order.save(update_fields=["status"])


@on("stripe", "customer.subscription.*", ordering_key="data.object.id")
def sync_subscription(event):
    """Keep our copy of a subscription as its newest event says.

    Ordered by the subscription's id (``ordering_key``), by the event's time (Stripe's
    ``created``, the default ``ordering_version``): an older ``customer.subscription.updated``
    that arrives after a newer one is not passed here (its run is skipped, naming the newer
    event), and two events of one subscription never run at once, on any worker. So this handler
    can simply write what the event says.
    """
    subscription = event.payload["data"]["object"]
    status = subscription.get("status")
    if status not in Subscription.Status.values:
        raise PermanentFailure("unknown subscription status")  # a person should look
    period_end = subscription.get("current_period_end")  # Unix seconds
    if type(period_end) is not int or not 0 < period_end < 2**33:
        period_end = None
    customer = subscription.get("customer")
    if not isinstance(customer, str) or len(customer) > 255:
        customer = ""
    Subscription.objects.update_or_create(
        stripe_id=event.ordering.key,  # the ordering key, already read and bounded
        defaults={
            "customer": customer,
            "status": status,
            "cancel_at_period_end": subscription.get("cancel_at_period_end") is True,
            "current_period_end": period_end and datetime.fromtimestamp(period_end, tz=UTC),
            "event_id": event.event_id,
        },
    )


@on("github", "push")
def record_push(event):
    push = event.payload
    head_commit = push.get("head_commit") or {}
    GitHubPush.objects.get_or_create(
        delivery_id=event.event_id,
        defaults={
            "repository": push["repository"]["full_name"],
            "ref": push["ref"],
            "before": push.get("before") or "",
            "after": push.get("after") or "",
            "pusher": (push.get("pusher") or {}).get("name", ""),
            "commit_count": len(push.get("commits") or []),
            "deleted": bool(push.get("deleted")),
            "head_commit_message": head_commit.get("message") or "",
        },
    )


@on("github", "ping")
def ping(event):
    raise Ignore("GitHub's ping on hook creation: nothing to do")
