"""Receiving a webhook: verify it, store it once, queue it. The view is a thin shell over this.

``receive_webhook`` runs the checks in the contract's order and stops at the first failure:

1. endpoint: ``UnknownEndpoint`` (404 ``unknown_endpoint``);
2. declared size: a ``Content-Length`` over the endpoint's ``MAX_BODY_BYTES`` is refused before
   a byte is read (413 ``payload_too_large``);
3. signature, header part: the signature header is present and, for schemes with a timestamp,
   the timestamp is within ``TOLERANCE`` either way; checked before the body is read, so an
   unsigned request never costs a read (400 ``invalid_signature``);
4. body: read from the stream in 64 KiB chunks, never more than ``MAX_BODY_BYTES + 1`` bytes
   (413 if the body, e.g. a chunked one without ``Content-Length``, turns out larger);
5. signature over the exact bytes, with any of the endpoint's secrets (400 ``invalid_signature``);
6. parse: JSON object, event id, type (400 ``malformed_payload``);
7. store (``webhooks.storage.insert_or_compare``): one ``INSERT ... ON CONFLICT DO NOTHING
   RETURNING id``; the unique constraints alone decide whether the event is new, so concurrent
   deliveries of one event store exactly one row and only one of them is ``accepted``. Two
   constraints arbitrate: ``(endpoint, event_id)``, and, for schemes whose id is not signed, the
   partial ``(endpoint, content_digest)`` (``Provider.content_digest``: the same signed content
   under another id is a replay). On PostgreSQL the same statement compares the body of a
   duplicate of the same id with the stored one (one round trip); a replay under another id, or
   a conflicting row committed while the insert waited for it, takes one more query to tell
   which it is (``storage.stored_conflict``), as does every duplicate on SQLite; other
   databases use a savepoint and the ``IntegrityError``. A database failure is
   ``StorageUnavailable`` (503 ``unavailable``; the sender retries).

Each refusal is a ``DeliveryRefused`` whose class carries its answer (``status_code``, and
``default_code``: the response's ``error`` and ``webhook_rejected``'s reason).

A new event sends ``webhook_received`` and is enqueued (``queueing.enqueue_committed``, what
``enqueue_on_commit`` does), both from one callback after the insert commits; a known one sends
``webhook_duplicate`` (with ``replay_of``, the stored event's id, for a replay under another id)
and is not touched, even when its body differs (logged as a warning, as is every replay); every
refusal sends ``webhook_rejected(endpoint, reason)``.
Nothing here logs a secret, a signature or a body.

The steps are four functions (``admit``: 1-3, ``read_body``: 4, ``verify_delivery``: 5-6,
``store_delivery``: 7) that both drivers call: ``receive_webhook`` for the sync view, and
``areceive_webhook`` for the async one, which runs each where it does not block the event loop
(docs/webhooks/asgi.md).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from asgiref.sync import sync_to_async
from django.db import DataError, InterfaceError, OperationalError, router, transaction
from django.http.request import HttpHeaders
from django.utils import timezone
from django.utils.functional import cached_property
from django.views.decorators.debug import sensitive_variables

from tether.conf import SECRET_VARIABLES

from .exceptions import (
    DeliveryRefused,
    MalformedPayload,
    PayloadTooLarge,
    StorageUnavailable,
    UnknownEndpoint,
)
from .models import WebhookEvent
from .providers import get_provider
from .providers.base import ParsedEvent, Provider
from .queueing import enqueue_committed
from .signals import (
    asend_logged,
    send_logged,
    webhook_duplicate,
    webhook_received,
    webhook_rejected,
)
from .storage import insert_or_compare, stored_conflict

logger = logging.getLogger(__name__)

READ_CHUNK_BYTES = 64 * 1024


class BodyStream(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class MetaHeaders(HttpHeaders):
    """``request.headers`` read straight from a WSGI ``META``: a header is looked up by its
    WSGI name when asked for, instead of every header's name being parsed up front (what
    ``HttpHeaders`` does, and the receive path asks for a few). The same mapping otherwise:
    case-insensitive, ``_`` taken for ``-``, and iterating, ``len`` or comparing it parses
    the names as ``HttpHeaders`` does."""

    def __init__(self, meta: Mapping[str, str]) -> None:  # no parse here: see _store
        self._meta = meta

    @cached_property
    def _store(self) -> dict[str, tuple[str, str]]:  # type: ignore[override]
        return HttpHeaders(self._meta)._store

    def __getitem__(self, key: str) -> str:
        return self._meta[_wsgi_name(key)]

    def get(self, key: str, default: Any = None) -> Any:
        # The receive path's lookups come here: one dict lookup, no KeyError raised on a miss.
        return self._meta.get(_wsgi_name(key), default)


#: ``HttpHeaders.to_wsgi_name``, remembered: the receive path asks for the same few names
#: (its provider's) on every request; bounded, whatever names a caller asks for.
_wsgi_name = functools.lru_cache(maxsize=128)(HttpHeaders.to_wsgi_name)


@dataclass(frozen=True)
class Receipt:
    """The outcome of a verified delivery: ``status`` is ``accepted`` or ``duplicate``."""

    status: str
    event_id: str
    event: WebhookEvent | None = None


@dataclass(frozen=True)
class Delivery:
    """A verified, parsed delivery, ready to be stored (``store_delivery``)."""

    provider: Provider
    parsed: ParsedEvent
    body: bytes
    headers: dict[str, str]
    content_digest: bytes | None


@sensitive_variables(*SECRET_VARIABLES)
def receive_webhook(
    endpoint: str,
    *,
    headers: Mapping[str, str],
    stream: BodyStream,
    content_length: int | None = None,
) -> Receipt:
    """Verify, parse and store one delivery to ``endpoint``; see the module docstring.

    ``headers`` is case-insensitive (``request.headers``); ``stream`` is read at most
    ``MAX_BODY_BYTES + 1`` bytes; ``content_length`` is the declared size, if any. Raises a
    ``DeliveryRefused`` for every refusal (after sending ``webhook_rejected``), and
    ``WebhookConfigurationError`` if the endpoint is misconfigured. Error reports with ``DEBUG``
    off hide ``SECRET_VARIABLES`` in every frame below this one (the providers', the SDKs').

    ``areceive_webhook`` is the same steps for the async view, each step this function's own.
    """
    try:
        provider = admit(endpoint, headers, content_length)
        body = read_body(stream, provider.max_body_bytes)
        return store_delivery(verify_delivery(provider, body, headers))
    except DeliveryRefused as error:
        _log_rejection(endpoint, error)
        send_logged(webhook_rejected, None, endpoint=endpoint, reason=error.default_code)
        raise


#: Bodies up to this size are verified and parsed on the event loop by ``areceive_webhook``
#: (an HMAC and a ``json.loads`` of a few KiB take microseconds); larger ones in a thread, so
#: that a 1 MiB body does not hold the loop for milliseconds.
VERIFY_ON_LOOP_BYTES = 64 * 1024


@sensitive_variables(*SECRET_VARIABLES)
async def areceive_webhook(
    endpoint: str,
    *,
    headers: Mapping[str, str],
    stream: BodyStream,
    content_length: int | None = None,
    stream_in_memory: bool = True,
) -> Receipt:
    """``receive_webhook`` for the async view: the same steps (``admit``, ``read_body``,
    ``verify_delivery``, ``store_delivery``) in the same order, with the same refusals, and no
    blocking call on the event loop:

    - the body is read on the loop when ``stream_in_memory`` (Django's ASGI handler has it in
      memory already), else in a thread;
    - verification and parsing run on the loop for bodies up to ``VERIFY_ON_LOOP_BYTES``, in a
      thread (not thread-sensitive: no database) above;
    - storing (the hand-tuned single-statement insert of ``webhooks.storage``, the signals and
      ``enqueue_on_commit``) runs through ``sync_to_async`` thread-sensitive, as Django's own
      async ORM does: on the request's thread for sync work, with its database connection;
    - ``webhook_rejected`` goes through ``Signal.asend_robust`` (sync receivers in a thread).
    """
    try:
        provider = admit(endpoint, headers, content_length)
        limit = provider.max_body_bytes
        if stream_in_memory:
            body = read_body(stream, limit)
        else:
            body = await sync_to_async(read_body, thread_sensitive=False)(stream, limit)
        if len(body) <= VERIFY_ON_LOOP_BYTES:
            delivery = verify_delivery(provider, body, headers)
        else:
            delivery = await sync_to_async(verify_delivery, thread_sensitive=False)(
                provider, body, headers
            )
        return await sync_to_async(store_delivery, thread_sensitive=True)(delivery)
    except DeliveryRefused as error:
        _log_rejection(endpoint, error)
        await asend_logged(webhook_rejected, None, endpoint=endpoint, reason=error.default_code)
        raise


def admit(endpoint: str, headers: Mapping[str, str], content_length: int | None) -> Provider:
    """Steps 1 to 3, before a byte of the body is read: the endpoint's provider, the declared
    size against its ``MAX_BODY_BYTES``, the signature headers (and timestamp)."""
    provider = get_provider(endpoint)
    if content_length is not None and content_length > provider.max_body_bytes:
        raise PayloadTooLarge(f"declared {content_length} bytes")
    provider.check_headers(headers)
    return provider


@sensitive_variables(*SECRET_VARIABLES)
def verify_delivery(provider: Provider, body: bytes, headers: Mapping[str, str]) -> Delivery:
    """Steps 5 and 6: the signature over the exact bytes, then the event parsed from them."""
    provider.verify(body, headers)
    return Delivery(
        provider,
        provider.parse(body, headers),
        body,
        provider.stored_headers(headers),
        provider.content_digest(body, headers),
    )


def store_delivery(delivery: Delivery) -> Receipt:
    """Step 7: ``store_event`` for a verified delivery."""
    return store_event(
        delivery.provider,
        delivery.parsed,
        delivery.body,
        delivery.headers,
        content_digest=delivery.content_digest,
    )


def read_body(stream: BodyStream, limit: int) -> bytes:
    """Read the whole body, but never more than ``limit + 1`` bytes: ``PayloadTooLarge`` as soon
    as it is over ``limit``. Memory stays bounded whatever the client sends or declares."""
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = stream.read(min(READ_CHUNK_BYTES, limit + 1 - size))
        except OSError as exc:  # the client went away mid-body (UnreadablePostError)
            raise MalformedPayload("the body could not be read") from exc
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body over {limit} bytes")
        chunks.append(chunk)


def store_event(
    provider: Provider,
    parsed: ParsedEvent,
    body: bytes,
    headers: dict[str, str],
    *,
    content_digest: bytes | None = None,
    source: str = WebhookEvent.Source.DELIVERY,
) -> Receipt:
    """Insert the event unless ``(endpoint, event_id)`` exists or, when ``content_digest`` is
    given, ``(endpoint, content_digest)`` does (a replay); send signals and enqueue.

    ``source`` says how it arrived: a signed delivery, or listed from the vendor's API by
    ``webhooks.reconciling`` (the same path from here on)."""
    event = WebhookEvent(
        endpoint=provider.endpoint,
        event_id=parsed.event_id,
        event_type=parsed.event_type,
        body=body,
        payload=parsed.payload,
        headers=headers,
        status=WebhookEvent.Status.RECEIVED,
        received_at=timezone.now(),
        occurred_at=parsed.occurred_at,
        content_digest=content_digest,
        source=source,
    )
    alias = router.db_for_write(WebhookEvent)
    replay_of = None
    try:
        inserted, same_body = insert_or_compare(event, alias)
        if not inserted:
            replay_of = _note_duplicate(event, alias, same_body=same_body)
    except DataError as exc:
        # e.g. PostgreSQL refuses a NUL character or a lone surrogate inside the JSON payload.
        raise MalformedPayload("the event cannot be stored (invalid characters)") from exc
    except (OperationalError, InterfaceError) as exc:
        raise StorageUnavailable(type(exc).__name__) from exc

    if not inserted:
        send_logged(
            webhook_duplicate,
            None,
            endpoint=event.endpoint,
            event_id=event.event_id,
            replay_of=replay_of,
        )
        return Receipt("duplicate", event.event_id)

    logger.debug(
        "webhooks: accepted %s event %s (%s)", event.endpoint, event.event_id, event.event_type
    )
    # One callback for both (each transaction.on_commit costs more than the hand-off itself).
    transaction.on_commit(partial(_committed, event), using=alias)
    return Receipt("accepted", event.event_id, event)


def _note_duplicate(
    event: WebhookEvent, alias: str, *, same_body: bool | None = None
) -> str | None:
    """Log a duplicate: a warning for a replay under another id and for another body under the
    same id. Unless the insert already compared the bodies (``same_body``), the database tells
    which it is (``storage.stored_conflict``: one indexed query, the stored body not sent back).
    Returns the id of the stored event a replay repeats, else None."""
    replay_of = None
    if same_body is None:
        conflict = stored_conflict(event, alias)
        if conflict is not None:
            same_body, replay_of = conflict
    if replay_of is not None:
        logger.warning(
            "webhooks: %s event %r is a replay of the stored event %r (the same signed content "
            "under another id); not stored",
            event.endpoint,
            event.event_id,
            replay_of,
        )
    elif same_body is False:
        logger.warning(
            "webhooks: %s event %s delivered again with a different body; the stored one is kept",
            event.endpoint,
            event.event_id,
        )
    else:
        logger.debug("webhooks: duplicate %s event %s", event.endpoint, event.event_id)
    return replay_of


def _committed(event: WebhookEvent) -> None:
    """Once the insert has committed: ``webhook_received``, then the hand-off to processing
    (``enqueue_on_commit``'s, without a second on-commit callback)."""
    send_logged(webhook_received, WebhookEvent, event=event)
    enqueue_committed(event.pk)


def _log_rejection(endpoint: str, error: DeliveryRefused) -> None:
    code = error.default_code
    level = logging.WARNING if code in ("invalid_signature", "unavailable") else logging.INFO
    detail = str(error) if not isinstance(error, UnknownEndpoint) else "no such endpoint"
    logger.log(level, "webhooks: refused a delivery to %r: %s (%s)", endpoint, code, detail)
