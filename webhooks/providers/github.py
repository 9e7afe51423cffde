"""GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``.

Only the SHA-256 header is accepted; the legacy ``X-Hub-Signature`` (SHA-1) is ignored, so a
request carrying only that one is refused. The key is the secret's UTF-8 bytes. GitHub's scheme
has no timestamp, so there is no tolerance: a replayed delivery is recognised by its id instead
(answered ``duplicate``). Neither ``X-GitHub-Delivery`` nor ``X-GitHub-Event`` is signed, so a
body and its signature sent again under a new delivery id (or event name) are recognised by the
body instead (``content_digest``: the same signed bytes are a replay, answered ``duplicate``).
GitHub's own redeliveries keep their ``X-GitHub-Delivery``.

Extracted: id ``X-GitHub-Delivery``, type ``X-GitHub-Event`` plus ``.<action>`` when the payload
has an ``action`` (``pull_request.opened``), no occurred time. The body is JSON, or
form-encoded with the JSON in its ``payload`` field (a hook set to
``application/x-www-form-urlencoded``); the signature covers the raw body either way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets as _secrets
import uuid
from collections.abc import Mapping
from typing import Any
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
    signed_content_digest,
)

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

#: Where each sample names what it is about (the hook pinged, the tag deleted, the pull request,
#: the issue). ``sample`` gives it a fresh value, so that two samples are two events, as two real
#: deliveries are: the same signed body twice is one event (``content_digest``).
SAMPLE_SUBJECTS: dict[str, tuple[str, ...]] = {
    "ping": ("hook_id", "hook.id"),
    "push": ("ref",),
    "pull_request": ("pull_request.id",),
    "issues": ("issue.id",),
}


class GitHubProvider(Provider):
    name = "github"
    signature_header = "X-Hub-Signature-256"
    delivery_header = "X-GitHub-Delivery"
    event_header = "X-GitHub-Event"
    prefix = b"sha256="

    @classmethod
    def gives_occurred_time(cls, config: Mapping[str, Any]) -> bool:
        return False  # a delivery carries no time of its own

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

    def content_digest(self, body: bytes, headers: Mapping[str, str]) -> bytes:
        return signed_content_digest(body)  # the signature covers the raw body alone

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
        key = self._signing_secret(secret)
        digest = hmac.new(key.encode("utf-8"), body, hashlib.sha256).hexdigest()
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
        _give_a_fresh_subject(payload, name)
        if action:
            payload["action"] = action
        elif "action" in payload:
            event_type = f"{name}.{payload['action']}"
        body = json.dumps(payload, indent=2).encode()
        return Sample(body=body, event_id=event_id or str(uuid.uuid4()), event_type=event_type)


def _give_a_fresh_subject(payload: dict[str, Any], name: str) -> None:
    """A new number for the sample's subject (``SAMPLE_SUBJECTS``; appended to a text one); an
    event without a sample of its own gets a ``hook_id``."""
    number = 10**8 + _secrets.randbelow(9 * 10**8)
    paths = SAMPLE_SUBJECTS.get(name)
    if paths is None:
        payload["hook_id"] = number
        return
    for path in paths:
        *parents, last = path.split(".")
        node = payload
        for part in parents:
            node = node[part]
        node[last] = number if isinstance(node[last], int) else f"{node[last]}-{number}"


def form_encode(payload_json: bytes) -> bytes:
    """A JSON body as GitHub sends it to a form-encoded hook (``payload=...``)."""
    return urlencode({"payload": payload_json.decode("utf-8")}).encode("ascii")
