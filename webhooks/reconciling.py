"""Healing gaps: store the events a vendor failed to deliver, listed from its API.

``reconcile(endpoint, since=...)`` asks the endpoint's provider which vendor lists its events
(``Provider.reconcile_vendor``; Stripe: ``GET /v1/events?delivery_success=false``), calls the
lister registered for that vendor in ``tether.vendor_events`` (``integrations`` registers
Stripe's, through ``StripeService``: its breaker, timeouts and retries apply), and feeds each
listed event whose type a handler of the endpoint matches through the receive path's
``store_event``: the unique ``(endpoint, event_id)`` constraint dedupes what did arrive
meanwhile, a new event is stored with ``source = "reconcile"`` (no signature to check: the
listing call was authenticated), sends ``webhook_received`` and is enqueued like any other.

Each listed event gets the receive path's bounds (``Provider.event_from_api``: the endpoint's
``MAX_BODY_BYTES``, the JSON rules, the id and type rules); one that breaks them is refused and
reported, and the next ones are stored. A listing that fails part way (the vendor down, slow,
answering garbage, or a page that does not move on), or a database that cannot store, stops the
run: what was stored stays stored, and the report says what stopped it. Running again is safe:
every event already stored is a duplicate.

Nothing here imports ``integrations``: without a lister (``integrations`` not installed, nor a
project's own), ``ReconcileUnavailable`` says what is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import InterfaceError, OperationalError
from django.utils import timezone

from tether.vendor_events import EventLister, ListingFailed, event_lister

from .exceptions import DeliveryRefused, StorageUnavailable, WebhookError
from .models import WebhookEvent
from .providers import get_provider
from .providers.base import Provider
from .receiving import store_event
from .registry import handlers_for

logger = logging.getLogger(__name__)

__all__ = ["InvalidSince", "ReconcileReport", "ReconcileUnavailable", "reconcile", "window_start"]

#: Refused events kept in a report (each is logged; the count is exact).
MAX_REFUSALS_KEPT = 100
#: Characters of a refused event's id kept in a report or a log line.
MAX_ID_SHOWN = 80


class ReconcileUnavailable(WebhookError):
    """The endpoint cannot be reconciled here: its provider has no vendor API to list from, or
    no lister of that vendor's events is registered (the message says what to install or
    register)."""


class InvalidSince(WebhookError, ValueError):
    """``since`` is in the future, or older than the vendor keeps its events listable."""


@dataclass
class ReconcileReport:
    """What one reconcile run did (or, with ``dry_run``, would do)."""

    endpoint: str
    vendor: str
    since: datetime
    dry_run: bool
    #: Events the vendor listed as not delivered.
    listed: int = 0
    #: Stored and enqueued (dry run: would be).
    stored: int = 0
    #: Already stored: they arrived meanwhile, or an earlier run stored them.
    already_stored: int = 0
    #: Of a type no handler of the endpoint matches: not stored.
    unhandled: int = 0
    #: Refused by the receive path's bounds: ``(event id, reason)``, the first
    #: ``MAX_REFUSALS_KEPT``; ``refused`` counts them all.
    refused: int = 0
    refusals: list[tuple[str, str]] = field(default_factory=list)
    #: What stopped the run before the listing ended (the vendor, the database), else None.
    error: str | None = None

    @property
    def complete(self) -> bool:
        """Whether every listed event was looked at and none was refused."""
        return self.error is None and self.refused == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "vendor": self.vendor,
            "since": self.since.isoformat(),
            "dry_run": self.dry_run,
            "listed": self.listed,
            "stored": self.stored,
            "already_stored": self.already_stored,
            "unhandled": self.unhandled,
            "refused": self.refused,
            "error": self.error,
        }


def reconcilable_provider(endpoint: str) -> tuple[Provider, EventLister]:
    """The endpoint's provider and its vendor's lister, if it can reconcile here;
    ``ReconcileUnavailable`` (saying what is missing) if not. ``UnknownEndpoint`` and
    ``WebhookConfigurationError`` as ``get_provider`` raises them."""
    provider = get_provider(endpoint)
    vendor = provider.reconcile_vendor
    if vendor is None:
        raise ReconcileUnavailable(
            f"endpoint {endpoint!r} ({type(provider).__name__}) cannot be reconciled: its "
            "provider lists no undelivered events from a vendor API (reconcile supports "
            "Stripe; see docs/webhooks/reconcile.md for adding a vendor)."
        )
    lister = event_lister(vendor)
    if lister is None:
        raise ReconcileUnavailable(
            f"reconciling endpoint {endpoint!r} needs a lister of {vendor}'s events: add "
            f"'integrations' to INSTALLED_APPS and set "
            f"INTEGRATIONS['SERVICES']['{vendor}']['API_KEY'] (it lists through "
            f"integrations' {vendor} client), or register your own with "
            f"tether.vendor_events.register_event_lister({vendor!r}, ...)."
        )
    return provider, lister


def window_start(provider: Provider, now: datetime) -> datetime:
    """The oldest ``since`` the provider's vendor still lists events from."""
    return now - provider.reconcile_window


