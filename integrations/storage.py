"""Where circuit breakers keep their state: the ``CircuitBreaker`` table.

As pybreaker's ``CircuitBreakerStorage`` is to its breaker, ``DatabaseStorage`` is to the state
machine in ``integrations.breaker``: it is told what to write, in plain values (epoch seconds,
state names, counts, a ``SuccessBatch``), answers with ``BreakerSnapshot``s, and decides nothing.
It is the one module of this app that writes breaker rows, and it keeps them right when many
processes share them:

- every method is one short transaction;
- a transition is ONE conditional UPDATE of state and version: of two processes that decide the
  same transition, one changes the row and the other is told None. The one that changed it
  writes the ``BreakerTransition`` in the same transaction and sends ``breaker_transitioned``
  after the commit. The breaker's transitions and an operator's go through the same path
  (``_move``); what entering each state writes is ``_entering``;
- counters move by ``F()`` increments inside the UPDATE, so no count is lost;
- an outcome counts only against the generation (``version``) that admitted its call: the check
  is a ``CASE`` in the UPDATE that counts it, never a read before the write.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.db.models import Case, Expression, F, Q, Value, When
from django.db.models.functions import Greatest

from .models import BreakerTransition, CircuitBreaker
from .signals import breaker_transitioned

__all__ = ["CLOSED_COUNTS", "BreakerSnapshot", "DatabaseStorage", "SuccessBatch", "snapshot_of"]

logger = logging.getLogger("integrations.breaker")

State = CircuitBreaker.State
#: The longest ``last_error`` and transition ``reason`` kept (their columns' length).
LAST_ERROR_MAX = 500
ACTOR_MAX = 200
#: The policy overrides a person may set on one breaker (None: from the settings).
OVERRIDE_FIELDS = frozenset({"failure_threshold", "reset_timeout", "half_open_max_calls"})

#: What every way into ``closed`` writes (a reset, a probe that succeeded, a forced state that
#: expired): no failures, no probe, not opened, and an empty failure-rate window. The totals
#: are kept. One definition, so that a breaker that closes trips again on the same evidence
#: whichever way it closed.
CLOSED_COUNTS: dict[str, Any] = {
    "consecutive_failures": 0,
    "half_open_in_flight": 0,
    "probe_lease_until": None,
    "opened_at": None,
    "window_calls": 0,
    "window_failures": 0,
    "previous_window_calls": 0,
    "previous_window_failures": 0,
}


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """One breaker's row as the state machine reads it (times in epoch seconds), and until when
    a process that caches it trusts it (``expires_at``, clock time; 0 as the storage gives it)."""

    #: The row's id; None for a ``degraded`` snapshot (no row was read).
    pk: int | None
    state: str
    version: int
    consecutive_failures: int = 0
    opened_at: float | None = None
    forced_until: float | None = None
    half_open_in_flight: int = 0
    probe_lease_until: float | None = None
    failure_threshold: int | None = None
    reset_timeout: float | None = None
    half_open_max_calls: int | None = None
    #: The failure-rate window's two buckets (``window_start`` is the current one's start).
    window_start: float | None = None
    window_calls: int = 0
    window_failures: int = 0
    previous_window_calls: int = 0
    previous_window_failures: int = 0
    expires_at: float = 0.0
    #: The database could not be read: the breaker fails open (or closed, by policy).
    degraded: bool = False


def snapshot_of(row: CircuitBreaker) -> BreakerSnapshot:
    """``row`` as the state machine reads it (the admin shows the policy in force from it)."""
    return BreakerSnapshot(
        pk=row.pk,
        state=row.state,
        version=row.version,
        consecutive_failures=row.consecutive_failures,
        opened_at=_ts(row.opened_at),
        forced_until=_ts(row.forced_until),
        half_open_in_flight=row.half_open_in_flight,
        probe_lease_until=_ts(row.probe_lease_until),
        failure_threshold=row.failure_threshold,
        reset_timeout=row.reset_timeout,
        half_open_max_calls=row.half_open_max_calls,
        window_start=_ts(row.window_start),
        window_calls=row.window_calls,
        window_failures=row.window_failures,
        previous_window_calls=row.previous_window_calls,
        previous_window_failures=row.previous_window_failures,
    )


@dataclass(slots=True)
class SuccessBatch:
    """Successes seen by a process and not yet added to the row. ``current`` are those of the
    newest generation it has seen (``version``): only they may join that generation's
    failure-rate window, if the row is still at it when the batch is written. ``late`` are
    those of older generations: they go to ``total_successes`` only."""

    version: int = -1
    current: int = 0
    late: int = 0

    @property
    def total(self) -> int:
        return self.current + self.late

    def add(self, version: int, count: int = 1) -> None:
        """Count ``count`` successes of calls admitted by generation ``version``."""
        if version == self.version:
            self.current += count
        elif version > self.version:  # versions only grow: this batch's generation is over
            self.late += self.current
            self.version, self.current = version, count
        else:
            self.late += count

    def merge(self, other: SuccessBatch) -> None:
        self.add(other.version, other.current)
        self.late += other.late


def _of_generation(version: int, count: int) -> Expression:
    """In an UPDATE: ``count`` if the row is still at ``version`` (the generation that admitted
    the calls), else 0. What only that generation's counters may take."""
    if not count:
        return Value(0)
    return Case(When(version=version, then=Value(count)), default=Value(0))


