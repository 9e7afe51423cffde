"""The seam between the app that stores a vendor's events (``webhooks``) and the app that calls
the vendor's API (``integrations``): a registry of *event listers*, one per vendor.

``webhooks``' ``reconcile_webhooks`` asks a vendor for the events it failed to deliver; the
call itself needs an API client (a key, timeouts, retries, a circuit breaker), which is
``integrations``' business. Neither app imports the other, so the call goes through here:

- ``integrations`` registers a lister for ``"stripe"`` from its ``AppConfig.ready()`` (it lists
  through ``StripeService``: its breaker, timeouts and retries apply);
- a project may register its own (``register_event_lister("stripe", my_lister)``, from its own
  ``ready()``), e.g. without ``integrations``, or for another vendor;
- ``webhooks``' providers look the lister up by vendor name when reconciling (``event_lister``);
  without one, reconcile says what it needs (``webhooks.reconciling``).

A lister is called with ``since`` (an aware datetime: list events created at or after it) and
yields the vendor's events as JSON objects (mappings), newest first or in any order. It raises
``ListingFailed`` when the vendor cannot be listed (down, slow, refusing, answering garbage, not
configured); the message says why, never a secret.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

__all__ = [
    "EventLister",
    "ListingFailed",
    "event_lister",
    "register_event_lister",
    "unregister_event_lister",
]


class EventLister(Protocol):
    def __call__(self, *, since: datetime) -> Iterable[Mapping[str, Any]]: ...


class ListingFailed(Exception):
    """The vendor's events could not be listed (part way through, possibly): its message says
    why (the vendor is down, slow, refused the call, answered garbage, or the client is not
    configured). ``retryable`` says whether trying again later may help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


_listers: dict[str, EventLister] = {}
_lock = threading.Lock()


def register_event_lister(vendor: str, lister: EventLister) -> None:
    """Make ``lister`` the one that lists ``vendor``'s undelivered events (replacing any)."""
    if not vendor or not isinstance(vendor, str):
        raise ValueError("an event lister needs a vendor name")
    if not callable(lister):
        raise TypeError(f"event lister {lister!r} is not callable")
    with _lock:
        _listers[vendor] = lister


def unregister_event_lister(vendor: str) -> EventLister | None:
    """Forget ``vendor``'s lister; the one forgotten, or None (for tests and projects that list
    elsewhere)."""
    with _lock:
        return _listers.pop(vendor, None)


def event_lister(vendor: str) -> EventLister | None:
    """The lister registered for ``vendor``, or None."""
    return _listers.get(vendor)
