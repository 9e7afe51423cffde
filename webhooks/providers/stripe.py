"""Stripe: ``Stripe-Signature: t=<unix>,v1=<hex hmac>[,v1=...]``, verified by the ``stripe`` SDK.

The signed content is ``"<t>.<body>"``, HMAC-SHA256 keyed with the WHOLE secret string, prefix
included (``whsec_...`` is used as is, unlike Standard Webhooks). Several ``v1`` entries may be
present (Stripe sends one per active secret while you roll it); any one matching any of our
secrets is enough. The SDK's own time check covers only the past (timestamps older than its
tolerance), so the window is ours, in both directions, with the endpoint's ``TOLERANCE``: checked
before the body is read (the base's ``check_headers``, as ``has_timestamp``) and again in
``verify``, which takes ``now=`` so a stored event can be re-verified later.

Extracted: id ``id``, type ``type`` (both required), occurred ``created`` (Unix seconds).

Reconcile: Stripe lists the events whose delivery has not succeeded for 30 days
(``GET /v1/events?delivery_success=false``); ``event_from_api`` stores each as a delivery's body
would be (see ``webhooks.reconciling``).
"""

from __future__ import annotations

import json
import secrets as _secrets
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from stripe import SignatureVerificationError, WebhookSignature

from ..exceptions import InvalidSignature
from . import samples
from .base import (
    ParsedEvent,
    Provider,
    Sample,
    any_secret,
    api_event_body,
    as_headers,
    datetime_from_unix,
    decode_utf8,
    load_json_object,
    parse_unix_timestamp,
    require_identifier,
)


class StripeProvider(Provider):
    name = "stripe"
    signature_header = "Stripe-Signature"
    #: The time is the signature header's ``t=`` (read below), checked by ``check_headers``.
    has_timestamp = True
    #: ``GET /v1/events?delivery_success=false``, through the lister registered as "stripe"
    #: (``integrations`` registers one); Stripe keeps events listable for 30 days.
    reconcile_vendor = "stripe"
    reconcile_window = timedelta(days=30)

    def read_timestamp(self, headers: Mapping[str, str]) -> int:
        return _timestamp(as_headers(headers).get(self.signature_header) or "")

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float | None = None) -> None:
        header = as_headers(headers).get(self.signature_header) or ""
        if not header.isascii():
            raise InvalidSignature("Stripe-Signature is not ASCII")
        text = decode_utf8(body)

        def matches(secret: str) -> bool:
            try:
                # The SDK checks the signature; the time window (both ways) is ours, below.
                # (Imported by name: ``stripe.WebhookSignature`` goes through the SDK's lazy
                # module ``__getattr__`` at every access.)
                return bool(WebhookSignature.verify_header(text, header, secret, tolerance=None))
            except SignatureVerificationError:
                return False

        if not any_secret(self.secrets, matches):
            raise InvalidSignature("no Stripe-Signature v1 entry matches an endpoint secret")
        self.check_timestamp(_timestamp(header), now=now)  # the header read above, not again

    def parse(self, body: bytes, headers: Mapping[str, str]) -> ParsedEvent:
        payload = load_json_object(body)
        return ParsedEvent(
            event_id=require_identifier(payload.get("id"), "event id"),
            event_type=require_identifier(payload.get("type"), "event type"),
            occurred_at=datetime_from_unix(payload.get("created")),
            payload=payload,
        )

    def event_from_api(self, event: Mapping[str, Any]) -> tuple[bytes, ParsedEvent]:
        """The event as ``GET /v1/events`` lists it is what a webhook delivers (the same
        object): stored as compact JSON, parsed as a delivery is."""
        body = api_event_body(event, self.max_body_bytes)
        return body, self.parse(body, {})

    def sign(
        self,
        body: bytes,
        *,
        secret: str | None = None,
        timestamp: int | None = None,
        event_id: str | None = None,
        event_type: str | None = None,
    ) -> dict[str, str]:
        header = WebhookSignature.generate_signature_header(
            body.decode("utf-8"),
            self._signing_secret(secret),
            int(time.time()) if timestamp is None else timestamp,
        )
        return {
            self.signature_header: header,
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        }

    def sample(self, event_type: str | None = None, *, event_id: str | None = None) -> Sample:
        event_type = event_type or "payment_intent.succeeded"
        event_id = event_id or f"evt_test_{_secrets.token_hex(12)}"
        event = samples.stripe_envelope()
        event.update(
            id=event_id,
            type=event_type,
            created=int(time.time()),
            data={"object": samples.stripe_object(event_type)},
        )
        body = json.dumps(event, indent=2, sort_keys=True).encode()
        return Sample(body=body, event_id=event_id, event_type=event_type)

    @classmethod
    def make_secret(cls) -> str:
        return f"whsec_{_secrets.token_hex(16)}"


def _timestamp(header: str) -> int:
    """The single ``t=`` of a ``Stripe-Signature`` value, in Unix seconds; ``InvalidSignature``
    if there is none, several, or a malformed one."""
    stamps = [item[2:] for item in header.split(",") if item.strip().startswith("t=")]
    if len(stamps) != 1:
        raise InvalidSignature("Stripe-Signature has no single t= timestamp")
    return parse_unix_timestamp(stamps[0], "Stripe-Signature t=")
