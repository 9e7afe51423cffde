"""GitHub: the shared contract, GitHub's documented test vector, form-encoded bodies."""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from tests.vendor import vendor_bytes, vendor_json
from webhooks.exceptions import InvalidSignature, MalformedPayload
from webhooks.models import WebhookEvent
from webhooks.providers import get_provider
from webhooks.providers.github import form_encode
from webhooks.signals import webhook_duplicate, webhook_received
from webhooks.testing import build_request, send_request, sign_request

from .contract import ProviderContract

SECRET = "test-github-secret"

# GitHub's documented test values: docs.github.com, "Validating webhook deliveries", section
# "Testing the webhook payload validation" (as recorded in tests/vendor_payloads/SOURCES.md).
DOC_SECRET = "It's a Secret to Everybody"
DOC_PAYLOAD = b"Hello, World!"
DOC_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


class TestGitHubContract(ProviderContract):
    endpoint = "github"
    timestamped = False  # GitHub signs no timestamp
    id_header = "X-GitHub-Delivery"  # not signed: the same body under another id is a replay
    config = {"PROVIDER": "github", "SECRETS": [SECRET]}

    def request_without_event_id(self):
        body = json.dumps({"zen": "Keep it logically awesome."}).encode()
        headers = sign_request(self.endpoint, body, event_type="ping")
        del headers["X-GitHub-Delivery"]
        return body, headers

    def bodies_with(self, payload_json):
        return [
            *super().bodies_with(payload_json),
            (form_encode(payload_json.encode()), "application/x-www-form-urlencoded"),
        ]

    def test_a_stored_delivery_relabelled_and_resent_is_a_duplicate(self, client, signals, caplog):
        """What a staff user who can read a stored body and its X-Hub-Signature-256 could do:
        send them again under a new delivery id, as another event."""
        body = vendor_bytes("github/pull_request.opened.payload.json")
        request = build_request(self.endpoint, body, event_type="pull_request")
        assert send_request(client, request).json()["status"] == "accepted"
        forged = str(uuid.uuid4())
        headers = {**request.headers, "X-GitHub-Delivery": forged, "X-GitHub-Event": "issues"}
        with caplog.at_level(logging.WARNING, logger="webhooks"):
            response = self.post(client, body, headers)
        assert response.status_code == 200
        assert response.json() == {"status": "duplicate", "event_id": forged}
        stored = WebhookEvent.objects.get()
        assert (stored.event_id, stored.event_type) == (request.event_id, "pull_request.opened")
        assert signals.of(webhook_duplicate) == [
            {"endpoint": "github", "event_id": forged, "replay_of": request.event_id}
        ]
        assert not signals.of(webhook_received)
        [warning] = caplog.records
        assert "replay" in warning.getMessage() and request.event_id in warning.getMessage()

    def test_the_same_payload_signed_in_another_body_is_a_new_event(self, client):
        """Only identical signed bytes are a replay: the same JSON with other whitespace is
        what another delivery of GitHub would look like, and is accepted."""
        payload = vendor_json("github/push.payload.json")
        first = build_request(self.endpoint, json.dumps(payload).encode(), event_type="push")
        second = build_request(
            self.endpoint, json.dumps(payload, indent=2).encode(), event_type="push"
        )
        assert send_request(client, first).json()["status"] == "accepted"
        assert send_request(client, second).json()["status"] == "accepted"
        assert WebhookEvent.objects.count() == 2

    def test_missing_event_header_is_malformed(self, client):
        body = b'{"zen": "x"}'
        headers = sign_request(self.endpoint, body)
        del headers["X-GitHub-Event"]
        response = self.post(client, body, headers)
        assert response.json() == {"error": "malformed_payload"}

    def test_sha1_signature_alone_is_refused(self, client):
        import hashlib
        import hmac

        body = b'{"zen": "x"}'
        headers = sign_request(self.endpoint, body)
        del headers["X-Hub-Signature-256"]
        headers["X-Hub-Signature"] = (
            "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
        )
        response = self.post(client, body, headers)
        assert response.json() == {"error": "invalid_signature"}

    @pytest.mark.parametrize(
        ("name", "event", "expected_type"),
        [
            ("push.payload.json", "push", "push"),
            ("pull_request.opened.payload.json", "pull_request", "pull_request.opened"),
            ("issues.opened.payload.json", "issues", "issues.opened"),
            ("ping.payload.json", "ping", "ping"),
        ],
    )
    def test_octokit_payload_examples(self, client, name, event, expected_type):
        # octokit/webhooks payload examples, signed at run time (tests/vendor_payloads/SOURCES.md).
        body = vendor_bytes(f"github/{name}")
        delivery = str(uuid.uuid4())
        headers = sign_request(self.endpoint, body, event_type=event, event_id=delivery)
        response = self.post(client, body, headers)
        assert response.json() == {"status": "accepted", "event_id": delivery}
        stored = WebhookEvent.objects.get()
        assert stored.event_type == expected_type
        assert bytes(stored.body) == body
        assert stored.occurred_at is None

    def test_form_encoded_body(self, client):
        body = form_encode(vendor_bytes("github/pull_request.opened.payload.json"))
        headers = sign_request(
            self.endpoint,
            body,
            event_type="pull_request",
            content_type="application/x-www-form-urlencoded",
        )
        response = self.post(client, body, headers)
        assert response.status_code == 200, response.content
        stored = WebhookEvent.objects.get()
        assert stored.event_type == "pull_request.opened"
        assert stored.payload["pull_request"]["number"] == 2
        assert bytes(stored.body) == body

    @pytest.mark.parametrize(
        "body", [b"payload=%7Bnot-json", b"other=1", b"payload=1&payload=2", b"%%%"]
    )
    def test_bad_form_bodies_are_malformed(self, client, body):
        headers = sign_request(
            self.endpoint, body, event_type="push", content_type="application/x-www-form-urlencoded"
        )
        response = self.post(client, body, headers)
        assert response.json() == {"error": "malformed_payload"}


