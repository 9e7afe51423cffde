"""The contract every provider must keep, as test cases a provider's test class inherits.

A provider's tests subclass ``ProviderContract``, set ``endpoint`` and ``config`` (and
``timestamped = False`` for a scheme without a timestamp), and get every case below, run
through the real view, the real PostgreSQL and the same signing code users call
(``webhooks.testing``). A new provider inherits the whole suite (the idea of django-anymail's
``tests/webhook_cases.py``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, ClassVar

import pytest

from tests.celery_worker import purge_broker, queued_messages
from webhooks import dispatch
from webhooks.exceptions import MalformedPayload
from webhooks.models import WebhookEvent
from webhooks.providers import get_provider
from webhooks.providers.base import MAX_JSON_DEPTH
from webhooks.signals import webhook_duplicate, webhook_received, webhook_rejected
from webhooks.testing import build_request, send_request, sign_request


@pytest.mark.django_db
class ProviderContract:
    endpoint: ClassVar[str]
    config: ClassVar[dict[str, Any]]
    #: What a verified request without an event id is answered. A scheme whose id is signed
    #: (Standard Webhooks) cannot verify without one: ``invalid_signature``.
    without_event_id_error: ClassVar[str] = "malformed_payload"
    #: Whether the scheme signs a timestamp (then stale and future ones are refused).
    timestamped: ClassVar[bool] = True
    #: The header carrying the event id, for schemes that take it from a header (None: the id
    #: is in the body, so another id is another body, which the signature refuses).
    id_header: ClassVar[str | None] = None
    #: Whether the scheme signs that header (Standard Webhooks): then another id is refused.
    id_signed: ClassVar[bool] = False

    @pytest.fixture(autouse=True)
    def _endpoint(self, settings):
        settings.WEBHOOKS = {"ENDPOINTS": {self.endpoint: dict(self.config)}}

    @property
    def provider(self):
        return get_provider(self.endpoint)

    def configure(self, settings, **options: Any) -> None:
        settings.WEBHOOKS = {"ENDPOINTS": {self.endpoint: {**self.config, **options}}}

    def post(self, client, body: bytes, headers: dict[str, str]):
        headers = dict(headers)
        content_type = headers.pop("Content-Type", "application/json")
        return client.post(
            f"/webhooks/{self.endpoint}/", data=body, content_type=content_type, headers=headers
        )

    # -- hooks a provider's class may override ------------------------------------------------

    def request_without_event_id(self) -> tuple[bytes, dict[str, str]]:
        """A correctly signed request whose event id is missing."""
        raise NotImplementedError

    def bodies_with(self, payload_json: str) -> list[tuple[bytes, str]]:
        """``(body, Content-Type)`` of each body form the scheme accepts carrying
        ``payload_json`` (JSON only, by default)."""
        return [(payload_json.encode(), "application/json")]

    # -- the cases ----------------------------------------------------------------------------

    def test_valid_delivery_is_accepted_and_stored_exactly(
        self, client, signals, django_capture_on_commit_callbacks
    ):
        request = build_request(self.endpoint)
        headers = {**request.headers, "Authorization": "Bearer do-not-store", "Cookie": "a=b"}
        with django_capture_on_commit_callbacks(execute=True):
            response = self.post(client, request.body, headers)
            assert not signals.of(webhook_received)  # sent when the insert commits
        assert len(signals.of(webhook_received)) == 1

        assert response.status_code == 200, response.content
        assert response.json() == {"status": "accepted", "event_id": request.event_id}
        event = WebhookEvent.objects.get()
        assert (event.endpoint, event.event_id) == (self.endpoint, request.event_id)
        assert event.event_type == request.event_type
        assert bytes(event.body) == request.body
        assert event.status == WebhookEvent.Status.RECEIVED
        allowed = {name.lower() for name in self.provider.stored_header_names()}
        assert {name.lower() for name in event.headers} <= allowed
        assert "authorization" not in {n.lower() for n in event.headers}
        assert "cookie" not in {n.lower() for n in event.headers}
        assert (
            event.headers[self.provider.signature_header]
            == (request.headers[self.provider.signature_header])
        )
        # The stored bytes and headers re-verify: an audit or a replay can check them.
        self.provider.verify(bytes(event.body), event.headers)
        assert [kw["event"].pk for kw in signals.of(webhook_received)] == [event.pk]

    def test_forged_signature_is_refused(self, client, signals):
        request = build_request(self.endpoint, bad_signature=True)
        response = self.post(client, request.body, request.headers)
        assert response.status_code == 400
        assert response.json() == {"error": "invalid_signature"}
        assert not WebhookEvent.objects.exists()
        assert signals.of(webhook_rejected) == [
            {"endpoint": self.endpoint, "reason": "invalid_signature"}
        ]

    def test_tampered_body_is_refused(self, client):
        request = build_request(self.endpoint)
        body = request.body.replace(b"{", b"{ ", 1)
        response = self.post(client, body, request.headers)
        assert response.status_code == 400
        assert response.json() == {"error": "invalid_signature"}
        assert not WebhookEvent.objects.exists()

    def test_missing_signature_is_refused(self, client):
        request = build_request(self.endpoint)
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() != self.provider.signature_header.lower()
        }
        response = self.post(client, request.body, headers)
        assert response.status_code == 400
        assert response.json() == {"error": "invalid_signature"}
        assert not WebhookEvent.objects.exists()

    def test_empty_signature_is_refused(self, client):
        request = build_request(self.endpoint)
        headers = {**request.headers, self.provider.signature_header: ""}
        response = self.post(client, request.body, headers)
        assert response.status_code == 400
        assert not WebhookEvent.objects.exists()

    def test_rotated_secret(self, client, settings):
        old = self.config["SECRETS"][0]
        new = self.provider.make_secret()
        retired = self.provider.make_secret()
        self.configure(settings, SECRETS=[new, old])
        for secret in (new, old):
            request = build_request(self.endpoint, secret=secret)
            response = self.post(client, request.body, request.headers)
            assert response.status_code == 200, (secret == new, response.content)
            assert response.json()["status"] == "accepted"
        request = build_request(self.endpoint, secret=retired)
        response = self.post(client, request.body, request.headers)
        assert response.status_code == 400
        assert WebhookEvent.objects.count() == 2

    def test_signed_but_not_json_is_malformed(self, client):
        body = b'{"id": "evt_1", "type": "x", '
        headers = sign_request(self.endpoint, body, event_type="x.y")
        response = self.post(client, body, headers)
        assert response.status_code == 400
        assert response.json() == {"error": "malformed_payload"}
        assert not WebhookEvent.objects.exists()

    def test_signed_json_array_is_malformed(self, client):
        body = b'[{"id": "evt_1", "type": "x"}]'
        headers = sign_request(self.endpoint, body, event_type="x.y")
        response = self.post(client, body, headers)
        assert response.status_code == 400
        assert response.json() == {"error": "malformed_payload"}

    @pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1E+400"])
    def test_non_finite_numbers_are_malformed(self, client, signals, number):
        # Python's parser takes them; no database's JSON column does. Refused by the parse,
        # before the insert, so the answer is the same on every database.
        sample = self.provider.sample()
        payload = json.loads(sample.body)
        payload["amounts"] = [1, {"deep": ["<number>"]}]

        def signed(value: str) -> list[tuple[bytes, dict[str, str]]]:
            forms = self.bodies_with(json.dumps(payload).replace('"<number>"', value))
            return [
                (body, sign_request(self.endpoint, body, event_id=sample.event_id,
                                    event_type=sample.event_type, content_type=content_type))
                for body, content_type in forms
            ]  # fmt: skip

        for (body, headers), (control, control_headers) in zip(
            signed(number), signed("2.5"), strict=True
        ):
            assert self.provider.parse(control, control_headers).payload["amounts"]  # usable
            with pytest.raises(MalformedPayload):
                self.provider.parse(body, headers)
            response = self.post(client, body, headers)
            assert response.status_code == 400, (headers["Content-Type"], response.content)
            assert response.json() == {"error": "malformed_payload"}
            assert signals.of(webhook_rejected)[-1]["reason"] == "malformed_payload"
        assert not WebhookEvent.objects.exists()

    def test_nesting_deeper_than_the_limit_is_malformed(self, client, signals):
        # MAX_JSON_DEPTH levels in all (the top-level object is one) are taken; one more is
        # refused before the insert, since rows that deep cannot be read back everywhere.
        sample = self.provider.sample()
        payload = json.loads(sample.body)

        def nested(levels: int) -> list:
            value: list = []
            for _ in range(levels - 1):
                value = [value]
            return value

        for extra, accepted in ((MAX_JSON_DEPTH - 1, True), (MAX_JSON_DEPTH, False)):
            payload["nested"] = nested(extra)  # the top-level object is the first level
            forms = self.bodies_with(json.dumps(payload))
            for body, content_type in forms:
                WebhookEvent.objects.all().delete()
                headers = sign_request(
                    self.endpoint, body, event_id=sample.event_id,
                    event_type=sample.event_type, content_type=content_type,
                )  # fmt: skip
                response = self.post(client, body, headers)
                if accepted:
                    assert response.status_code == 200, (content_type, response.content)
                else:
                    assert response.status_code == 400, (content_type, response.content)
                    assert response.json() == {"error": "malformed_payload"}
                    assert signals.of(webhook_rejected)[-1]["reason"] == "malformed_payload"
                    assert not WebhookEvent.objects.exists()

    def test_signed_but_no_event_id(self, client):
        body, headers = self.request_without_event_id()
        response = self.post(client, body, headers)
        assert response.status_code == 400
        assert response.json() == {"error": self.without_event_id_error}
        assert not WebhookEvent.objects.exists()

    def test_oversized_body_is_refused_even_when_signed(self, client, settings, signals):
        request = build_request(self.endpoint)
        self.configure(settings, MAX_BODY_BYTES=len(request.body) - 1)  # one byte over
        response = self.post(client, request.body, request.headers)
        assert response.status_code == 413
        assert response.json() == {"error": "payload_too_large"}
        assert not WebhookEvent.objects.exists()
        assert signals.of(webhook_rejected)[-1]["reason"] == "payload_too_large"

    def test_body_at_the_limit_is_accepted(self, client, settings):
        request = build_request(self.endpoint)
        self.configure(settings, MAX_BODY_BYTES=len(request.body))
        response = self.post(client, request.body, request.headers)
        assert response.status_code == 200, response.content

    def test_duplicate_delivery(self, client, signals, django_capture_on_commit_callbacks):
        request = build_request(self.endpoint)
        purge_broker()
        with django_capture_on_commit_callbacks(execute=True):
            first = self.post(client, request.body, request.headers)
            second = send_request(client, request)
        assert dispatch.flush()
        assert first.json()["status"] == "accepted"
        assert second.status_code == 200
        assert second.json() == {"status": "duplicate", "event_id": request.event_id}
        event = WebhookEvent.objects.get()
        # Received once, and its processing published once: for the first delivery only.
        assert len(signals.of(webhook_received)) == 1
        assert len(signals.of(webhook_duplicate)) == 1
        assert queued_messages() == [("webhooks.process_events", [[event.pk]])]

    def test_signed_content_under_another_id_is_never_a_second_event(self, client, signals, caplog):
        request = build_request(self.endpoint)
        assert self.post(client, request.body, request.headers).json()["status"] == "accepted"
        if self.id_header is None:
            # The id is signed with the body: nothing to compare beyond the id.
            assert self.provider.content_digest(request.body, request.headers) is None
            return
        other_id = f"replayed-{uuid.uuid4()}"
        headers = {**request.headers, self.id_header: other_id}
        with caplog.at_level(logging.DEBUG, logger="webhooks"):
            response = self.post(client, request.body, headers)
            again = self.post(client, request.body, request.headers)  # a true redelivery
        assert WebhookEvent.objects.count() == 1
        stored = WebhookEvent.objects.get()
        assert (stored.event_id, bytes(stored.body)) == (request.event_id, request.body)
        if self.id_signed:
            assert response.status_code == 400
            assert response.json() == {"error": "invalid_signature"}
            assert signals.of(webhook_duplicate) == [
                {"endpoint": self.endpoint, "event_id": request.event_id, "replay_of": None}
            ]
            return
        assert response.status_code == 200
        assert response.json() == {"status": "duplicate", "event_id": other_id}
        assert again.json() == {"status": "duplicate", "event_id": request.event_id}
        assert signals.of(webhook_duplicate) == [
            {"endpoint": self.endpoint, "event_id": other_id, "replay_of": request.event_id},
            {"endpoint": self.endpoint, "event_id": request.event_id, "replay_of": None},
        ]
        [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert "replay" in warning
        assert other_id in warning and request.event_id in warning
        signature = request.headers[self.provider.signature_header]
        logged = "\n".join(r.getMessage() for r in caplog.records)
        for secret_or_content in (signature, request.body.decode(), *self.config["SECRETS"]):
            assert secret_or_content not in logged

    # -- time: tolerance both ways, per endpoint; or, for schemes without a timestamp, replays
    # recognised by their id ---------------------------------------------------------------

    def test_stale_timestamp(self, client):
        stale = int(time.time() - self.provider.tolerance - 30)
        request = build_request(self.endpoint, timestamp=stale)
        response = self.post(client, request.body, request.headers)
        if self.timestamped:
            assert response.status_code == 400
            assert response.json() == {"error": "invalid_signature"}
            assert not WebhookEvent.objects.exists()
        else:
            # Nothing in the scheme says when it was signed: an old delivery is accepted once,
            # and its replay is a duplicate that changes nothing.
            assert response.json()["status"] == "accepted"
            assert send_request(client, request).json()["status"] == "duplicate"
            assert WebhookEvent.objects.count() == 1

    def test_future_timestamp(self, client):
        future = int(time.time() + self.provider.tolerance + 30)
        request = build_request(self.endpoint, timestamp=future)
        response = self.post(client, request.body, request.headers)
        if self.timestamped:
            assert response.status_code == 400
            assert response.json() == {"error": "invalid_signature"}
            assert not WebhookEvent.objects.exists()
        else:
            assert response.json()["status"] == "accepted"

    def test_timestamps_within_tolerance_both_ways_are_accepted(self, client):
        tolerance = self.provider.tolerance
        for offset in (-tolerance + 30, tolerance - 30):
            request = build_request(self.endpoint, timestamp=int(time.time() + offset))
            response = self.post(client, request.body, request.headers)
            assert response.status_code == 200, (offset, response.content)
        assert WebhookEvent.objects.count() == 2

    def test_endpoint_tolerance_overrides_the_global_one(self, client, settings):
        settings.WEBHOOKS = {
            "TOLERANCE": 3600,
            "ENDPOINTS": {self.endpoint: {**self.config, "TOLERANCE": 60}},
        }
        assert self.provider.tolerance == 60
        stale = build_request(self.endpoint, timestamp=int(time.time() - 120))
        expected = 400 if self.timestamped else 200
        assert self.post(client, stale.body, stale.headers).status_code == expected
        settings.WEBHOOKS = {"TOLERANCE": 3600, "ENDPOINTS": {self.endpoint: dict(self.config)}}
        assert self.provider.tolerance == 3600
        again = build_request(self.endpoint, timestamp=int(time.time() - 120))
        assert self.post(client, again.body, again.headers).status_code == 200

    def test_malformed_timestamp_is_refused(self, client):
        request = build_request(self.endpoint)
        headers = self.with_timestamp(request.headers, "12abc")
        response = self.post(client, request.body, headers)
        if self.timestamped:
            assert response.status_code == 400
            assert response.json() == {"error": "invalid_signature"}
        else:
            assert headers == request.headers  # no timestamp to spoil
            assert response.status_code == 200

    def with_timestamp(self, headers: dict[str, str], value: str) -> dict[str, str]:
        """``headers`` with the timestamp replaced by ``value`` (signature left as is)."""
        name = self.provider.timestamp_header
        return {**headers, name: value} if name else dict(headers)
