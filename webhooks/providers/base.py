"""The one interface every provider implements, and the pieces the built-in ones share.

A provider knows one vendor's scheme and nothing else: it checks a request's headers before the
body is read (``check_headers``), verifies the signature over the exact body bytes with any of
the endpoint's secrets (``verify``), extracts the event (``parse``), says which headers are worth
keeping (``stored_headers``), digests what the signature covers when the event id is outside it
(``content_digest``) and, for tests and ``send_test_webhook``, does the vendor's side: ``sign`` a
body and build a ``sample`` event. The receive path (``webhooks.receiving``) calls
these in a fixed order and knows no vendor.

Providers raise ``InvalidSignature`` (answered 400 ``invalid_signature``, nothing stored) and
``MalformedPayload`` (400 ``malformed_payload``). Their messages say what is wrong, never a
secret or an expected signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, ClassVar

from django.utils.datastructures import CaseInsensitiveMapping
from django.views.decorators.debug import sensitive_variables

from tether.conf import SECRET_VARIABLES, SecretStr
from tether.dates import utc_datetime

from ..conf import ConfigProblem as ConfigProblem  # its home before webhooks.conf: still here
from ..conf import is_number, webhooks_settings
from ..exceptions import InvalidSignature, MalformedPayload, PayloadTooLarge

#: Headers every provider keeps besides its own scheme's.
COMMON_STORED_HEADERS: tuple[str, ...] = ("Content-Type", "User-Agent")

#: Longest event id and type the model stores (``WebhookEvent.event_id``/``event_type``).
MAX_ID_LENGTH = 255


@dataclass(frozen=True)
class ParsedEvent:
    """What a provider extracts from a verified request.

    ``occurred_at`` goes through ``utc_datetime`` whichever provider made it (a user's too): in
    UTC, naive taken as UTC, and None when out of range, so no provider can store a time that
    cannot be read back.
    """

    event_id: str
    event_type: str
    occurred_at: datetime | None
    payload: Any

    def __post_init__(self) -> None:
        if isinstance(self.occurred_at, datetime):
            object.__setattr__(self, "occurred_at", utc_datetime(self.occurred_at))


@dataclass(frozen=True)
class Sample:
    """A realistic event for tests and ``send_test_webhook``: the body and the values a provider
    needs to sign it (``event_id``/``event_type`` go into headers for schemes that carry them
    there)."""

    body: bytes
    event_id: str
    event_type: str
    content_type: str = "application/json"


def endpoint_key(endpoint: str, option: str | None = None) -> str:
    key = f'WEBHOOKS["ENDPOINTS"][{endpoint!r}]'.replace("'", '"')
    return f'{key}["{option}"]' if option else key


#: The limits set globally (``WEBHOOKS[...]``) or per endpoint: whether each is an integer, and
#: its largest value. A tolerance beyond a day accepts signatures too old to mean anything; a
#: body limit beyond 100 MiB lets one request hold that much memory in a web process.
LIMIT_OPTIONS: dict[str, tuple[bool, float]] = {
    "TOLERANCE": (False, 86_400),
    "MAX_BODY_BYTES": (True, 100 * 1024 * 1024),
}


def limit_problem(
    option: str, value: Any, key: str, *, prefix: str = "", hint: str
) -> ConfigProblem | None:
    """The E005 problem of one ``TOLERANCE``/``MAX_BODY_BYTES`` value, or None if it is a
    positive number (an integer for ``MAX_BODY_BYTES``) no larger than its ``LIMIT_OPTIONS``
    maximum; the one rule and message for the global settings (``webhooks.checks``) and an
    endpoint's (``Provider.config_problems``)."""
    integer, largest = LIMIT_OPTIONS[option]
    if is_number(value, integer=integer, above=0, at_most=largest):
        return None
    kind = "integer (bytes)" if integer else "number (seconds)"
    return ConfigProblem(
        "E005", key, f"{prefix}must be a positive {kind} up to {largest:,}, not {value!r}.", hint
    )


@dataclass(repr=False)
class Provider:
    """Base class of providers. Subclass it, set ``name`` and the header names, implement
    ``verify``, ``parse``, ``sign`` and ``sample``; point an endpoint's ``PROVIDER`` at the
    class's dotted path (or register a built-in name in ``webhooks.providers``).

    Instances are built by ``get_provider(endpoint)`` from the endpoint's settings, once per
    settings change, and shared across requests: keep them free of per-request state.
    """

    endpoint: str
    config: Mapping[str, Any]
    secrets: tuple[str, ...] = field(init=False)
    tolerance: float = field(init=False)
    max_body_bytes: int = field(init=False)

    #: Built-in name (``"stripe"``...); informative for user classes.
    name: ClassVar[str] = ""
    #: Options the provider reads besides SECRETS, TOLERANCE and MAX_BODY_BYTES.
    options: ClassVar[tuple[str, ...]] = ()

    #: Reconcile (optional): the vendor whose API lists the events it failed to deliver, by
    #: the name its lister is registered under in ``tether.vendor_events`` (None: the scheme
    #: cannot reconcile), and how far back the vendor keeps them listable. A provider that
    #: sets ``reconcile_vendor`` implements ``event_from_api``.
    reconcile_vendor: ClassVar[str | None] = None
    reconcile_window: ClassVar[timedelta] = timedelta(0)

    # The scheme's header names: a class attribute of the same name in a subclass
    # (``signature_header = "Stripe-Signature"``) replaces each; ``hmac`` reads them from settings.

    @property
    def signature_header(self) -> str:
        """The header carrying the signature; its absence is answered ``invalid_signature``."""
        return ""

    @property
    def timestamp_header(self) -> str | None:
        """The header carrying the signing time, for schemes that have one."""
        return None

    @sensitive_variables(*SECRET_VARIABLES)
    def __post_init__(self) -> None:
        problems = self.config_problems(self.endpoint, self.config)
        if problems:
            raise problems[0].as_exception()
        self.secrets = tuple(SecretStr(secret) for secret in self.config["SECRETS"])
        self.tolerance = float(self.config.get("TOLERANCE", webhooks_settings["TOLERANCE"]))
        self.max_body_bytes = int(
            self.config.get("MAX_BODY_BYTES", webhooks_settings["MAX_BODY_BYTES"])
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} endpoint={self.endpoint!r}>"

    # -- configuration ----------------------------------------------------------------------

    @classmethod
    @sensitive_variables(*SECRET_VARIABLES)
    def config_problems(cls, endpoint: str, config: Mapping[str, Any]) -> list[ConfigProblem]:
        """Everything wrong with the endpoint's settings (empty when usable).

        Subclasses extend it with their options' problems (call ``super()`` first).
        """
        problems: list[ConfigProblem] = []
        secrets = config.get("SECRETS")
        key = endpoint_key(endpoint, "SECRETS")
        if secrets is None or (isinstance(secrets, list | tuple) and not secrets):
            problems.append(
                ConfigProblem(
                    "E002",
                    key,
                    f"endpoint {endpoint!r} has no signing secret.",
                    "Set SECRETS to a list holding the secret the vendor gave you "
                    '(e.g. [os.environ["VENDOR_WEBHOOK_SECRET"]]).',
                )
            )
        elif not isinstance(secrets, list | tuple) or not all(isinstance(s, str) for s in secrets):
            problems.append(
                ConfigProblem(
                    "E005",
                    key,
                    f"endpoint {endpoint!r}: SECRETS must be a list of strings.",
                    "A single secret goes in a one-element list; several secrets allow rotation.",
                )
            )
        else:
            for index, secret in enumerate(secrets):
                if not secret.strip():
                    problems.append(
                        ConfigProblem(
                            "E003",
                            f"{key}[{index}]",
                            f"endpoint {endpoint!r} has an empty secret.",
                            "An empty secret would accept forged requests; check that the "
                            "environment variable it comes from is set.",
                        )
                    )
                else:
                    problems.extend(cls.secret_problems(endpoint, f"{key}[{index}]", secret))
        for option in LIMIT_OPTIONS:
            if option in config:
                problem = limit_problem(
                    option,
                    config[option],
                    endpoint_key(endpoint, option),
                    prefix=f"endpoint {endpoint!r}: {option} ",
                    hint="Leave it out to use the global WEBHOOKS setting of the same name.",
                )
                if problem is not None:
                    problems.append(problem)
        return problems

    @classmethod
    def secret_problems(cls, endpoint: str, key: str, secret: str) -> list[ConfigProblem]:
        """Problems with one non-empty secret's format (never quoting the secret)."""
        return []

    @classmethod
    def config_warnings(cls, endpoint: str, config: Mapping[str, Any]) -> list[ConfigProblem]:
        """Usable settings that leave something the scheme relies on unsigned (``webhooks.W0xx``
        warnings of ``manage.py check``; never raised). Only asked of a usable configuration."""
        return []

    @classmethod
    def gives_occurred_time(cls, config: Mapping[str, Any]) -> bool:
        """Whether an endpoint with these settings gives its events an occurred time (the
        default version of an ordered handler; system check ``webhooks.W005``)."""
        return True

    @classmethod
    def make_secret(cls) -> str:
        """A new random secret in this provider's format (for tests and forged requests)."""
        return _secrets.token_urlsafe(32)

    # -- receiving ----------------------------------------------------------------------------

    def stored_header_names(self) -> tuple[str, ...]:
        """The allow-list of headers kept with the event."""
        names = [self.signature_header, self.timestamp_header, *self.extra_stored_headers()]
        return tuple(n for n in dict.fromkeys([*names, *COMMON_STORED_HEADERS]) if n)

    @cached_property
    def _stored_names(self) -> tuple[str, ...]:
        # Asked once per instance: an instance's settings never change (get_provider builds
        # a new one when they do).
        return self.stored_header_names()

    def extra_stored_headers(self) -> tuple[str, ...]:
        """The scheme's id and type headers (besides signature and timestamp)."""
        return ()

    def stored_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The allow-listed headers present in the request, NUL characters replaced."""
        headers = as_headers(headers)
        kept = {}
        for name in self._stored_names:
            value = headers.get(name)
            if value is not None:
                kept[name] = str(value).replace("\x00", "\ufffd")
        return kept

    @property
    def has_timestamp(self) -> bool:
        """Whether the scheme signs a time, checked against ``tolerance`` before the body is
        read. By default, whether it has a ``timestamp_header``; a scheme that carries the time
        elsewhere (Stripe's ``t=``) sets ``has_timestamp = True`` and overrides
        ``read_timestamp``."""
        return self.timestamp_header is not None

    def check_headers(self, headers: Mapping[str, str], *, now: float | None = None) -> None:
        """Cheap checks before the body is read: the signature header is present and, for
        schemes with a timestamp (``has_timestamp``), the timestamp is within the tolerance.
        Raises ``InvalidSignature``."""
        headers = as_headers(headers)
        if not headers.get(self.signature_header):
            raise InvalidSignature(f"missing {self.signature_header} header")
        if self.has_timestamp:
            self.check_timestamp(self.read_timestamp(headers), now=now)

    def read_timestamp(self, headers: Mapping[str, str]) -> int:
        """The signing time (Unix seconds) from the request; ``InvalidSignature`` if absent or
        malformed. Only for schemes with a timestamp; reads ``timestamp_header`` (override it
        for a scheme that carries the time elsewhere)."""
        value = as_headers(headers).get(self.timestamp_header or "")
        return parse_unix_timestamp(value, self.timestamp_header or "timestamp")

    def check_timestamp(self, timestamp: int, *, now: float | None = None) -> None:
        """``InvalidSignature`` unless ``timestamp`` is within ``tolerance`` of now, either way."""
        now = time.time() if now is None else now
        if timestamp < now - self.tolerance:
            raise InvalidSignature("timestamp is older than the tolerance")
        if timestamp > now + self.tolerance:
            raise InvalidSignature("timestamp is further in the future than the tolerance")

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float | None = None) -> None:
        """Raise ``InvalidSignature`` unless one of ``self.secrets`` signed ``body``."""
        raise NotImplementedError

    def parse(self, body: bytes, headers: Mapping[str, str]) -> ParsedEvent:
        """Extract the event from a verified request; ``MalformedPayload`` if unusable."""
        raise NotImplementedError

    def content_digest(self, body: bytes, headers: Mapping[str, str]) -> bytes | None:
        """For a scheme whose event id is outside what the signature covers (GitHub's
        ``X-GitHub-Delivery``), a digest of exactly what it covers (``signed_content_digest``);
        None (the default) when the id is signed.

        Anyone who has seen a delivery can send its signed content again under a new id; the
        receive insert refuses a second event with the same digest on the endpoint, so such a
        resend is answered ``duplicate`` (a replay) while the original is stored. A scheme
        whose id is signed needs none: another id breaks the signature, and the same id is a
        duplicate already.
        """
        return None

    # -- reconcile: events listed from the vendor's API ------------------------------------------

    def event_from_api(self, event: Mapping[str, Any]) -> tuple[bytes, ParsedEvent]:
        """The body to store and the parsed event for one event the vendor's API listed
        (``webhooks.reconciling``), with the receive path's bounds: ``PayloadTooLarge`` over
        ``max_body_bytes``, ``MalformedPayload`` where ``parse`` would refuse it. There is no
        signature to verify: the listing call was authenticated."""
        raise NotImplementedError

    # -- the vendor's side, for tests and send_test_webhook -------------------------------------

    def sign(
        self,
        body: bytes,
        *,
        secret: str | None = None,
        timestamp: int | None = None,
        event_id: str | None = None,
        event_type: str | None = None,
    ) -> dict[str, str]:
        """The headers the vendor would send with ``body`` (default: the first secret, now)."""
        raise NotImplementedError

    def sample(self, event_type: str | None = None, *, event_id: str | None = None) -> Sample:
        """A realistic event of ``event_type`` (a default type if None), with a fresh id."""
        raise NotImplementedError

    def _signing_secret(self, secret: str | None) -> str:
        return self.secrets[0] if secret is None else SecretStr(secret)


# -- shared building blocks -----------------------------------------------------------------


def as_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Case-insensitive view of request headers (``request.headers`` already is one)."""
    if isinstance(headers, CaseInsensitiveMapping):
        return headers
    return CaseInsensitiveMapping(dict(headers))


def parse_unix_timestamp(value: str | None, header: str) -> int:
    """Unix seconds from a header holding only ASCII digits; ``InvalidSignature`` otherwise."""
    if not value:
        raise InvalidSignature(f"missing {header} header")
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 15:
        raise InvalidSignature(f"malformed {header} header")
    return int(value)


def constant_time_equals(expected: bytes, given: bytes) -> bool:
    """Compare two byte strings in time independent of where they differ."""
    return hmac.compare_digest(expected, given)


def header_bytes(value: str) -> bytes | None:
    """A header value as bytes for comparison, or None if it holds non-ASCII characters (a
    signature never does)."""
    if not value.isascii():
        return None
    return value.encode("ascii")


def decode_utf8(body: bytes) -> str:
    """The body as text, for schemes that sign text; ``InvalidSignature`` if it is not UTF-8
    (such a body cannot carry a valid signature in those schemes)."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidSignature("body is not valid UTF-8") from exc


#: The deepest nesting of objects and arrays a payload may have (the top-level object is 1).
#: Vendors' events nest about 10 deep (a Stripe invoice event: 11). Much deeper documents parse,
#: but cannot be read back where the stack is deeper (the ORM loading the row, the operator API
#: rendering it: a ``RecursionError`` at about 900 levels), so they are refused at receipt.
MAX_JSON_DEPTH = 64


def load_json_object(data: bytes | str) -> dict[str, Any]:
    """Parse a JSON object; ``MalformedPayload`` if not JSON or not an object, if it nests
    deeper than ``MAX_JSON_DEPTH``, or if it holds ``NaN``, ``Infinity``, ``-Infinity`` or a
    number that overflows to infinity (``1e999``) anywhere. Python's parser takes those, but
    they are not JSON: no database's JSON column takes them back (PostgreSQL's ``jsonb``
    refuses them, SQLite's check constraint fails), so they are refused here, before the insert,
    the same on every database. The hooks cost only numbers with a fraction or exponent; the
    document is walked for its depth only when it holds more brackets than the limit."""
    try:
        if not isinstance(data, str):  # as json.loads does: UTF-8, -16 or -32, BOM or not
            data = data.decode(json.detect_encoding(data), "surrogatepass")
        payload = _DECODER.decode(data)
    except (ValueError, RecursionError) as exc:
        raise MalformedPayload("body is not JSON") from exc
    if not isinstance(payload, dict):
        raise MalformedPayload("body is not a JSON object")
    if _count_brackets(data) > MAX_JSON_DEPTH and _deeper_than(payload, MAX_JSON_DEPTH):
        raise MalformedPayload(f"body nests deeper than {MAX_JSON_DEPTH} levels")
    return payload


def api_event_body(event: Mapping[str, Any], limit: int) -> bytes:
    """An event listed from a vendor's API as the bytes stored for it: compact JSON, UTF-8.
    ``PayloadTooLarge`` over ``limit`` bytes; ``MalformedPayload`` if it cannot be written as
    JSON (what it holds is checked again by ``load_json_object`` when parsed: ``NaN`` is
    written here and refused there)."""
    try:
        body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as exc:
        raise MalformedPayload("the listed event cannot be written as JSON") from exc
    if len(body) > limit:
        raise PayloadTooLarge(f"listed event over {limit} bytes")
    return body


def _count_brackets(data: bytes | str) -> int:
    """Opening brackets in the text (those inside strings too): a bound on the depth that
    costs a scan at C speed, so that the usual small event is never walked."""
    if isinstance(data, bytes):
        return data.count(b"{") + data.count(b"[")
    return data.count("{") + data.count("[")


def _deeper_than(document: Any, limit: int) -> bool:
    """Whether the parsed ``document`` nests objects and arrays more than ``limit`` deep."""
    stack = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


_NON_FINITE = "body holds NaN, Infinity or a number out of range, which JSON does not allow"


def _refuse_constant(name: str) -> Any:
    """``json.loads``'s hook for ``NaN``, ``Infinity`` and ``-Infinity``: refuse them."""
    raise MalformedPayload(_NON_FINITE)


def _finite_float(text: str) -> float:
    """``json.loads``'s hook for a number with a fraction or exponent: refuse one that
    overflows to infinity."""
    value = float(text)
    if math.isinf(value):
        raise MalformedPayload(_NON_FINITE)
    return value


#: ``json.loads`` with these hooks would build a decoder (and its scanner) on every call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def require_identifier(value: Any, what: str) -> str:
    """A usable event id or type: a non-empty string (or integer) of at most 255 characters,
    without NUL or lone surrogates; ``MalformedPayload`` otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise MalformedPayload(f"no {what}")
    if len(value) > MAX_ID_LENGTH or "\x00" in value or not _encodable(value):
        raise MalformedPayload(f"unusable {what}")
    return value


def _encodable(value: str) -> bool:
    """Whether the text can be stored (a lone surrogate, from a JSON escape, cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def datetime_from_unix(value: Any) -> datetime | None:
    """An aware UTC datetime from Unix seconds, or None if ``value`` is not a number or not
    within ``utc_datetime``'s range (NaN, infinities, huge values)."""
    if not is_number(value):
        return None
    try:
        return utc_datetime(datetime.fromtimestamp(value, tz=UTC))
    except (OverflowError, OSError, ValueError):
        return None


def signed_content_digest(*parts: bytes) -> bytes:
    """SHA-256 of the signed content, given as the parts the scheme concatenates and signs
    (``Provider.content_digest``); 32 bytes, the size of ``WebhookEvent.content_digest``."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.digest()


@sensitive_variables(*SECRET_VARIABLES)
def any_secret(secrets: Sequence[str], matches: Any) -> bool:
    """True if ``matches(secret)`` holds for any secret; every secret is tried (no early exit),
    so timing does not tell which one matched."""
    found = False
    for secret in secrets:
        if matches(secret):
            found = True
    return found
