"""Reads of stored webhook events, shared by the commands, the admin and the operator API."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast

from tether.dates import parse_when

from .exceptions import UnknownEndpoint
from .models import WebhookEvent
from .providers import get_provider
from .providers.base import COMMON_STORED_HEADERS
from .registry import is_glob, pattern_regex

#: The permission that shows an event's stored signature header (the admin's and the API's).
SEE_SIGNATURES = "webhooks.change_webhookevent"


def type_pattern_q(pattern: str) -> Q:
    """The database filter for an event type pattern (same rules as ``registry.pattern_matches``).

    A plain name uses an exact or prefix match (index-friendly); a glob uses a regular expression.
    """
    if not is_glob(pattern):
        return Q(event_type=pattern) | Q(event_type__startswith=pattern + ".")
    if set(pattern) == {"*"}:
        return Q()
    return Q(event_type__regex=pattern_regex(pattern))


def _as_list(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return list(value)


def filter_events(
    queryset: QuerySet[WebhookEvent] | None = None,
    *,
    status: str | Iterable[str] | None = None,
    endpoint: str | Iterable[str] | None = None,
    type_pattern: str | None = None,
    since: dt.datetime | dt.date | str | None = None,
    until: dt.datetime | dt.date | str | None = None,
    event_ids: Iterable[str] | None = None,
) -> QuerySet[WebhookEvent]:
    """Events matching every given filter (``None`` means no filter).

    - ``status``, ``endpoint``: one value or several.
    - ``type_pattern``: a glob (``invoice.*``) or a plain name matching itself and below it.
    - ``since`` (inclusive) and ``until`` (exclusive) bound ``received_at``; each is a datetime,
      a date (its midnight) or an ISO 8601 string.
    - ``event_ids``: vendor event ids.

    Raises ``ValueError`` for an unknown status or a date that does not parse.
    """
    qs = WebhookEvent.objects.all() if queryset is None else queryset
    statuses = _as_list(status)
    if statuses is not None:
        unknown = sorted(set(statuses) - set(WebhookEvent.Status.values))
        if unknown:
            raise ValueError(
                f"unknown status {', '.join(unknown)}; choose from "
                f"{', '.join(WebhookEvent.Status.values)}"
            )
        qs = qs.filter(status__in=statuses)
    endpoints = _as_list(endpoint)
    if endpoints is not None:
        qs = qs.filter(endpoint__in=endpoints)
    if type_pattern:
        qs = qs.filter(type_pattern_q(type_pattern))
    if since is not None:
        qs = qs.filter(received_at__gte=parse_when(since))
    if until is not None:
        qs = qs.filter(received_at__lt=parse_when(until))
    ids = _as_list(event_ids)
    if ids is not None:
        qs = qs.filter(event_id__in=ids)
    return qs


def stored_payload_text(pk: int) -> str | None:
    """An event's payload as the JSON text the database holds, unparsed (None if there is no
    such event or no payload). The admin shows it without ``JSONField``'s parse, which a payload
    nested about 900 deep (the receive view's parser takes that much) overflows in a deeper
    stack."""
    return (
        WebhookEvent.objects.filter(pk=pk, payload__isnull=False)
        .values_list(Cast("payload", TextField()), flat=True)
        .first()
    )


def visible_headers(event: WebhookEvent, user: Any) -> dict[str, Any]:
    """The stored headers of ``event`` that ``user`` may see: all of them with the change
    permission on ``WebhookEvent`` (``SEE_SIGNATURES``), else ``headers_without_signature``."""
    if user is not None and user.has_perm(SEE_SIGNATURES):
        return dict(event.headers or {})
    return headers_without_signature(event)


def headers_without_signature(event: WebhookEvent) -> dict[str, Any]:
    """The stored headers of ``event`` without its signature, for users who may only view
    events: a stored body with its signature is all it takes to send the event again.

    Shown: the headers the endpoint's provider keeps, but its ``signature_header``; when the
    provider cannot be built (the endpoint removed or misconfigured), only the ones known to be
    harmless (``Content-Type``, ``User-Agent``).
    """
    try:
        provider = get_provider(event.endpoint)
    except (UnknownEndpoint, ImproperlyConfigured):
        shown: Iterable[str] = COMMON_STORED_HEADERS
    else:
        signature = provider.signature_header.lower()
        shown = [name for name in provider.stored_header_names() if name.lower() != signature]
    allowed = {name.lower() for name in shown}
    headers = event.headers if isinstance(event.headers, dict) else {}
    return {name: value for name, value in headers.items() if name.lower() in allowed}


#: The longest term the admin looks for in payloads, in characters (a longer one searches the
#: event id only).
PAYLOAD_SEARCH_MAX_CHARS = 255
#: The name of the optional trigram index that makes the payload search fast (PostgreSQL,
#: ``pg_trgm``); see ``PAYLOAD_SEARCH_INDEX_SQL``.
PAYLOAD_SEARCH_INDEX = "webhooks_ev_payload_trgm_idx"
#: The opt-in index for the payload search (docs: operations, "Search by a payload value"). Not
#: created by a migration: it costs the receive path more than 5 % (bench/payload_search.py).
PAYLOAD_SEARCH_INDEX_SQL = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm;\n"
    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {PAYLOAD_SEARCH_INDEX} "
    "ON webhooks_webhookevent USING gin ((payload::text) gin_trgm_ops);"
)


def payload_search_supported(alias: str) -> bool:
    """Whether the payload search is offered on database ``alias``: PostgreSQL only (``jsonb``'s
    text form is canonical there, and the opt-in trigram index exists only there)."""
    return connections[alias].vendor == "postgresql"


def search_events(queryset: QuerySet[WebhookEvent], term: str) -> QuerySet[WebhookEvent]:
    """The events whose vendor event id is ``term``, or, on PostgreSQL, whose payload holds the
    JSON string ``term`` anywhere (a value such as a PaymentIntent or customer id, or a key): a
    ``LIKE '%"term"%'`` on ``payload::text``, which the opt-in trigram index
    (``PAYLOAD_SEARCH_INDEX_SQL``) serves; without it, a scan of the table."""
    term = term.strip()
    match = Q(event_id=term)
    if len(term) <= PAYLOAD_SEARCH_MAX_CHARS and payload_search_supported(queryset.db):
        queryset = queryset.alias(payload_text=Cast("payload", TextField()))
        match |= Q(payload_text__contains=json.dumps(term, ensure_ascii=False))
    return queryset.filter(match)
