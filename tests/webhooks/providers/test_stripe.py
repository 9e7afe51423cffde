"""Stripe: the shared contract, Stripe's own signer as the reference, and the whsec_ convention."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
import stripe

from tests.vendor import vendor_json
from webhooks.exceptions import InvalidSignature, MalformedPayload
from webhooks.providers import get_provider
from webhooks.providers.stripe import StripeProvider
from webhooks.testing import sign_request

from .contract import ProviderContract

SECRET = "whsec_test_stripe_secret"


class TestStripeContract(ProviderContract):
    endpoint = "stripe"
    config = {"PROVIDER": "stripe", "SECRETS": [SECRET]}

    def request_without_event_id(self):
        body = json.dumps({"object": "event", "type": "invoice.paid", "created": 1}).encode()
        return body, sign_request(self.endpoint, body)

    def with_timestamp(self, headers, value):
        signature = headers["Stripe-Signature"]
        parts = [p for p in signature.split(",") if not p.startswith("t=")]
        return {**headers, "Stripe-Signature": ",".join([f"t={value}", *parts])}

    def test_several_v1_entries_any_may_match(self, client):
        # While a secret is rolled, Stripe sends one v1 entry per active secret.
        body = _event_body()
        good = stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET)
        timestamp, signature = good.split(",")
        header = f"{timestamp},v1={'0' * 64},{signature},v0={'1' * 64}"
        response = self.post(client, body, {"Stripe-Signature": header})
        assert response.status_code == 200, response.content

    def test_only_v0_entry_is_refused(self, client):
        body = _event_body()
        good = stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET)
        header = good.replace("v1=", "v0=")
        response = self.post(client, body, {"Stripe-Signature": header})
        assert response.status_code == 400

    def test_two_timestamps_are_refused(self, client):
        body = _event_body()
        good = stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET)
        header = f"t={int(time.time()) - 10000},{good}"
        assert self.post(client, body, {"Stripe-Signature": header}).status_code == 400

    def test_non_utf8_body_is_an_invalid_signature(self, client):
        body = b'{"id": "evt_\xff"}'
        header = f"t={int(time.time())},v1={'a' * 64}"
        assert self.post(client, body, {"Stripe-Signature": header}).json() == {
            "error": "invalid_signature"
        }

    def test_non_ascii_signature_header_is_refused_not_crashed(self):
        provider = get_provider(self.endpoint)
        with pytest.raises(InvalidSignature):
            provider.verify(b"{}", {"Stripe-Signature": f"t={int(time.time())},v1=\xe9"})


def _event_body(event_id: str = "evt_1Pgc76B7WZ01zgkWwyRHS12y") -> bytes:
    # Stripe's own example event (stripe/openapi fixtures3.json resources.event, see
    # tests/vendor_payloads/SOURCES.md), with a fresh id and a current "created".
    event = vendor_json("stripe/event.json")
    event["id"] = event_id
    event["created"] = int(time.time())
    return json.dumps(event, indent=2).encode()


@pytest.mark.django_db
class TestStripeScheme:
    """Stripe publishes no fixed signature vector (vendor_payloads/SOURCES.md has none), so the
    reference is Stripe's own code: the stripe SDK's ``generate_signature_header`` (what
    stripe-python's tests sign with), checked against the scheme Stripe documents in "Verify
    webhook signatures manually" (HMAC-SHA256 of "<t>.<body>" keyed by the whole secret)."""

    @pytest.fixture(autouse=True)
    def _endpoint(self, settings):
        settings.WEBHOOKS = {"ENDPOINTS": {"stripe": {"PROVIDER": "stripe", "SECRETS": [SECRET]}}}

    def test_sdk_signature_is_the_documented_scheme_and_verifies(self):
        body = _event_body()
        timestamp = int(time.time())
        header = stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET, timestamp)
        expected = hmac.new(
            SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
        ).hexdigest()
        assert header == f"t={timestamp},v1={expected}"
        provider = get_provider("stripe")
        provider.verify(body, {"Stripe-Signature": header})
        assert provider.sign(body, timestamp=timestamp)["Stripe-Signature"] == header

    def test_key_is_the_whole_whsec_string(self):
        # Stripe's convention: "whsec_..." is used as the key as is, prefix included.
        body = _event_body()
        timestamp = int(time.time())
        provider = get_provider("stripe")
        bare = SECRET.removeprefix("whsec_")
        signed_with_bare = hmac.new(
            bare.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
        ).hexdigest()
        with pytest.raises(InvalidSignature):
            provider.verify(body, {"Stripe-Signature": f"t={timestamp},v1={signed_with_bare}"})

    def test_extraction(self):
        body = json.loads(_event_body())
        body["created"] = 1700000000
        parsed = get_provider("stripe").parse(json.dumps(body).encode(), {})
        assert parsed.event_id == "evt_1Pgc76B7WZ01zgkWwyRHS12y"
        assert parsed.event_type == "plan.created"
        assert parsed.occurred_at.isoformat() == "2023-11-14T22:13:20+00:00"
        assert parsed.payload["data"]["object"]["object"] == "plan"

    @pytest.mark.parametrize("created", ["yesterday", None, True, 10**20])
    def test_unusable_created_leaves_occurred_empty(self, created):
        body = json.dumps({"id": "evt_1", "type": "x", "created": created}).encode()
        assert get_provider("stripe").parse(body, {}).occurred_at is None

    @pytest.mark.parametrize(
        "body",
        [
            {"type": "x"},
            {"id": "", "type": "x"},
            {"id": "evt_1"},
            {"id": ["evt_1"], "type": "x"},
            {"id": "e" * 256, "type": "x"},
            {"id": "evt\x00", "type": "x"},
        ],
    )
    def test_unusable_id_or_type_is_malformed(self, body):
        with pytest.raises(MalformedPayload):
            get_provider("stripe").parse(json.dumps(body).encode(), {})

    @pytest.mark.parametrize("offset", [-10_000, 10_000])
    def test_t_outside_the_tolerance_is_refused_before_the_body_is_read(self, offset):
        # The time is Stripe-Signature's t=, not a header of its own: check_headers reads it.
        provider = get_provider("stripe")
        assert provider.has_timestamp
        now = time.time()
        headers = provider.sign(_event_body(), timestamp=int(now) + offset)
        with pytest.raises(InvalidSignature, match="tolerance"):
            provider.check_headers(headers, now=now)
        provider.check_headers(provider.sign(_event_body(), timestamp=int(now)), now=now)
        with pytest.raises(InvalidSignature, match="t= timestamp"):
            provider.check_headers({"Stripe-Signature": "v1=" + "0" * 64}, now=now)

    def test_stored_headers(self):
        provider = get_provider("stripe")
        assert provider.stored_header_names() == ("Stripe-Signature", "Content-Type", "User-Agent")
        assert isinstance(provider, StripeProvider)


@pytest.mark.django_db
def test_stored_event_re_verifies_later_at_its_receipt_time(settings):
    settings.WEBHOOKS = {"ENDPOINTS": {"stripe": {"PROVIDER": "stripe", "SECRETS": [SECRET]}}}
    provider = get_provider("stripe")
    body = _event_body()
    signed_at = int(time.time()) - 86400  # an audit a day later
    headers = provider.sign(body, timestamp=signed_at)
    with pytest.raises(InvalidSignature, match="older"):
        provider.verify(body, headers)
    provider.verify(body, headers, now=signed_at + 1)
    with pytest.raises(InvalidSignature):
        provider.verify(body + b" ", headers, now=signed_at + 1)
