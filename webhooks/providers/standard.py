"""Standard Webhooks (Svix, Clerk, Resend, ...): ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64>[ v1,<base64>...]``, signed with the ``standardwebhooks`` library.

The signed content is ``"<webhook-id>.<webhook-timestamp>.<body>"``, HMAC-SHA256. The key is the
base64 DECODING of what follows ``whsec_`` (unlike Stripe, which uses the whole string): the
library's ``Webhook(secret)`` does that, and its ``sign`` computes the expected signature. We
compare it with each ``v1`` entry ourselves, in constant time, because the library's ``verify``
hard-codes a 5-minute tolerance where ours is the endpoint's ``TOLERANCE``, checked both ways.

Extracted: id ``webhook-id`` (it is signed, so a request without one is ``invalid_signature``),
type the payload's ``type`` (required), occurred the payload's ``timestamp`` (ISO 8601) or else
``webhook-timestamp``.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets as _secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import standardwebhooks

from tether.dates import utc_datetime

from ..conf import ConfigProblem
from ..exceptions import InvalidSignature
from . import samples
from .base import (
    ParsedEvent,
    Provider,
    Sample,
    any_secret,
    as_headers,
    constant_time_equals,
    datetime_from_unix,
    decode_utf8,
    load_json_object,
    require_identifier,
)

MAX_SIGNATURES = 16
#: The shortest key a secret may decode to: the spec's secrets are 24 to 64 random bytes.
MIN_KEY_BYTES = 24


class StandardWebhooksProvider(Provider):
    name = "standard"
    id_header = "webhook-id"
    timestamp_header = "webhook-timestamp"
    signature_header = "webhook-signature"

    def extra_stored_headers(self) -> tuple[str, ...]:
        return (self.id_header,)

    @classmethod
    def secret_problems(cls, endpoint: str, key: str, secret: str) -> list[ConfigProblem]:
        """A secret must be base64 (after an optional ``whsec_``; unpadded is fine, as the
        library takes it) of at least ``MIN_KEY_BYTES`` bytes. The library alone would take
        anything: its decoding drops stray characters (``whsec_not base64 at all!!``) and takes
        a 1-byte key (``whsec_AA``)."""
        decoded = _secret_key(secret)
        if decoded is None:
            message = "is not base64 (optionally after whsec_)"
        elif len(decoded) < MIN_KEY_BYTES:
            message = f"decodes to fewer than {MIN_KEY_BYTES} bytes"
        else:
            return []
        return [
            ConfigProblem(
                "E006",
                key,
                f"endpoint {endpoint!r}: a Standard Webhooks secret {message}; it must be the "
                f"base64 of at least {MIN_KEY_BYTES} bytes, optionally after whsec_.",
                "Copy the secret exactly as the sender shows it, e.g. whsec_MfKQ9r8G... "
                f"(Standard Webhooks secrets are {MIN_KEY_BYTES} to 64 random bytes, base64).",
            )
        ]

    @classmethod
    def make_secret(cls) -> str:
        return "whsec_" + base64.b64encode(_secrets.token_bytes(24)).decode("ascii")

    def check_headers(self, headers: Mapping[str, str], *, now: float | None = None) -> None:
        super().check_headers(headers, now=now)
        if not as_headers(headers).get(self.id_header):
            raise InvalidSignature("missing webhook-id header")

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float | None = None) -> None:
        headers = as_headers(headers)
        msg_id = headers.get(self.id_header) or ""
        timestamp = self.read_timestamp(headers)
        self.check_timestamp(timestamp, now=now)
        text = decode_utf8(body)
        given = _v1_signatures(headers.get(self.signature_header) or "")
        if not given:
            raise InvalidSignature("webhook-signature has no v1 entry")
        signed_at = datetime_from_unix(timestamp)
        if signed_at is None:  # within a (huge) TOLERANCE, but not a time
            raise InvalidSignature("webhook-timestamp is out of range")

        def matches(secret: str) -> bool:
            expected_text = standardwebhooks.Webhook(secret).sign(msg_id, signed_at, text)
            expected = base64.b64decode(expected_text.split(",", 1)[1])
            return any([constant_time_equals(expected, sig) for sig in given])

        if not any_secret(self.secrets, matches):
            raise InvalidSignature("webhook-signature matches no endpoint secret")

    def parse(self, body: bytes, headers: Mapping[str, str]) -> ParsedEvent:
        headers = as_headers(headers)
        payload = load_json_object(body)
        occurred = _parse_iso(payload.get("timestamp"))
        if occurred is None:
            occurred = datetime_from_unix(self.read_timestamp(headers))
        return ParsedEvent(
            event_id=require_identifier(headers.get(self.id_header), "webhook-id"),
            event_type=require_identifier(payload.get("type"), "event type"),
            occurred_at=occurred,
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
        msg_id = event_id or f"msg_{_secrets.token_urlsafe(18)}"
        timestamp = int(time.time()) if timestamp is None else timestamp
        signature = standardwebhooks.Webhook(self._signing_secret(secret)).sign(
            msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode("utf-8")
        )
        return {
            self.id_header: msg_id,
            self.timestamp_header: str(timestamp),
            self.signature_header: signature,
        }

    def sample(self, event_type: str | None = None, *, event_id: str | None = None) -> Sample:
        payload = samples.standard_payload()
        if event_type:
            payload["type"] = event_type
        payload["timestamp"] = datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")
        body = json.dumps(payload, separators=(",", ":")).encode()
        return Sample(
            body=body,
            event_id=event_id or f"msg_{_secrets.token_urlsafe(18)}",
            event_type=payload["type"],
        )


def _secret_key(secret: str) -> bytes | None:
    """The key a secret stands for: the strict base64 decoding of what follows an optional
    ``whsec_`` (missing padding added, as the library does), or None if it is not base64."""
    encoded = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _v1_signatures(header: str) -> list[bytes]:
    """The decoded ``v1`` signatures of a ``webhook-signature`` header (others skipped)."""
    found = []
    for entry in header.split(" ")[:MAX_SIGNATURES]:
        version, _, value = entry.partition(",")
        if version != "v1" or not value.isascii():
            continue
        try:
            found.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def _parse_iso(value: object) -> datetime | None:
    """The payload's ISO 8601 ``timestamp`` in UTC (naive taken as UTC), or None if it is not
    one or is out of range (``utc_datetime``)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return utc_datetime(parsed)
