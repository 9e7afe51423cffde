"""``PROVIDER`` as a dotted path to a user's class: it gets the whole contract suite too.

``TokenHmacProvider`` is what a user might write for a vendor with its own scheme: HMAC-SHA256
over ``"<X-Acme-Id>.<body>"``, hex in ``X-Acme-Signature``, type in the payload's ``kind``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping

import pytest

from webhooks.exceptions import InvalidSignature
from webhooks.providers import get_provider
from webhooks.providers.base import (
    ParsedEvent,
    Provider,
    Sample,
    any_secret,
    as_headers,
    load_json_object,
    require_identifier,
)
from webhooks.testing import sign_request

from .contract import ProviderContract


class TokenHmacProvider(Provider):
    name = "acme-custom"
    signature_header = "X-Acme-Signature"

    def extra_stored_headers(self) -> tuple[str, ...]:
        return ("X-Acme-Id",)

    def _digest(self, secret: str, event_id: str, body: bytes) -> str:
        return hmac.new(
            secret.encode(), event_id.encode() + b"." + body, hashlib.sha256
        ).hexdigest()

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float | None = None) -> None:
        headers = as_headers(headers)
        event_id = headers.get("X-Acme-Id") or ""
        given = (headers.get(self.signature_header) or "").encode("latin-1")

        def matches(secret: str) -> bool:
            return hmac.compare_digest(self._digest(secret, event_id, body).encode(), given)

        if not any_secret(self.secrets, matches):
            raise InvalidSignature("X-Acme-Signature matches no secret")

    def parse(self, body: bytes, headers: Mapping[str, str]) -> ParsedEvent:
        payload = load_json_object(body)
        return ParsedEvent(
            event_id=require_identifier(as_headers(headers).get("X-Acme-Id"), "event id"),
            event_type=require_identifier(payload.get("kind"), "event type"),
            occurred_at=None,
            payload=payload,
        )

    def sign(self, body, *, secret=None, timestamp=None, event_id=None, event_type=None):
        event_id = event_id or str(uuid.uuid4())
        return {
            "X-Acme-Id": event_id,
            self.signature_header: self._digest(self._signing_secret(secret), event_id, body),
        }

    def sample(self, event_type=None, *, event_id=None) -> Sample:
        kind = event_type or "thing.happened"
        body = json.dumps({"kind": kind, "data": {"n": 1}}).encode()
        return Sample(body=body, event_id=event_id or str(uuid.uuid4()), event_type=kind)


class TestCustomProviderContract(ProviderContract):
    endpoint = "custom"
    timestamped = False
    id_header = "X-Acme-Id"
    id_signed = True
    config = {
        "PROVIDER": "tests.webhooks.providers.test_custom_provider.TokenHmacProvider",
        "SECRETS": ["custom-secret"],
    }

    def request_without_event_id(self):
        body = b'{"kind": "a.b"}'
        headers = sign_request(self.endpoint, body)
        # Signed over an empty id, and sent without one.
        del headers["X-Acme-Id"]
        headers["X-Acme-Signature"] = hmac.new(
            b"custom-secret", b"." + body, hashlib.sha256
        ).hexdigest()
        return body, headers

    def test_is_the_users_class(self):
        assert isinstance(get_provider(self.endpoint), TokenHmacProvider)


@pytest.mark.django_db
def test_builtin_names_resolve_to_their_classes(settings):
    from webhooks.providers.github import GitHubProvider
    from webhooks.providers.hmac import HmacProvider
    from webhooks.providers.standard import StandardWebhooksProvider
    from webhooks.providers.stripe import StripeProvider

    settings.WEBHOOKS = {
        "ENDPOINTS": {
            "a": {"PROVIDER": "stripe", "SECRETS": ["s"]},
            "b": {"PROVIDER": "github", "SECRETS": ["s"]},
            "c": {"PROVIDER": "standard", "SECRETS": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]},
            "d": {
                "PROVIDER": "hmac",
                "SECRETS": ["s"],
                "HEADER": "X",
                "EVENT_ID": "json:id",
                "EVENT_TYPE": "json:type",
            },
        }
    }
    kinds = [type(get_provider(name)) for name in "abcd"]
    assert kinds == [StripeProvider, GitHubProvider, StandardWebhooksProvider, HmacProvider]
    assert get_provider("a") is get_provider("a")  # cached until WEBHOOKS changes
    first = get_provider("a")
    settings.WEBHOOKS = {"ENDPOINTS": {"a": {"PROVIDER": "stripe", "SECRETS": ["t"]}}}
    assert get_provider("a") is not first
    assert get_provider("a").secrets == ("t",)