def check_since(provider: Provider, since: datetime, now: datetime) -> datetime:
    """``since`` if within the vendor's window (not in the future, not older than it keeps
    events); ``InvalidSince`` otherwise."""
    if since.utcoffset() is None:
        raise InvalidSince("since must be an aware datetime")
    if since > now:
        raise InvalidSince(f"{since.isoformat()} is in the future")
    oldest = window_start(provider, now)
    if since < oldest:
        days = provider.reconcile_window / timedelta(days=1)
        raise InvalidSince(
            f"{since.isoformat()} is older than {provider.reconcile_vendor} keeps undelivered "
            f"events listable ({days:g} days); give {oldest.isoformat(timespec='seconds')} or "
            "later"
        )
    return since


def reconcile(
    endpoint: str,
    *,
    since: datetime | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> ReconcileReport:
    """List the events ``endpoint``'s vendor failed to deliver since ``since`` (default: as
    far back as the vendor keeps them) and store those a handler matches; see the module doc.

    Raises ``UnknownEndpoint``, ``WebhookConfigurationError``, ``ReconcileUnavailable`` and
    ``InvalidSince`` before anything is listed; after that, failures end up in the report's
    ``error`` and ``refusals``.
    """
    provider, lister = reconcilable_provider(endpoint)
    vendor = str(provider.reconcile_vendor)
    now = now or timezone.now()
    since = check_since(provider, since, now) if since is not None else window_start(provider, now)
    report = ReconcileReport(endpoint=endpoint, vendor=vendor, since=since, dry_run=dry_run)
    try:
        for listed in lister(since=since):
            report.listed += 1
            _reconcile_one(provider, listed, report)
    except ListingFailed as exc:
        report.error = f"listing {vendor}'s undelivered events failed: {exc}"
    except StorageUnavailable as exc:
        report.error = f"the database failed ({exc})"
    level = logging.INFO if report.complete else logging.WARNING
    logger.log(
        level,
        "webhooks: reconcile %s%s since %s: %s listed, %s stored, %s already stored, "
        "%s unhandled, %s refused%s",
        endpoint,
        " (dry run)" if dry_run else "",
        since.isoformat(),
        report.listed,
        report.stored,
        report.already_stored,
        report.unhandled,
        report.refused,
        f"; stopped: {report.error}" if report.error else "",
    )
    return report


def _reconcile_one(provider: Provider, listed: Any, report: ReconcileReport) -> None:
    """Store one listed event (or count why not). ``StorageUnavailable`` propagates."""
    try:
        if not isinstance(listed, Mapping):
            raise _NotAnObject()
        body, parsed = provider.event_from_api(listed)
    except (DeliveryRefused, _NotAnObject) as exc:
        _refuse(report, listed, exc)
        return
    if not handlers_for(provider.endpoint, parsed.event_type):
        report.unhandled += 1
        return
    if report.dry_run:
        try:
            known = WebhookEvent.objects.filter(
                endpoint=provider.endpoint, event_id=parsed.event_id
            ).exists()
        except (OperationalError, InterfaceError) as exc:
            raise StorageUnavailable(type(exc).__name__) from exc
        if known:
            report.already_stored += 1
        else:
            report.stored += 1
        return
    try:
        receipt = store_event(provider, parsed, body, {}, source=WebhookEvent.Source.RECONCILE)
    except StorageUnavailable:
        raise
    except DeliveryRefused as exc:  # a value the database refuses (MalformedPayload)
        _refuse(report, listed, exc)
        return
    if receipt.status == "accepted":
        report.stored += 1
    else:
        report.already_stored += 1


class _NotAnObject(Exception):
    default_code = "malformed_payload"

    def __str__(self) -> str:
        return "the listed event is not a JSON object"


def _refuse(report: ReconcileReport, listed: Any, error: Exception) -> None:
    raw_id = listed.get("id") if isinstance(listed, Mapping) else None
    shown = raw_id if isinstance(raw_id, str) else "?"
    shown = shown[:MAX_ID_SHOWN].encode("utf-8", "replace").decode("utf-8")
    reason = f"{getattr(error, 'default_code', 'refused')} ({error})"
    report.refused += 1
    if len(report.refusals) < MAX_REFUSALS_KEPT:
        report.refusals.append((shown, reason))
    logger.warning(
        "webhooks: reconcile %s refused the listed event %r: %s", report.endpoint, shown, reason
    )