def _window_changes(
    now: float, window: float, calls: Expression, failures: Expression
) -> dict[str, Any]:
    """UPDATE expressions adding ``calls``/``failures`` (expressions of the row such as
    ``_of_generation``) to the two-bucket failure-rate window.

    Buckets are aligned on multiples of ``window`` since the epoch, so every process agrees on
    their edges; a row still on the previous bucket rotates it in the same statement
    (PostgreSQL evaluates every SET expression against the old row)."""
    start = math.floor(now / window) * window
    current, previous = _dt(start), _dt(start - window)
    in_current = Q(window_start__gte=current)  # a process whose clock runs late joins it
    in_previous = Q(window_start=previous)
    return {
        "window_start": Case(When(in_current, then=F("window_start")), default=Value(current)),
        "window_calls": Case(When(in_current, then=F("window_calls") + calls), default=calls),
        "window_failures": Case(
            When(in_current, then=F("window_failures") + failures), default=failures
        ),
        "previous_window_calls": Case(
            When(in_current, then=F("previous_window_calls")),
            When(in_previous, then=F("window_calls")),
            default=Value(0),
        ),
        "previous_window_failures": Case(
            When(in_current, then=F("previous_window_failures")),
            When(in_previous, then=F("window_failures")),
            default=Value(0),
        ),
    }


def _failure_counts(error: str, now: float, counted: Expression) -> dict[str, Any]:
    """UPDATE expressions counting one failure: in the totals and as the latest error always,
    in ``consecutive_failures`` by ``counted``."""
    return {
        "consecutive_failures": F("consecutive_failures") + counted,
        "total_failures": F("total_failures") + 1,
        "last_failure_at": _dt(now),
        "last_error": error[:LAST_ERROR_MAX],
    }


def _entering(
    state: str,
    now: float,
    *,
    probe_lease_until: float | None = None,
    forced_until: datetime | None = None,
) -> dict[str, Any]:
    """What entering ``state`` writes besides the state and version."""
    if state == State.CLOSED:
        return {**CLOSED_COUNTS, "forced_until": None}
    if state == State.OPEN:
        return {"opened_at": _dt(now), "half_open_in_flight": 0, "probe_lease_until": None}
    if state == State.HALF_OPEN:  # the caller holds the first probe
        if probe_lease_until is None:
            raise ValueError("entering half_open needs the first probe's lease")
        return {"half_open_in_flight": 1, "probe_lease_until": _dt(probe_lease_until)}
    if state in (State.FORCED_OPEN, State.DISABLED):
        return {"half_open_in_flight": 0, "probe_lease_until": None, "forced_until": forced_until}
    raise ValueError(f"unknown circuit breaker state {state!r}")


