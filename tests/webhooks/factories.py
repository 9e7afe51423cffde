"""factory-boy factories for the webhooks app."""

from __future__ import annotations

import json
import uuid

import factory
from django.utils import timezone

from webhooks.models import WebhookEvent


class WebhookEventFactory(factory.django.DjangoModelFactory):
    """A stored event as the receive view leaves it (``received``), Stripe-shaped by default.

    ``payload`` is built from ``event_id`` and ``event_type``; ``body`` is its exact JSON bytes.
    """

    class Meta:
        model = WebhookEvent

    endpoint = "stripe"
    event_id = factory.LazyFunction(lambda: f"evt_test_{uuid.uuid4().hex[:24]}")
    event_type = "payment_intent.succeeded"
    payload = factory.LazyAttribute(
        lambda o: {
            "id": o.event_id,
            "object": "event",
            "type": o.event_type,
            "created": int(timezone.now().timestamp()),
            "data": {"object": {}},
        }
    )
    body = factory.LazyAttribute(lambda o: json.dumps(o.payload).encode())
    headers = factory.LazyFunction(lambda: {"Content-Type": "application/json"})
    status = WebhookEvent.Status.RECEIVED
    received_at = factory.LazyFunction(timezone.now)
