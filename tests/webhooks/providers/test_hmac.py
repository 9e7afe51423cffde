"""The configurable hmac provider: the shared contract in several configurations."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest

from webhooks.exceptions import InvalidSignature, WebhookConfigurationError
from webhooks.models import WebhookEvent
from webhooks.providers import get_provider
from webhooks.testing import sign_request

from .contract import ProviderContract

SECRET = "test-partner-secret"
PARTNER = {
    "PROVIDER": "hmac",
    "SECRETS": [SECRET],
    "HEADER": "X-Partner-Signature",
    "EVENT_ID": "json:id",
    "EVENT_TYPE": "json:type",
}


class TestHmacContract(ProviderContract):
    endpoint = "partner"
    timestamped = False
    config = PARTNER

    def request_without_event_id(self):
        body = b'{"type": "order.created", "data": {}}'
        return body, sign_request(self.endpoint, body)

    def test_signature_is_hex_hmac_sha256_of_the_body(self, client):
        body = b'{"id": "e1", "type": "t"}'
        digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        response = self.post(client, body, {"X-Partner-Signature": digest.upper()})
        assert response.json() == {"status": "accepted", "event_id": "e1"}

    def test_integer_id_in_json_is_accepted_as_text(self, client):
        body = b'{"id": 42, "type": "t"}'
        response = self.post(client, body, sign_request(self.endpoint, body))
        assert response.json() == {"status": "accepted", "event_id": "42"}


class TestHmacTimestampedBase64Contract(ProviderContract):
    """A Slack-like scheme: prefix, base64, signed timestamp, id and type from headers."""

    endpoint = "partner-ts"
    config = {
        "PROVIDER": "hmac",
        "SECRETS": [SECRET],
        "HEADER": "X-Sig",
        "ALGORITHM": "sha512",
        "ENCODING": "base64",
        "PREFIX": "v1=",
        "EVENT_ID": "header:X-Event-Id",
        "EVENT_TYPE": "header:X-Event-Type",
        "TIMESTAMP_HEADER": "X-Timestamp",
    }
    # Not signed; within TOLERANCE the same "{timestamp}.{body}" under another id is a replay.
    id_header = "X-Event-Id"

    def request_without_event_id(self):
        body = b'{"data": {}}'
        headers = sign_request(self.endpoint, body)
        del headers["X-Event-Id"]
        return body, headers

    def test_signed_content_is_timestamp_dot_body(self, client):
        body = b'{"n": 1}'
        now = int(time.time())
        digest = hmac.new(SECRET.encode(), f"{now}.".encode() + body, hashlib.sha512).digest()
        headers = {
            "X-Sig": "v1=" + base64.b64encode(digest).decode(),
            "X-Timestamp": str(now),
            "X-Event-Id": "abc",
            "X-Event-Type": "thing.done",
        }
        response = self.post(client, body, headers)
        assert response.json() == {"status": "accepted", "event_id": "abc"}
        event = WebhookEvent.objects.get()
        assert event.event_type == "thing.done"
        assert int(event.occurred_at.timestamp()) == now
        assert set(event.headers) == {
            "X-Sig",
            "X-Timestamp",
            "X-Event-Id",
            "X-Event-Type",
            "Content-Type",
        }

    def test_changed_timestamp_breaks_the_signature(self, client):
        body = b'{"n": 1}'
        headers = sign_request(self.endpoint, body)
        headers["X-Timestamp"] = str(int(headers["X-Timestamp"]) - 1)
        assert self.post(client, body, headers).json() == {"error": "invalid_signature"}

    def test_missing_prefix_is_refused(self, client):
        body = b'{"n": 1}'
        headers = sign_request(self.endpoint, body)
        headers["X-Sig"] = headers["X-Sig"].removeprefix("v1=")
        assert self.post(client, body, headers).json() == {"error": "invalid_signature"}


class TestHmacHeaderIdContract(ProviderContract):
    """A scheme that signs only the body and sends the id in a header (as GitHub does)."""

    endpoint = "partner-header-id"
    timestamped = False
    config = {
        "PROVIDER": "hmac",
        "SECRETS": [SECRET],
        "HEADER": "X-Partner-Signature",
        "EVENT_ID": "header:X-Partner-Event-Id",
        "EVENT_TYPE": "header:X-Partner-Event",
    }
    id_header = "X-Partner-Event-Id"

    def request_without_event_id(self):
        body = b'{"data": {}}'
        headers = sign_request(self.endpoint, body)
        del headers["X-Partner-Event-Id"]
        return body, headers

    def test_another_type_under_another_id_is_a_duplicate_too(self, client):
        body = b'{"data": {"order": 7}}'
        headers = sign_request(self.endpoint, body, event_id="e-1", event_type="order.created")
        assert self.post(client, body, headers).json()["status"] == "accepted"
        relabelled = {**headers, "X-Partner-Event-Id": "e-2", "X-Partner-Event": "order.refunded"}
        response = self.post(client, body, relabelled)
        assert response.json() == {"status": "duplicate", "event_id": "e-2"}
        assert WebhookEvent.objects.get().event_type == "order.created"


class TestHmacSha1NestedPathsContract(ProviderContract):
    endpoint = "nested"
    timestamped = False
    config = {
        "PROVIDER": "hmac",
        "SECRETS": [SECRET],
        "HEADER": "X-Hook-Signature",
        "ALGORITHM": "sha1",
        "PREFIX": "sha1=",
        "EVENT_ID": "json:meta.delivery.id",
        "EVENT_TYPE": "json:events.0.name",
    }

    def request_without_event_id(self):
        body = b'{"meta": {"delivery": {}}, "events": [{"name": "x"}]}'
        return body, sign_request(self.endpoint, body)

    def test_nested_paths(self, client):
        body = json.dumps(
            {"meta": {"delivery": {"id": "d-9"}}, "events": [{"name": "a.b"}]}
        ).encode()
        response = self.post(client, body, sign_request(self.endpoint, body))
        assert response.json() == {"status": "accepted", "event_id": "d-9"}
        assert WebhookEvent.objects.get().event_type == "a.b"


@pytest.mark.django_db
class TestHmacOptions:
    def configure(self, settings, **options):
        settings.WEBHOOKS = {"ENDPOINTS": {"p": {**PARTNER, **options}}}

    def test_defaults(self, settings):
        self.configure(settings)
        provider = get_provider("p")
        assert (provider.encoding, provider.prefix, provider.signed_payload) == (
            "hex",
            "",
            "{body}",
        )
        assert provider.algorithm is hashlib.sha256
        assert provider.timestamp_header is None

    def test_timestamp_header_defaults_to_signing_it(self, settings):
        self.configure(settings, TIMESTAMP_HEADER="X-Ts")
        assert get_provider("p").signed_payload == "{timestamp}.{body}"

    def test_unsigned_timestamp_is_still_checked(self, settings):
        self.configure(settings, TIMESTAMP_HEADER="X-Ts", SIGNED_PAYLOAD="{body}")
        provider = get_provider("p")
        body = b'{"id": "1", "type": "t"}'
        stale = provider.sign(body, timestamp=int(time.time()) - 1000)
        with pytest.raises(InvalidSignature):
            provider.verify(body, stale)
        provider.verify(body, provider.sign(body))

    def test_bad_base64_signature_is_refused(self, settings):
        self.configure(settings, ENCODING="base64")
        with pytest.raises(InvalidSignature):
            get_provider("p").verify(b"{}", {"X-Partner-Signature": "***"})

    @pytest.mark.parametrize(
        ("options", "key"),
        [
            ({"HEADER": None}, '["HEADER"]'),
            ({"ALGORITHM": "md5"}, '["ALGORITHM"]'),
            ({"ENCODING": "base32"}, '["ENCODING"]'),
            ({"EVENT_ID": "body:id"}, '["EVENT_ID"]'),
            ({"EVENT_TYPE": "json:"}, '["EVENT_TYPE"]'),
            (
                {"SIGNED_PAYLOAD": "{timestamp}{body}", "TIMESTAMP_HEADER": "X"},
                '["SIGNED_PAYLOAD"]',
            ),
            ({"SIGNED_PAYLOAD": "{timestamp}.{body}"}, '["TIMESTAMP_HEADER"]'),
            ({"PREFIX": 3}, '["PREFIX"]'),
        ],
    )
    def test_misconfiguration_names_the_key_at_call_time(self, settings, options, key):
        self.configure(settings, **options)
        with pytest.raises(WebhookConfigurationError) as excinfo:
            get_provider("p")
        assert f'WEBHOOKS["ENDPOINTS"]["p"]{key}' in str(excinfo.value)
        assert SECRET not in str(excinfo.value)