class DatabaseStorage:
    """Breaker state in the ``CircuitBreaker`` table. Every method is one short transaction."""

    def load(self, name: str) -> BreakerSnapshot:
        """The breaker's row, created on first use."""
        return snapshot_of(self._row(name))

    @staticmethod
    def _row(name: str) -> CircuitBreaker:
        row = CircuitBreaker.objects.filter(name=name).first()
        if row is None:  # race-safe: get_or_create retries on a conflict
            row, _created = CircuitBreaker.objects.get_or_create(name=name)
        return row

    # -- outcomes -----------------------------------------------------------------------------

    def add_successes(self, name: str, batch: SuccessBatch, *, now: float, window: float) -> None:
        """Add a batch of successes to the totals, and those of the row's generation to its
        failure-rate window."""
        CircuitBreaker.objects.filter(name=name).update(
            total_successes=F("total_successes") + batch.total,
            **_window_changes(now, window, _of_generation(batch.version, batch.current), Value(0)),
        )

    def reset_failures(
        self,
        current: BreakerSnapshot,
        version: int,
        batch: SuccessBatch,
        *,
        now: float,
        window: float,
    ) -> bool:
        """A success in ``closed``: consecutive failures of ``current``'s row back to 0, only
        if there are some and the row is still at ``version``, the generation that admitted the
        call (a late success never resets a newer generation's failures). Adds ``batch`` (this
        success included) as ``add_successes`` does. Whether the row changed (never for a
        ``degraded`` snapshot, which names no row)."""
        if current.pk is None:
            return False
        changed = CircuitBreaker.objects.filter(
            pk=current.pk, state=State.CLOSED, version=version, consecutive_failures__gt=0
        ).update(
            consecutive_failures=0,
            total_successes=F("total_successes") + batch.total,
            updated_at=_dt(now),
            **_window_changes(now, window, _of_generation(batch.version, batch.current), Value(0)),
        )
        return changed == 1

    def add_failure(
        self,
        name: str,
        version: int,
        error: str,
        batch: SuccessBatch,
        *,
        now: float,
        window: float,
    ) -> BreakerSnapshot:
        """Count one failure (``error``: its text, safe to store) of a call admitted by
        generation ``version``, and a process's batched successes; return the fresh row. One
        UPDATE with ``F()`` increments: concurrent failures are never lost. The failure always
        joins ``total_failures``, ``last_failure_at`` and ``last_error``, but
        ``consecutive_failures`` and the window only if the row is still at ``version``, in the
        same statement (no read before the write). A row deleted meanwhile (by an operator) is
        created again."""
        counted = _of_generation(version, 1)
        changes = {
            **_failure_counts(error, now, counted),
            "total_successes": F("total_successes") + batch.total,
            "updated_at": _dt(now),
            **_window_changes(
                now, window, _of_generation(batch.version, batch.current) + counted, counted
            ),
        }
        rows = CircuitBreaker.objects.filter(name=name)
        with transaction.atomic():
            if not rows.update(**changes):
                self._row(name)
                rows.update(**changes)
            return snapshot_of(rows.get())

    # -- probes -------------------------------------------------------------------------------

    def take_probe(
        self, current: BreakerSnapshot, *, now: float, max_calls: int, lease: float
    ) -> BreakerSnapshot | None:
        """One more half-open probe of ``current``'s generation, if fewer than ``max_calls`` are
        in flight, or if every probe in flight is older than its lease (its process died or lost
        it): then the slots are taken back. The fresh row, or None when no slot is free (or
        ``current`` is a ``degraded`` snapshot, which names no row).

        ``probe_lease_until`` covers every probe in flight: a grant only ever moves it later
        (a caller with a shorter lease never cuts short the lease of a probe still running),
        and the slots are taken back only once it has passed."""
        if current.pk is None:
            return None
        until = _dt(now + lease)
        lease_over = Q(probe_lease_until__lt=_dt(now)) | Q(probe_lease_until__isnull=True)
        rows = CircuitBreaker.objects.filter(
            pk=current.pk, state=State.HALF_OPEN, version=current.version
        )
        with transaction.atomic():
            changed = rows.filter(Q(half_open_in_flight__lt=max_calls) | lease_over).update(
                half_open_in_flight=Case(
                    When(lease_over, then=Value(1)), default=F("half_open_in_flight") + 1
                ),
                probe_lease_until=Case(
                    When(lease_over, then=Value(until)),
                    default=Greatest(F("probe_lease_until"), Value(until)),
                ),
                updated_at=_dt(now),
            )
            return snapshot_of(CircuitBreaker.objects.get(pk=current.pk)) if changed == 1 else None

    def release_probe(self, name: str, version: int) -> None:
        """Give back a probe slot of generation ``version`` that was never used."""
        CircuitBreaker.objects.filter(
            name=name, state=State.HALF_OPEN, version=version, half_open_in_flight__gt=0
        ).update(half_open_in_flight=F("half_open_in_flight") - 1)

    # -- transitions --------------------------------------------------------------------------

    def transition(
        self,
        current: BreakerSnapshot,
        to_state: str,
        *,
        now: float,
        reason: str,
        probe_lease_until: float | None = None,
        success: bool = False,
        failure: str | None = None,
        if_hold_ended: bool = False,
    ) -> BreakerSnapshot | None:
        """The breaker's own transition from ``current.state`` (at ``current.version``) to
        ``to_state``, if, and only if, nobody moved the row first. The fresh row, or None when
        another process won (or ``current`` is a ``degraded`` snapshot, which names no row).

        ``probe_lease_until``: the first probe's lease, entering ``half_open``. ``success`` /
        ``failure`` (its error text): the probe's outcome that decided the transition, counted
        in the same UPDATE. ``if_hold_ended``: only if ``forced_until`` has passed by ``now``."""
        if current.pk is None:
            return None
        changes = _entering(to_state, now, probe_lease_until=probe_lease_until)
        if success:
            changes["total_successes"] = F("total_successes") + 1
        if failure is not None:
            changes.update(_failure_counts(failure, now, Value(1)))
        guard = Q(forced_until__lte=_dt(now)) if if_hold_ended else None
        with transaction.atomic():
            row = self._move(
                current.pk,
                current.state,
                current.version,
                to_state,
                now=now,
                reason=reason,
                actor=BreakerTransition.SYSTEM,
                changes=changes,
                guard=guard,
            )
        return None if row is None else snapshot_of(row)

    def set_state(
        self,
        name: str,
        to_state: str,
        *,
        now: float,
        reason: str,
        actor: str,
        forced_until: datetime | None = None,
        create: bool = False,
    ) -> CircuitBreaker | None:
        """A person's transition, from whatever state the breaker is in (its row is locked while
        it is read and moved) to ``to_state``; ``forced_until`` ends a forced state (None: no
        end). The fresh row, for the surfaces that show it; None when no breaker has this name
        (one is created first when ``create``)."""
        changes = _entering(to_state, now, forced_until=forced_until)
        with transaction.atomic():
            if create:
                CircuitBreaker.objects.get_or_create(name=name)
            current = CircuitBreaker.objects.select_for_update().filter(name=name).first()
            if current is None:
                return None
            return self._move(
                current.pk,
                current.state,
                current.version,
                to_state,
                now=now,
                reason=reason,
                actor=actor,
                changes=changes,
            )

    def set_overrides(self, name: str, overrides: Mapping[str, Any], *, now: float) -> None:
        """A person's policy overrides of one breaker (``failure_threshold``,
        ``reset_timeout``, ``half_open_max_calls``; None: from the settings), and nothing else:
        counters that other processes moved meanwhile are kept."""
        unknown = set(overrides) - OVERRIDE_FIELDS
        if unknown:
            raise ValueError(f"not a breaker policy override: {', '.join(sorted(unknown))}")
        CircuitBreaker.objects.filter(name=name).update(**overrides, updated_at=_dt(now))

    @staticmethod
    def _move(
        pk: int,
        from_state: str,
        version: int,
        to_state: str,
        *,
        now: float,
        reason: str,
        actor: str,
        changes: dict[str, Any],
        guard: Q | None = None,
    ) -> CircuitBreaker | None:
        """THE transition: one conditional UPDATE of state and version (the row must still be
        in ``from_state`` at ``version``), then its ``BreakerTransition`` with the counts at
        the time, a log line, and ``breaker_transitioned`` once the transaction commits. The
        caller holds the transaction. The fresh row, or None when the row had moved on."""
        rows = CircuitBreaker.objects.filter(pk=pk, state=from_state, version=version)
        if guard is not None:
            rows = rows.filter(guard)
        at = _dt(now)
        if rows.update(state=to_state, version=F("version") + 1, updated_at=at, **changes) != 1:
            return None
        row = CircuitBreaker.objects.get(pk=pk)
        record = BreakerTransition.objects.create(
            breaker=row,
            from_state=from_state,
            to_state=row.state,
            reason=reason[:LAST_ERROR_MAX],
            actor=actor[:ACTOR_MAX],
            snapshot=row.counts(),
            created_at=at,
        )

        def send() -> None:
            breaker_transitioned.send(
                sender=CircuitBreaker,
                breaker=row,
                from_state=from_state,
                to_state=row.state,
                reason=record.reason,
                actor=record.actor,
            )

        transaction.on_commit(send, robust=True)
        logger.log(
            logging.WARNING if row.state in (State.OPEN, State.FORCED_OPEN) else logging.INFO,
            "circuit breaker %s: %s -> %s (%s) by %s",
            row.name,
            from_state,
            row.state,
            reason,
            actor,
            extra={
                "breaker": row.name,
                "from_state": from_state,
                "to_state": row.state,
                "actor": actor,
            },
        )
        return row