@pytest.mark.django_db
class TestGitHubScheme:
    @pytest.fixture(autouse=True)
    def _endpoint(self, settings):
        settings.WEBHOOKS = {
            "ENDPOINTS": {"github": {"PROVIDER": "github", "SECRETS": [DOC_SECRET]}}
        }

    def test_documented_vector(self):
        provider = get_provider("github")
        assert provider.sign(DOC_PAYLOAD)["X-Hub-Signature-256"] == DOC_SIGNATURE
        provider.verify(DOC_PAYLOAD, {"X-Hub-Signature-256": DOC_SIGNATURE})
        provider.verify(
            DOC_PAYLOAD,
            {"X-Hub-Signature-256": DOC_SIGNATURE.upper().replace("SHA256=", "sha256=")},
        )
        with pytest.raises(InvalidSignature):
            provider.verify(DOC_PAYLOAD + b" ", {"X-Hub-Signature-256": DOC_SIGNATURE})
        with pytest.raises(InvalidSignature):
            provider.verify(DOC_PAYLOAD, {"X-Hub-Signature-256": DOC_SIGNATURE[len("sha256=") :]})

    def test_documented_vector_through_the_view(self, client):
        # The signature verifies, so the answer is about the body (not JSON), not the signature.
        response = client.post(
            "/webhooks/github/",
            data=DOC_PAYLOAD,
            content_type="application/json",
            headers={
                "X-Hub-Signature-256": DOC_SIGNATURE,
                "X-GitHub-Event": "ping",
                "X-GitHub-Delivery": str(uuid.uuid4()),
            },
        )
        assert response.status_code == 400
        assert response.json() == {"error": "malformed_payload"}

    def test_type_without_action(self):
        parsed = get_provider("github").parse(
            b'{"action": ""}', {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d1"}
        )
        assert (parsed.event_type, parsed.event_id) == ("push", "d1")

    def test_action_that_is_not_text_is_ignored(self):
        parsed = get_provider("github").parse(
            b'{"action": 3}', {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d1"}
        )
        assert parsed.event_type == "push"

    def test_blank_delivery_is_malformed(self):
        with pytest.raises(MalformedPayload):
            get_provider("github").parse(
                b"{}", {"X-GitHub-Event": "push", "X-GitHub-Delivery": " "}
            )

    def test_stored_headers(self):
        assert set(get_provider("github").stored_header_names()) == {
            "X-Hub-Signature-256",
            "X-GitHub-Delivery",
            "X-GitHub-Event",
            "Content-Type",
            "User-Agent",
        }
