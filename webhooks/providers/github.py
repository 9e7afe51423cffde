"""GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``.

Only the SHA-256 header is accepted; the legacy ``X-Hub-Signature`` (SHA-1) is ignored, so a
request carrying only that one is refused. The key is the secret's UTF-8 bytes. GitHub's scheme
has no timestamp, so there is no tolerance: a replayed delivery is recognised by its id instead
(answered ``duplicate``).

Extracted: id ``X-GitHub-Delivery``, type ``X-GitHub-Event`` plus ``.<action>`` when the payload
has an ``action`` (``pull_request.opened``), no occurred time. The body is JSON, or
form-encoded with the JSON in its ``payload`` field (a hook set to
``application/x-www-form-urlencoded``); the signature covers the raw body either way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from urllib.parse import parse_qs, urlencode

from ..exceptions import InvalidSignature, MalformedPayload
from . import samples
from .base import (
    ParsedEvent,
    Provider,
    Sample,
    any_secret,
    as_headers,
    constant_time_equals,
    header_bytes,
    load_json_object,
    require_identifier,
)

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


class GitHubProvider(Provider):
    name = "github"
    signature_header = "X-Hub-Signature-256"
    delivery_header = "X-GitHub-Delivery"
    event_header = "X-GitHub-Event"
    prefix = b"sha256="

    def extra_stored_headers(self) -> tuple[str, ...]:
        return (self.delivery_header, self.event_header)

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float | None = None) -> None:
        given = header_bytes(as_headers(headers).get(self.signature_header) or "")
        if given is None or not given.startswith(self.prefix):
            raise InvalidSignature("X-Hub-Signature-256 is not sha256=<hex>")
        given = given[len(self.prefix) :].lower()

        def matches(secret: str) -> bool:
            expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
            return constant_time_equals(expected.encode("ascii"), given)

        if not any_secret(self.secrets, matches):
            raise InvalidSignature("X-Hub-Signature-256 matches no endpoint secret")

    def parse(self, body: bytes, headers: Mapping[str, str]) -> ParsedEvent:
        headers = as_headers(headers)
        content_type = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if content_type == FORM_CONTENT_TYPE:
            try:
                fields = parse_qs(body.decode("utf-8"), max_num_fields=100, strict_parsing=True)
            except ValueError as exc:
                raise MalformedPayload("form body is not decodable") from exc
            if len(fields.get("payload", ())) != 1:
                raise MalformedPayload("form body has no single payload field")
            payload = load_json_object(fields["payload"][0])
        else:
            payload = load_json_object(body)
        event = require_identifier(headers.get(self.event_header), "X-GitHub-Event")
        action = payload.get("action")
        if isinstance(action, str) and action:
            event = f"{event}.{action}"
        return ParsedEvent(
            event_id=require_identifier(headers.get(self.delivery_header), "X-GitHub-Delivery"),
            event_type=require_identifier(event, "event type"),
            occurred_at=None,
            payload=payload,
        )

    def sign(
        self,
        body: bytes,
        *,
        secret: str | None = None,
        timestamp: int | None = None,
        event_id: str | None = None,
        event_type: str | None = None,
    ) -> dict[str, str]:
        key = self._signing_secret(secret).encode("utf-8")
        digest = hmac.new(key, body, hashlib.sha256).hexdigest()
        return {
            self.signature_header: f"sha256={digest}",
            self.delivery_header: event_id or str(uuid.uuid4()),
            # The header carries the event name only; the action is in the body.
            self.event_header: (event_type or "ping").split(".", 1)[0],
            "User-Agent": "GitHub-Hookshot/tether-test",
        }

    def sample(self, event_type: str | None = None, *, event_id: str | None = None) -> Sample:
        event_type = event_type or "ping"
        name, _, action = event_type.partition(".")
        payload = samples.github_payload(name)
        if payload is None:
            payload = {"repository": samples.github_payload("ping")["repository"]}  # type: ignore[index]
        if action:
            payload["action"] = action
        elif "action" in payload:
            event_type = f"{name}.{payload['action']}"
        body = json.dumps(payload, indent=2).encode()
        return Sample(body=body, event_id=event_id or str(uuid.uuid4()), event_type=event_type)


def form_encode(payload_json: bytes) -> bytes:
    """A JSON body as GitHub sends it to a form-encoded hook (``payload=...``)."""
    return urlencode({"payload": payload_json.decode("utf-8")}).encode("ascii")
