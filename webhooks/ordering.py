"""Per-object ordering of an ordered handler's events (``@on(..., ordering_key=...)``).

For one (handler, key), events apply in version order. ``decide(registration, event)``, called
**inside the handler's transaction** just before the handler would run:

1. reads the event's key and version (``ordering_key_of``, ``ordering_version_of``; a value
   that cannot be read raises ``InvalidOrderingValue``, a ``PermanentFailure``);
2. locks the (handler, key) row of ``OrderingState``, creating it first if it is missing
   (``INSERT ... ON CONFLICT DO NOTHING``, then ``SELECT ... FOR UPDATE``: two first events of a
   key cannot both create it). The row lock is held until the transaction ends, so runs of one
   key never overlap, across every worker; other keys are not held up;
3. compares the event's version with the newest applied one and returns the decision:

   - ``apply``: nothing applied yet, a newer version, or an **equal** one (a redelivery or replay
     of the same event, or another event of the same version: neither is provably older, so the
     handler gets it). The new version and the event's id are written to the row in the same
     transaction: they commit exactly when the handler's writes do, and a handler that fails
     (rolled back) leaves the state as it was;
   - ``skip`` (``stale="skip"``, the default): the version is older than the newest applied; the
     handler must not be called (``webhooks.processing`` ends its run ``skipped``, with
     ``reason`` as the run's ``last_error``). ``reason`` names the newer event;
   - ``deliver_stale`` (``stale="deliver"``): older, but the handler asked to see it; it is called
     with ``event.ordering.stale`` true, and the state keeps the newer version.

   A version of another kind than the stored one (a number after a time: the handler's
   ``ordering_version`` changed) applies, with a warning, and replaces the state.

The handler reads the decision on ``event.ordering`` (None for an unordered handler).

Values, bounded before they reach the database or a log:
- key: a string of 1 to ``KEY_MAX_CHARS`` characters, or an integer (GitHub's ids), kept as its
  decimal text. A dotted path that is missing from the payload, or leads to ``null``, is an
  ``InvalidOrderingValue``; a **callable** may return None to say "this event has no key": the
  handler then runs unordered.
- version: an integer or a finite float (``abs`` below ``10**VERSION_MAX_DIGITS``), a
  ``datetime``, or an ISO 8601 date-time string (at most ``ISO_MAX_CHARS`` characters; without
  a UTC offset it is read as UTC). The default, the event's ``occurred_at``, is missing for
  vendors that give no time (GitHub): such a handler must name its ``ordering_version``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, Literal

from django.db import transaction
from django.utils import timezone

from .exceptions import InvalidOrderingValue
from .models import OrderingState, WebhookEvent
from .registry import OrderingSpec, Registration, run_name

logger = logging.getLogger(__name__)

__all__ = [
    "APPLY",
    "DELIVER_STALE",
    "SKIP",
    "OrderingDecision",
    "Version",
    "decide",
    "ordering_key_of",
    "ordering_version_of",
]

#: The longest ordering key, in characters (the column's size).
KEY_MAX_CHARS: Final = 255
#: A numeric version's magnitude must be below ``10**VERSION_MAX_DIGITS``.
VERSION_MAX_DIGITS: Final = 20
#: The longest ISO 8601 version string, in characters.
ISO_MAX_CHARS: Final = 64

APPLY: Final = "apply"
SKIP: Final = "skip"
DELIVER_STALE: Final = "deliver_stale"
Action = Literal["apply", "skip", "deliver_stale"]

_MICRO = Decimal("0.000001")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Kind = OrderingState.VersionKind


@dataclass(frozen=True)
class Version:
    """A comparable version: ``value`` (a number, or a time as Unix seconds) and its kind."""

    value: Decimal
    kind: str

    def __str__(self) -> str:
        return version_text(self.value, self.kind)


def version_text(value: Decimal, kind: str) -> str:
    """A version as people read it: an ISO time, or the number."""
    if kind == Kind.TIME:
        return datetime.fromtimestamp(float(value), tz=UTC).isoformat()
    return format(value.normalize(), "f")


@dataclass(frozen=True)
class OrderingDecision:
    """What ``decide`` found for one ordered handler and one event (``event.ordering``)."""

    action: Action
    handler: str
    key: str
    version: Version
    #: The newest version applied before this event, and the id of the event that applied it
    #: (None and "" for the first event of the key).
    newest_version: Version | None
    newest_event_id: str

    @property
    def stale(self) -> bool:
        """Whether the event is older than the newest version already applied for its key."""
        return self.action != APPLY

    @property
    def reason(self) -> str:
        """One line for logs and records; empty when applied."""
        if not self.stale:
            return ""
        return (
            f"stale: version {self.version} of key {self.key!r} is older than version "
            f"{self.newest_version} applied by event {self.newest_event_id!r}"
        )


def decide(
    registration: Registration,
    event: WebhookEvent,
    *,
    handler: str | None = None,
    now: datetime | None = None,
) -> OrderingDecision | None:
    """Lock the (handler, key) ordering row and decide whether the handler runs the event.

    Call it inside the transaction the handler runs in (``select_for_update`` needs one): the
    lock is held until it ends. None for an unordered handler, or when its key callable returned
    None for this event. An ``apply`` decision has already recorded the event's version.
    ``handler``: the name the handler's state is kept under, its run's name (processing passes
    it: two callables of one dotted name get ``#2``...); by default ``run_name`` of the handler.
    """
    spec = registration.ordering
    if spec is None:
        return None
    name = handler or run_name(registration.handler)
    key = ordering_key_of(spec, event, handler=name)
    if key is None:
        return None
    version = ordering_version_of(spec, event, handler=name)
    state = _locked_state(name, key)
    newest = None if state.version is None else Version(state.version, state.version_kind)
    action: Action = APPLY
    if newest is not None and newest.kind != version.kind:
        logger.warning(
            "webhooks: ordered handler %s: key %r held a %s version, event %s:%s gives a %s: "
            "applying it (did ordering_version change?)",
            name, key, newest.kind, event.endpoint, event.event_id, version.kind,
        )  # fmt: skip
    elif newest is not None and version.value < newest.value:
        action = DELIVER_STALE if spec.stale == "deliver" else SKIP
    decision = OrderingDecision(action, name, key, version, newest, state.event_id)
    if action == APPLY:
        state.version, state.version_kind = version.value, version.kind
        state.event_id = event.event_id[:255]
        state.applied_at = now or timezone.now()
        state.save(update_fields=["version", "version_kind", "event_id", "applied_at"])
    elif logger.isEnabledFor(logging.INFO):  # the reason is built only to be logged
        logger.info(
            "webhooks: handler %s %s %s:%s: %s",
            name,
            "skipped" if action == SKIP else "receives stale",
            event.endpoint,
            event.event_id,
            decision.reason,
        )
    return decision


def _locked_state(handler: str, key: str) -> OrderingState:
    """The (handler, key) row, locked (``FOR UPDATE``) until the transaction ends; created when
    missing, race-safely: a concurrent first insert waits on the unique index, then does
    nothing, and both lock the one row."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("webhooks.ordering.decide must run inside the handler's transaction")
    rows = OrderingState.objects.select_for_update()
    state = rows.filter(handler=handler, key=key).first()
    if state is None:
        OrderingState.objects.bulk_create(
            [OrderingState(handler=handler, key=key)], ignore_conflicts=True
        )
        state = rows.get(handler=handler, key=key)
    return state


# -- reading the values ---------------------------------------------------------------------


def ordering_key_of(spec: OrderingSpec, event: WebhookEvent, *, handler: str = "") -> str | None:
    """The event's ordering key for ``spec``, validated; None when a key callable returned None
    (the event has no key: the handler runs unordered)."""
    source = spec.key
    if callable(source):
        value = source(event)
        if value is None:
            return None
    else:
        value = _at_path(event.payload, source)
        if value is None:
            raise _invalid(handler, f"ordering_key {spec.key_label!r} is missing from the payload")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _invalid(
            handler,
            f"ordering_key {spec.key_label!r} gave a {type(value).__name__}, not a string",
        )
    if not value or len(value) > KEY_MAX_CHARS:
        raise _invalid(
            handler,
            f"ordering_key {spec.key_label!r} gave a key of {len(value)} characters "
            f"(1 to {KEY_MAX_CHARS})",
        )
    return value


def ordering_version_of(spec: OrderingSpec, event: WebhookEvent, *, handler: str = "") -> Version:
    """The event's version for ``spec`` (its ``occurred_at`` by default), validated."""
    source = spec.version
    if source is None:
        value: Any = event.occurred_at
        if value is None:
            raise _invalid(
                handler,
                "the event has no occurred time (its vendor gives none, or it was unreadable): "
                "give the handler an ordering_version",
            )
    elif callable(source):
        value = source(event)
    else:
        value = _at_path(event.payload, source)
    version = parse_version(value)
    if version is None:
        what = "missing" if value is None else f"a {type(value).__name__} that is not usable"
        raise _invalid(
            handler,
            f"ordering_version {spec.version_label!r} is {what} (an integer, a finite number, "
            "a datetime or an ISO 8601 date-time string is)",
        )
    return version


def parse_version(value: Any) -> Version | None:
    """``value`` as a ``Version``, or None when it is not one (see the module's doc)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if abs(value) >= 10**VERSION_MAX_DIGITS:
            return None
        return Version(Decimal(value), Kind.NUMBER)
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) >= 10**VERSION_MAX_DIGITS:
            return None
        return Version(Decimal(repr(value)).quantize(_MICRO), Kind.NUMBER)
    if isinstance(value, str):
        if len(value) > ISO_MAX_CHARS:
            return None
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        delta = moment - _EPOCH
        seconds = Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds) * _MICRO
        return Version(seconds, Kind.TIME)
    return None


def _at_path(payload: Any, path: tuple[str, ...] | Any) -> Any:
    """The value at ``path`` (segments) in the payload; None when any step is missing. A
    segment of digits indexes a list."""
    value = payload
    for segment in path:
        if isinstance(value, dict):
            value = value.get(segment)
        elif (
            isinstance(value, list)
            and segment.isascii()
            and segment.isdigit()
            and len(segment) <= 6
        ):
            index = int(segment)
            value = value[index] if index < len(value) else None
        else:
            return None
        if value is None:
            return None
    return value


def _invalid(handler: str, message: str) -> InvalidOrderingValue:
    return InvalidOrderingValue(f"ordered handler {handler}: {message}" if handler else message)
