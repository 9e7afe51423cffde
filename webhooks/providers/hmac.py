"""Generic HMAC signatures, configured per endpoint, for vendors with a scheme of their own.

Options (besides ``SECRETS``, ``TOLERANCE``, ``MAX_BODY_BYTES``):

- ``HEADER`` (required): the header carrying the signature.
- ``ALGORITHM``: ``"sha256"`` (default), ``"sha1"`` or ``"sha512"``.
- ``ENCODING``: ``"hex"`` (default, compared case-insensitively) or ``"base64"``.
- ``PREFIX``: text before the digest in the header, e.g. ``"sha256="`` (default ``""``).
- ``EVENT_ID``, ``EVENT_TYPE`` (required): where to find them, ``"header:Name"`` or
  ``"json:dotted.path"`` (``"json:data.id"``; digits index lists).
- ``TIMESTAMP_HEADER``: a header with the signing time in Unix seconds; when set, requests
  outside ``TOLERANCE`` either way are refused, and the timestamp is the occurred time.
- ``SIGNED_PAYLOAD``: what is signed, ``"{body}"`` or ``"{timestamp}.{body}"``; the default is
  ``"{timestamp}.{body}"`` when ``TIMESTAMP_HEADER`` is set, else ``"{body}"``.

The key is the secret's UTF-8 bytes.

An id from a header is outside what is signed: the same signed payload under another id is a
replay (``content_digest``, answered ``duplicate``). ``manage.py check`` warns (``webhooks.W002``)
when that is the only protection (only the body is signed), and when ``TIMESTAMP_HEADER`` is
checked but not signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets as _secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ..conf import ConfigProblem
from ..exceptions import InvalidSignature
from .base import (
    ParsedEvent,
    Provider,
    Sample,
    any_secret,
    as_headers,
    constant_time_equals,
    datetime_from_unix,
    endpoint_key,
    header_bytes,
    load_json_object,
    require_identifier,
    signed_content_digest,
)

ALGORITHMS = {"sha256": hashlib.sha256, "sha1": hashlib.sha1, "sha512": hashlib.sha512}
ENCODINGS = ("hex", "base64")
SIGNED_PAYLOADS = ("{body}", "{timestamp}.{body}")
REQUIRED = ("HEADER", "EVENT_ID", "EVENT_TYPE")
LOCATION_KINDS = ("header", "json")


class HmacProvider(Provider):
    name = "hmac"
    options = (
        "HEADER",
        "ALGORITHM",
        "ENCODING",
        "PREFIX",
        "EVENT_ID",
        "EVENT_TYPE",
        "TIMESTAMP_HEADER",
        "SIGNED_PAYLOAD",
    )

    @classmethod
    def gives_occurred_time(cls, config: Mapping[str, Any]) -> bool:
        return bool(config.get("TIMESTAMP_HEADER"))  # the signed timestamp is the occurred time

    def __post_init__(self) -> None:
        super().__post_init__()
        config = self.config
        self.header: str = config["HEADER"]
        self.algorithm = ALGORITHMS[config.get("ALGORITHM", "sha256")]
        self.encoding: str = config.get("ENCODING", "hex")
        self.prefix: str = config.get("PREFIX", "")
        self.event_id_at = _checked_location(config["EVENT_ID"])
        self.event_type_at = _checked_location(config["EVENT_TYPE"])
        self.ts_header: str | None = config.get("TIMESTAMP_HEADER") or None
        self.signed_payload: str = config.get(
            "SIGNED_PAYLOAD", "{timestamp}.{body}" if self.ts_header else "{body}"
        )

    # The scheme's header names come from settings.
    @property
    def signature_header(self) -> str:
        return self.header

    @property
    def timestamp_header(self) -> str | None:
        return self.ts_header

    def extra_stored_headers(self) -> tuple[str, ...]:
        return tuple(
            name for kind, name in (self.event_id_at, self.event_type_at) if kind == "header"
        )

    @classmethod
    def config_problems(cls, endpoint: str, config: Mapping[str, Any]) -> list[ConfigProblem]:
        problems = super().config_problems(endpoint, config)
        for option in REQUIRED:
            if option not in config or config[option] in (None, ""):
                problems.append(
                    ConfigProblem(
                        "E004",
                        endpoint_key(endpoint, option),
                        f"hmac endpoint {endpoint!r} is missing its {option} option.",
                        _HINTS[option],
                    )
                )
        for option in cls.options:
            value = config.get(option)
            if value is not None and not isinstance(value, str):
                problems.append(
                    ConfigProblem(
                        "E005",
                        endpoint_key(endpoint, option),
                        f"hmac endpoint {endpoint!r}: {option} must be a string.",
                        _HINTS[option],
                    )
                )
                continue
            if not value:
                continue
            invalid = (
                (option == "ALGORITHM" and value not in ALGORITHMS)
                or (option == "ENCODING" and value not in ENCODINGS)
                or (option == "SIGNED_PAYLOAD" and value not in SIGNED_PAYLOADS)
                or (option in ("EVENT_ID", "EVENT_TYPE") and _location(value) is None)
            )
            if invalid:
                problems.append(
                    ConfigProblem(
                        "E006",
                        endpoint_key(endpoint, option),
                        f"hmac endpoint {endpoint!r}: {option} {value!r} is not valid.",
                        _HINTS[option],
                    )
                )
        if config.get("SIGNED_PAYLOAD") == "{timestamp}.{body}" and not config.get(
            "TIMESTAMP_HEADER"
        ):
            problems.append(
                ConfigProblem(
                    "E004",
                    endpoint_key(endpoint, "TIMESTAMP_HEADER"),
                    f"hmac endpoint {endpoint!r} signs the timestamp but has no TIMESTAMP_HEADER.",
                    _HINTS["TIMESTAMP_HEADER"],
                )
            )
        return problems

    @classmethod
    def config_warnings(cls, endpoint: str, config: Mapping[str, Any]) -> list[ConfigProblem]:
        warnings = []
        ts_header = config.get("TIMESTAMP_HEADER")
        signed = config.get("SIGNED_PAYLOAD") or ("{timestamp}.{body}" if ts_header else "{body}")
        id_location = _location(config["EVENT_ID"])
        if signed == "{body}" and id_location is not None and id_location[0] == "header":
            warnings.append(
                ConfigProblem(
                    "W002",
                    endpoint_key(endpoint, "EVENT_ID"),
                    f"hmac endpoint {endpoint!r} takes its event id from a header, which is not "
                    "signed, and signs no timestamp: whoever has seen a delivery (a stored body "
                    "and its signature) can send it again under a new id. That is answered as a "
                    "duplicate (a replay of the same signed body) only while the original event "
                    "is stored (RETENTION_DAYS); after that it is stored and processed again.",
                    'If the vendor puts the id in the body, use EVENT_ID "json:<path>"; if it '
                    'signs a timestamp, set TIMESTAMP_HEADER and SIGNED_PAYLOAD "{timestamp}.'
                    '{body}", so that an old delivery is refused.',
                )
            )
        if ts_header and signed == "{body}":
            warnings.append(
                ConfigProblem(
                    "W002",
                    endpoint_key(endpoint, "SIGNED_PAYLOAD"),
                    f"hmac endpoint {endpoint!r} checks TIMESTAMP_HEADER against TOLERANCE, but "
                    'SIGNED_PAYLOAD "{body}" leaves the timestamp unsigned: a delivery sent again '
                    "later with a fresh timestamp passes the check, so it refuses no replay.",
                    "If the vendor signs the timestamp with the body, set SIGNED_PAYLOAD to "
                    '"{timestamp}.{body}" (the default when TIMESTAMP_HEADER is set).',
                )
            )
        return warnings

    def _signed_parts(self, body: bytes, timestamp: int | None) -> tuple[bytes, ...]:
        """What the signature covers, in order (``SIGNED_PAYLOAD``)."""
        if self.signed_payload == "{timestamp}.{body}":
            return f"{timestamp}.".encode("ascii"), body
        return (body,)

    def _digest(self, secret: str, body: bytes, timestamp: int | None) -> bytes:
        mac = hmac.new(secret.encode("utf-8"), digestmod=self.algorithm)
        for part in self._signed_parts(body, timestamp):
            mac.update(part)
        return mac.digest()

    def _encode(self, digest: bytes) -> str:
        if self.encoding == "base64":
            return base64.b64encode(digest).decode("ascii")
        return digest.hex()

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float | None = None) -> None:
        headers = as_headers(headers)
        timestamp = None
        if self.ts_header:
            timestamp = self.read_timestamp(headers)
            self.check_timestamp(timestamp, now=now)
        value = headers.get(self.header) or ""
        if not value.startswith(self.prefix):
            raise InvalidSignature(f"{self.header} does not start with the expected prefix")
        given = header_bytes(value[len(self.prefix) :].strip())
        if given is None:
            raise InvalidSignature(f"{self.header} is not ASCII")
        if self.encoding == "base64":
            try:
                given = base64.b64decode(given, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidSignature(f"{self.header} is not base64") from exc
        else:
            given = given.lower()

        def matches(secret: str) -> bool:
            digest = self._digest(secret, body, timestamp)
            expected = digest if self.encoding == "base64" else digest.hex().encode("ascii")
            return constant_time_equals(expected, given)

        if not any_secret(self.secrets, matches):
            raise InvalidSignature(f"{self.header} matches no endpoint secret")

    def content_digest(self, body: bytes, headers: Mapping[str, str]) -> bytes | None:
        if self.event_id_at[0] != "header":
            return None  # the id is in the body, which is signed
        timestamp = None
        if self.signed_payload == "{timestamp}.{body}":
            timestamp = self.read_timestamp(as_headers(headers))
        return signed_content_digest(*self._signed_parts(body, timestamp))

    def parse(self, body: bytes, headers: Mapping[str, str]) -> ParsedEvent:
        headers = as_headers(headers)
        payload = load_json_object(body)
        occurred = None
        if self.ts_header:
            occurred = datetime_from_unix(self.read_timestamp(headers))
        return ParsedEvent(
            event_id=require_identifier(self._find(self.event_id_at, payload, headers), "event id"),
            event_type=require_identifier(
                self._find(self.event_type_at, payload, headers), "event type"
            ),
            occurred_at=occurred,
            payload=payload,
        )

    @staticmethod
    def _find(location: tuple[str, str], payload: Any, headers: Mapping[str, str]) -> Any:
        kind, where = location
        if kind == "header":
            return headers.get(where)
        value = payload
        for part in where.split("."):
            if isinstance(value, dict):
                value = value.get(part)
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return None
        return value

    def sign(
        self,
        body: bytes,
        *,
        secret: str | None = None,
        timestamp: int | None = None,
        event_id: str | None = None,
        event_type: str | None = None,
    ) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.ts_header:
            timestamp = int(time.time()) if timestamp is None else timestamp
            headers[self.ts_header] = str(timestamp)
        digest = self._digest(self._signing_secret(secret), body, timestamp)
        headers[self.header] = self.prefix + self._encode(digest)
        for (kind, name), value, default in (
            (self.event_id_at, event_id, str(uuid.uuid4())),
            (self.event_type_at, event_type, "test.event"),
        ):
            if kind == "header":
                headers[name] = value or default
        return headers

    def sample(self, event_type: str | None = None, *, event_id: str | None = None) -> Sample:
        event_id = event_id or f"evt_{_secrets.token_hex(12)}"
        event_type = event_type or "test.event"
        # A fresh object id: two samples are two events even when the id is in a header (the
        # same signed body under another id would be a replay: ``content_digest``).
        data = {"id": f"obj_{_secrets.token_hex(8)}", "message": "Hello from django-tether"}
        payload: dict[str, Any] = {"data": data}
        for (kind, where), value in (
            (self.event_id_at, event_id),
            (self.event_type_at, event_type),
        ):
            if kind == "json":
                _set_path(payload, where, value)
        body = json.dumps(payload, separators=(",", ":")).encode()
        return Sample(body=body, event_id=event_id, event_type=event_type)


def _location(value: str) -> tuple[str, str] | None:
    kind, sep, where = value.partition(":")
    if not sep or kind not in LOCATION_KINDS or not where.strip():
        return None
    if kind == "json" and any(not part for part in where.split(".")):
        return None
    return kind, where.strip()


def _checked_location(value: str) -> tuple[str, str]:
    """``_location`` of an option ``config_problems`` accepted (built providers have none
    other)."""
    location = _location(value)
    if location is None:
        raise ValueError(f"not a location: {value!r}")
    return location


def _set_path(payload: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = payload
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


_HINTS = {
    "HEADER": 'The header carrying the signature, e.g. "X-Partner-Signature".',
    "ALGORITHM": 'One of "sha256", "sha1", "sha512".',
    "ENCODING": 'One of "hex", "base64".',
    "PREFIX": 'Text before the digest in the header, e.g. "sha256=", or "".',
    "EVENT_ID": 'Where the event id is: "header:X-Event-Id" or "json:id" (dotted path).',
    "EVENT_TYPE": 'Where the event type is: "header:X-Event-Type" or "json:type" (dotted path).',
    "TIMESTAMP_HEADER": 'The header with the signing time in Unix seconds, e.g. "X-Timestamp".',
    "SIGNED_PAYLOAD": 'One of "{body}", "{timestamp}.{body}".',
}
