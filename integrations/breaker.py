"""Circuit breakers whose state lives in the database, shared by every process.

The module has two halves, as pybreaker separates a breaker's policy from its storage:

- ``Breaker`` is the state machine (the policy): which state lets a call through, what a
  success or a failure does, when a state changes. It reads state through a short-lived,
  process-local snapshot and never keeps anything in memory that correctness depends on.
- ``DatabaseStorage`` is where the state lives: one ``CircuitBreaker`` row per service. Every
  transition is ONE conditional UPDATE (``filter(state=..., version=...).update(...)``, with
  ``F()`` expressions for counters), and the caller that changed the row (rows affected == 1)
  is the one that records the ``BreakerTransition`` and sends ``breaker_transitioned``. So two
  processes never both take the same transition, never exceed the half-open probe limit, and
  never lose a failure increment.

States and transitions (``S`` = system, ``P`` = a person, through ``integrations.services``)::

    closed    --S failures reach the threshold, or the failure rate--> open
    open      --S reset timeout elapsed, first probe granted-------> half_open
    half_open --S a probe succeeds-------------------------------> closed
    half_open --S a probe fails----------------------------------> open
    forced_open / disabled --S forced_until passed-----------------> closed
    any       --P reset / force open / disable--------------------> closed / forced_open / disabled

Generations: the row's ``version`` names the generation of the breaker that admitted a call
(it stays the same while the breaker stays closed; every change of state starts a new one). An
outcome counts only against the generation that admitted its call: a failure reported under
another ``version`` (a call let through before an outage, reporting after a probe closed the
breaker again) adds to ``total_failures`` only, never to ``consecutive_failures`` or the
failure-rate window, and never trips the breaker; such a success never resets the new
generation's failures and joins ``total_successes`` only. The check is part of the same
conditional UPDATE that counts the outcome, so it holds across processes.

Costs: a healthy call in ``closed`` makes no query while the snapshot is fresh (``CACHE_TTL``,
default 1 s) and no write at all unless failures had been counted; successes are added to the
row's totals in batches. An open breaker fails fast from the snapshot, without a query.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from django.db import DatabaseError, models, transaction
from django.db.models import Case, Expression, F, Q, Value, When
from django.db.models.functions import Greatest
from django.utils.translation import gettext_lazy as _

from .exceptions import CircuitOpenError, safe_error_text
from .policies import BreakerPolicy

logger = logging.getLogger("integrations.breaker")

__all__ = [
    "PROBE_LEASE_MARGIN",
    "Breaker",
    "BreakerSnapshot",
    "BreakerState",
    "Clock",
    "DatabaseStorage",
    "ManualClock",
    "Permit",
    "clear_local_cache",
    "get_breaker",
    "probe_lease_for",
]


class BreakerState(models.TextChoices):
    """The five states; ``CircuitBreaker.state`` takes its choices from here."""

    CLOSED = "closed", _("closed")
    OPEN = "open", _("open")
    HALF_OPEN = "half_open", _("half-open")
    FORCED_OPEN = "forced_open", _("forced open")
    DISABLED = "disabled", _("disabled")


CLOSED = BreakerState.CLOSED.value
OPEN = BreakerState.OPEN.value
HALF_OPEN = BreakerState.HALF_OPEN.value
FORCED_OPEN = BreakerState.FORCED_OPEN.value
DISABLED = BreakerState.DISABLED.value
#: States only people set (through ``integrations.services``).
MANUAL_STATES = (FORCED_OPEN, DISABLED)

SYSTEM = "system"
#: Without a failure-rate rule, a process adds its batched successes to the row's
#: ``total_successes`` at most this often (seconds). With one, every ``CACHE_TTL``.
SUCCESS_FLUSH_INTERVAL = 30.0
LAST_ERROR_MAX = 500

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

#: Seconds a half-open probe's lease outlasts the call deadline that bounds the probe's attempt
#: (``integrations.transport`` ends every socket operation of an attempt by then): time to write
#: the probe's outcome (a database write that may wait for a lock), to parse the answer, and for
#: the clocks of the processes that compare ``probe_lease_until`` to differ.
PROBE_LEASE_MARGIN = 5.0


def probe_lease_for(deadline: float) -> float:
    """The probe lease for calls bounded by ``deadline`` seconds: no new probe is granted while
    an earlier one can still be running."""
    return deadline + PROBE_LEASE_MARGIN


#: Seconds since the epoch, like ``time.time``. Inject another to move time in tests.
Clock = Callable[[], float]


class ManualClock:
    """A clock that moves only when told to: ``clock.advance(30)``. Starts at the real time
    (whole seconds, so that times survive the round trip through the database exactly)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = float(int(time.time())) if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """What a process knows about one breaker row, until ``expires_at`` (clock time)."""

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
    expires_at: float = 0.0
    #: The database could not be read: the breaker fails open (or closed, by policy).
    degraded: bool = False

    @classmethod
    def from_row(cls, row: Any, *, expires_at: float) -> BreakerSnapshot:
        return cls(
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
            expires_at=expires_at,
        )


class Permit:
    """Leave to make one attempt, returned by ``Breaker.acquire`` and handed back to
    ``record_success`` / ``record_failure``. ``state`` and ``version`` say which state and
    generation granted it, so that a late report never moves, nor counts against, a breaker
    that has changed since."""

    __slots__ = ("degraded", "operation", "service", "state", "version")

    def __init__(
        self, service: str, operation: str, state: str, version: int, degraded: bool = False
    ) -> None:
        self.service = service
        self.operation = operation
        self.state = state
        self.version = version
        self.degraded = degraded

    @property
    def is_probe(self) -> bool:
        return self.state == HALF_OPEN

    def __repr__(self) -> str:
        return f"<Permit {self.service}.{self.operation} in {self.state} v{self.version}>"


# -- process-local snapshot cache -------------------------------------------------------------

_snapshots: dict[str, BreakerSnapshot] = {}


@dataclass(slots=True)
class SuccessBatch:
    """Successes seen by this process and not yet added to the row. ``current`` are those of
    the newest generation it has seen (``version``): only they may join that generation's
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


_pending_lock = threading.Lock()
#: name -> successes seen by this process and not yet added to the row.
_pending_successes: dict[str, SuccessBatch] = {}
#: name -> clock time of this process's last flush of successes.
_last_flush: dict[str, float] = {}


def clear_local_cache(name: str | None = None) -> None:
    """Forget this process's snapshot of one breaker (or all): the next call reads the row.

    Operator actions call it for the process they run in; other processes see the change when
    their snapshot expires (``CACHE_TTL``). Tests call it between tests."""
    if name is None:
        _snapshots.clear()
        with _pending_lock:
            _pending_successes.clear()
            _last_flush.clear()
    else:
        _snapshots.pop(name, None)


def _add_pending(name: str, version: int) -> None:
    """One more success of a call admitted by generation ``version``, for the next batch."""
    with _pending_lock:
        batch = _pending_successes.get(name)
        if batch is None:
            _pending_successes[name] = SuccessBatch(version, 1)
        else:
            batch.add(version)


def _take_pending(name: str) -> SuccessBatch:
    with _pending_lock:
        return _pending_successes.pop(name, None) or SuccessBatch()


def _give_back_pending(name: str, batch: SuccessBatch) -> None:
    if batch.total:
        with _pending_lock:
            kept = _pending_successes.get(name)
            if kept is None:
                _pending_successes[name] = batch
            else:
                kept.merge(batch)


def _of_generation(version: int, count: int) -> Expression:
    """In an UPDATE: ``count`` if the row is still at ``version`` (the generation that admitted
    the calls), else 0. What only that generation's counters may take."""
    if not count:
        return Value(0)
    return Case(When(version=version, then=Value(count)), default=Value(0))


# -- storage ----------------------------------------------------------------------------------


class DatabaseStorage:
    """Breaker state in the ``CircuitBreaker`` table. Every method is one short transaction."""

    @staticmethod
    def model() -> Any:
        from .models import CircuitBreaker

        return CircuitBreaker

    def load(self, name: str) -> Any:
        """The row, created on first use (race-safe: ``get_or_create`` retries on conflict)."""
        model = self.model()
        row = model.objects.filter(name=name).first()
        if row is None:
            row, _created = model.objects.get_or_create(name=name)
        return row

    @staticmethod
    def window_changes(
        now: float, window: float, calls: int | Expression, failures: int | Expression
    ) -> dict[str, Any]:
        """UPDATE expressions adding ``calls``/``failures`` (numbers, or expressions of the
        row such as ``_of_generation``) to the two-bucket rate window.

        Buckets are aligned on multiples of ``window`` since the epoch, so every process
        agrees on their edges; a row still on the previous bucket rotates it in the same
        statement (PostgreSQL evaluates every SET expression against the old row)."""
        if isinstance(calls, int):
            calls = Value(calls)
        if isinstance(failures, int):
            failures = Value(failures)
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

    def add_successes(self, name: str, batch: SuccessBatch, *, now: float, window: float) -> None:
        """Add a batch of successes to the totals, and those of the row's generation to its
        failure-rate window."""
        self.model().objects.filter(name=name).update(
            total_successes=F("total_successes") + batch.total,
            **self.window_changes(now, window, _of_generation(batch.version, batch.current), 0),
        )

    def reset_failures(
        self, pk: int, version: int, batch: SuccessBatch, *, now: float, window: float
    ) -> int:
        """A success in ``closed``: consecutive failures back to 0, only if there are some and
        the row is still at ``version``, the generation that admitted the call (a late success
        never resets a newer generation's failures). Adds ``batch`` (this success included)
        as ``add_successes`` does. Returns the rows changed (0 or 1)."""
        return (
            self.model()
            .objects.filter(pk=pk, state=CLOSED, version=version, consecutive_failures__gt=0)
            .update(
                consecutive_failures=0,
                total_successes=F("total_successes") + batch.total,
                updated_at=_dt(now),
                **self.window_changes(now, window, _of_generation(batch.version, batch.current), 0),
            )
        )

    def add_failure(
        self,
        name: str,
        version: int,
        error: BaseException | None,
        batch: SuccessBatch,
        *,
        now: float,
        window: float,
    ) -> Any:
        """Count one failure of a call admitted by generation ``version`` (and this process's
        batched successes); return the fresh row. One UPDATE with ``F()`` increments:
        concurrent failures are never lost. The failure always joins ``total_failures``,
        ``last_failure_at`` and ``last_error``, but ``consecutive_failures`` and the window
        only if the row is still at ``version``, in the same statement (no read before the
        write). A row deleted meanwhile (by an operator) is created again."""
        model = self.model()
        counted = _of_generation(version, 1)
        changes = {
            "consecutive_failures": F("consecutive_failures") + counted,
            "total_failures": F("total_failures") + 1,
            "total_successes": F("total_successes") + batch.total,
            "last_failure_at": _dt(now),
            "last_error": safe_error_text(error, LAST_ERROR_MAX),
            "updated_at": _dt(now),
            **self.window_changes(
                now, window, _of_generation(batch.version, batch.current) + counted, counted
            ),
        }
        if not model.objects.filter(name=name).update(**changes):
            self.load(name)
            model.objects.filter(name=name).update(**changes)
        return model.objects.get(name=name)

    def transition(
        self,
        snapshot: BreakerSnapshot,
        to_state: str,
        *,
        now: float,
        reason: str,
        guard: Q | None = None,
        actor: str = SYSTEM,
        **changes: Any,
    ) -> Any | None:
        """Move the row from ``snapshot.state`` (at ``snapshot.version``) to ``to_state`` if,
        and only if, nobody moved it first. Returns the fresh row, or None when another
        process won. The transition's record commits with the change; the signal follows the
        commit."""
        model = self.model()
        with transaction.atomic():
            rows = model.objects.filter(
                pk=snapshot.pk, state=snapshot.state, version=snapshot.version
            )
            if guard is not None:
                rows = rows.filter(guard)
            changed = rows.update(
                state=to_state, version=F("version") + 1, updated_at=_dt(now), **changes
            )
            if changed != 1:
                return None
            row = model.objects.get(pk=snapshot.pk)
            self.record_transition(row, snapshot.state, reason=reason, actor=actor, at=_dt(now))
        return row

    def take_probe(
        self, snapshot: BreakerSnapshot, *, now: float, max_calls: int, lease: float
    ) -> Any | None:
        """One more half-open probe, if fewer than ``max_calls`` are in flight, or if every
        probe in flight is older than the lease (its process died or lost it): then the slots
        are taken back. Returns the fresh row, or None when no slot is free.

        ``probe_lease_until`` covers every probe in flight: a grant only ever moves it later
        (a caller with a shorter lease never cuts short the lease of a probe still running),
        and the slots are taken back only once it has passed."""
        model = self.model()
        until = _dt(now + lease)
        lease_over = Q(probe_lease_until__lt=_dt(now)) | Q(probe_lease_until__isnull=True)
        changed = (
            model.objects.filter(pk=snapshot.pk, state=HALF_OPEN, version=snapshot.version)
            .filter(Q(half_open_in_flight__lt=max_calls) | lease_over)
            .update(
                half_open_in_flight=Case(
                    When(lease_over, then=Value(1)), default=F("half_open_in_flight") + 1
                ),
                probe_lease_until=Case(
                    When(lease_over, then=Value(until)),
                    default=Greatest(F("probe_lease_until"), Value(until)),
                ),
                updated_at=_dt(now),
            )
        )
        return model.objects.get(pk=snapshot.pk) if changed == 1 else None

    def release_probe(self, permit: Permit) -> None:
        self.model().objects.filter(
            name=permit.service, state=HALF_OPEN, version=permit.version, half_open_in_flight__gt=0
        ).update(half_open_in_flight=F("half_open_in_flight") - 1)

    @staticmethod
    def record_transition(
        row: Any, from_state: str, *, reason: str, actor: str, at: datetime | None = None
    ) -> Any:
        """Write the audit record of a committed-or-committing change of ``row``'s state and
        send ``breaker_transitioned`` once the transaction commits."""
        from django.utils import timezone

        from .models import BreakerTransition, CircuitBreaker
        from .signals import breaker_transitioned

        record = BreakerTransition.objects.create(
            breaker=row,
            from_state=from_state,
            to_state=row.state,
            reason=reason[:500],
            actor=actor[:200],
            snapshot=row.counts(),
            created_at=at or timezone.now(),
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
            logging.WARNING if row.state in (OPEN, FORCED_OPEN) else logging.INFO,
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
        return record


_storage = DatabaseStorage()


# -- the state machine ------------------------------------------------------------------------


class Breaker:
    """The circuit breaker of one service. Cheap to create; all state is in the database.

    ``policy`` defaults to ``BreakerPolicy.for_service(name)`` (settings); the row's own
    override fields (threshold, reset timeout, half-open max calls) win over it. ``clock``
    returns seconds since the epoch (default ``time.time``); ``probe_lease`` is how long a
    half-open probe may stay unreported before its slot is given to another caller (default:
    ``probe_lease_for`` the service's retry deadline, which bounds every attempt)."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy | None = None,
        *,
        clock: Clock | None = None,
        probe_lease: float | None = None,
        storage: DatabaseStorage | None = None,
    ) -> None:
        self.name = name
        self.policy = policy if policy is not None else BreakerPolicy.for_service(name)
        self.clock: Clock = clock or time.time
        self._probe_lease = probe_lease
        self.storage = storage or _storage

    def __repr__(self) -> str:
        return f"<Breaker {self.name}>"

    # -- reading state ------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The current state, through the short-lived snapshot (``degraded`` when the database
        cannot be read)."""
        snapshot = self.snapshot()
        return "degraded" if snapshot.degraded else snapshot.state

    @property
    def cached_state(self) -> str:
        """The state this process last saw, even if its snapshot has expired; ``"unknown"``
        when it has none. Never queries the database (for log lines and the like)."""
        snapshot = _snapshots.get(self.name)
        if snapshot is None:
            return "unknown"
        return "degraded" if snapshot.degraded else snapshot.state

    def snapshot(self, *, fresh: bool = False) -> BreakerSnapshot:
        now = self.clock()
        snapshot = _snapshots.get(self.name)
        if fresh or snapshot is None or snapshot.expires_at <= now:
            snapshot = self._refresh(now)
        return snapshot

    def _refresh(self, now: float) -> BreakerSnapshot:
        """Read the row (creating it on first use), first adding this process's batched
        successes when they are due. A database error gives a ``degraded`` snapshot, cached
        for ``CACHE_TTL`` so that a dead database is not asked again on every call."""
        ttl = self.policy.cache_ttl
        try:
            self._flush_successes(now)
            row = self.storage.load(self.name)
        except DatabaseError as exc:
            self._log_db_error("cannot read its state from the database", exc)
            snapshot = BreakerSnapshot(
                pk=None, state=CLOSED, version=-1, expires_at=now + ttl, degraded=True
            )
        else:
            snapshot = BreakerSnapshot.from_row(row, expires_at=now + ttl)
        _snapshots[self.name] = snapshot
        return snapshot

    def _log_db_error(self, what: str, exc: DatabaseError) -> None:
        failing = "open: calls go through" if self.policy.fail_open_on_db_error else "closed"
        logger.error(
            "circuit breaker %s: %s (%s); failing %s for %gs",
            self.name,
            what,
            type(exc).__name__,
            failing,
            self.policy.cache_ttl,
            extra={"breaker": self.name, "error_class": type(exc).__name__},
        )

    def _remember(self, row: Any, now: float) -> BreakerSnapshot:
        snapshot = BreakerSnapshot.from_row(row, expires_at=now + self.policy.cache_ttl)
        _snapshots[self.name] = snapshot
        return snapshot

    def _flush_successes(self, now: float) -> None:
        interval = (
            self.policy.cache_ttl
            if self.policy.failure_rate is not None
            else max(SUCCESS_FLUSH_INTERVAL, self.policy.cache_ttl)
        )
        last = _last_flush.setdefault(self.name, now)
        if now - last < interval:
            return
        batch = _take_pending(self.name)
        _last_flush[self.name] = now
        if batch.total:
            try:
                self.storage.add_successes(self.name, batch, now=now, window=self.policy.window)
            except DatabaseError:
                _give_back_pending(self.name, batch)
                raise

    # -- effective policy (the row's overrides win) ---------------------------------------------

    def _threshold(self, snapshot: BreakerSnapshot) -> int:
        return snapshot.failure_threshold or self.policy.failure_threshold

    def _reset_timeout(self, snapshot: BreakerSnapshot) -> float:
        if snapshot.reset_timeout is not None:
            return snapshot.reset_timeout
        return self.policy.reset_timeout

    def _max_probes(self, snapshot: BreakerSnapshot) -> int:
        return snapshot.half_open_max_calls or self.policy.half_open_max_calls

    def probe_lease(self) -> float:
        if self._probe_lease is not None:
            return self._probe_lease
        from .policies import RetryPolicy

        return probe_lease_for(float(RetryPolicy.for_service(self.name).deadline))

    # -- acquire ------------------------------------------------------------------------------

    def acquire(self, operation: str) -> Permit:
        """Leave for one attempt, or ``CircuitOpenError`` (with ``retry_after``) when the call
        must not go out. The hot path (closed, fresh snapshot) makes no query."""
        now = self.clock()
        snapshot = _snapshots.get(self.name)
        if snapshot is None or snapshot.expires_at <= now:
            snapshot = self._refresh(now)
        if snapshot.state == CLOSED and not snapshot.degraded:
            return Permit(self.name, operation, CLOSED, snapshot.version)
        try:
            return self._acquire_slow(snapshot, operation, now)
        except DatabaseError as exc:  # a transition could not be written: as if unreadable
            self._log_db_error("cannot change its state in the database", exc)
            _snapshots[self.name] = BreakerSnapshot(
                pk=None,
                state=CLOSED,
                version=-1,
                expires_at=now + self.policy.cache_ttl,
                degraded=True,
            )
            return self._acquire_degraded(operation)

    def _acquire_slow(self, snapshot: BreakerSnapshot, operation: str, now: float) -> Permit:
        for _attempt in range(3):  # another process may move the row between our read and our write
            if snapshot.degraded:
                return self._acquire_degraded(operation)
            state = snapshot.state
            if state == CLOSED:
                return Permit(self.name, operation, CLOSED, snapshot.version)
            if state in MANUAL_STATES:
                if snapshot.forced_until is not None and now >= snapshot.forced_until:
                    snapshot = self._end_manual_state(snapshot, now)
                    continue
                if state == DISABLED:
                    return Permit(self.name, operation, DISABLED, snapshot.version)
                retry_after = None
                if snapshot.forced_until is not None:
                    retry_after = snapshot.forced_until - now
                raise self._open_error(operation, retry_after, "held open by an operator")
            if state == OPEN:
                wait = (snapshot.opened_at or now) + self._reset_timeout(snapshot) - now
                if wait > 0:
                    raise self._open_error(operation, wait)
                row = self.storage.transition(
                    snapshot,
                    HALF_OPEN,
                    now=now,
                    reason="reset timeout elapsed: probing",
                    half_open_in_flight=1,
                    probe_lease_until=_dt(now + self.probe_lease()),
                )
                if row is not None:
                    self._remember(row, now)
                    return Permit(self.name, operation, HALF_OPEN, row.version)
                snapshot = self._refresh(now)
                continue
            if state == HALF_OPEN:
                row = self.storage.take_probe(
                    snapshot,
                    now=now,
                    max_calls=self._max_probes(snapshot),
                    lease=self.probe_lease(),
                )
                if row is not None:
                    self._remember(row, now)
                    return Permit(self.name, operation, HALF_OPEN, row.version)
                fresh = self._refresh(now)
                if fresh.state == HALF_OPEN and fresh.version == snapshot.version:
                    raise self._open_error(operation, self._half_open_retry_after(fresh, now))
                snapshot = fresh
                continue
            raise ValueError(f"circuit breaker {self.name}: unknown state {state!r}")
        raise self._open_error(operation, self.policy.cache_ttl, "state is changing")

    def _acquire_degraded(self, operation: str) -> Permit:
        if self.policy.fail_open_on_db_error:
            return Permit(self.name, operation, CLOSED, -1, degraded=True)
        raise self._open_error(
            operation, self.policy.cache_ttl, "breaker state unavailable (database error)"
        )

    def _half_open_retry_after(self, snapshot: BreakerSnapshot, now: float) -> float:
        """Probes are in flight: one will close or reopen the breaker, at the latest when
        their lease runs out."""
        lease_left = (snapshot.probe_lease_until or now) - now
        return max(0.0, min(self._reset_timeout(snapshot), lease_left))

    def _open_error(
        self, operation: str, retry_after: float | None, reason: str = ""
    ) -> CircuitOpenError:
        if retry_after is not None:
            retry_after = max(0.0, retry_after)
        message = "circuit breaker is open" + (f" ({reason})" if reason else "")
        return CircuitOpenError(self.name, operation, message, retry_after=retry_after)

    def _end_manual_state(self, snapshot: BreakerSnapshot, now: float) -> BreakerSnapshot:
        row = self.storage.transition(
            snapshot,
            CLOSED,
            now=now,
            reason=f"{snapshot.state} expired",
            guard=Q(forced_until__lte=_dt(now)),
            forced_until=None,
            **CLOSED_COUNTS,
        )
        return self._remember(row, now) if row is not None else self._refresh(now)

    # -- outcomes -----------------------------------------------------------------------------

    def record_success(self, permit: Permit) -> None:
        """The attempt succeeded (or failed in a way that is not the vendor's fault)."""
        if permit.degraded:
            return
        if permit.state == HALF_OPEN:
            self._guarded(self._close_after_probe, permit, self.clock())
            return
        snapshot = _snapshots.get(self.name)
        if (
            snapshot is not None
            and snapshot.state == CLOSED
            and snapshot.consecutive_failures
            and permit.state == CLOSED
            and permit.version == snapshot.version  # else a late success: no reset to write
        ):
            self._guarded(self._reset_failures, permit, snapshot, self.clock())
            return
        # The hot path: nothing written; the success joins this process's next batch.
        _add_pending(self.name, permit.version)

    def record_failure(self, permit: Permit, error: BaseException | None = None) -> None:
        """The attempt failed in a way that counts against the breaker. Which failures count
        (``error.breaker_failure``: a 4xx does not) is the runner's decision, not this one's."""
        if permit.degraded:
            return
        self._guarded(self._count_failure, permit, error, self.clock())

    def release(self, permit: Permit) -> None:
        """Give back a permit that was never used (the attempt was not made): frees a probe
        slot at once instead of waiting for its lease to run out."""
        if permit.state == HALF_OPEN and not permit.degraded:
            self._guarded(self.storage.release_probe, permit)

    def _guarded(self, func: Callable[..., Any], *args: Any) -> None:
        """Outcomes are recorded after the vendor call: a database error here must not hide
        the call's own result, so it is logged, never raised."""
        try:
            func(*args)
        except DatabaseError as exc:
            logger.error(
                "circuit breaker %s: cannot record an outcome in the database (%s)",
                self.name,
                type(exc).__name__,
                extra={"breaker": self.name},
            )
            clear_local_cache(self.name)

    def _reset_failures(self, permit: Permit, snapshot: BreakerSnapshot, now: float) -> None:
        batch = _take_pending(self.name)
        batch.add(permit.version)
        written = 0
        try:
            written = self.storage.reset_failures(
                snapshot.pk, permit.version, batch, now=now, window=self.policy.window
            )
        finally:
            # Another process reset it first, or moved the row to a newer generation: keep the
            # batch for later.
            if not written:
                _give_back_pending(self.name, batch)
        _snapshots[self.name] = replace(snapshot, consecutive_failures=0)

    def _close_after_probe(self, permit: Permit, now: float) -> None:
        snapshot = self.snapshot()
        probe = replace(snapshot, state=HALF_OPEN, version=permit.version)
        row = self.storage.transition(
            probe,
            CLOSED,
            now=now,
            reason="probe succeeded",
            total_successes=F("total_successes") + 1,
            **CLOSED_COUNTS,
        )
        if row is not None:
            self._remember(row, now)
        else:  # another probe decided first; the success still counts (in the totals)
            _add_pending(self.name, permit.version)

    def _count_failure(self, permit: Permit, error: BaseException | None, now: float) -> None:
        snapshot = self.snapshot()
        if snapshot.degraded:
            return
        if permit.state == HALF_OPEN:
            probe = replace(snapshot, state=HALF_OPEN, version=permit.version)
            row = self.storage.transition(
                probe,
                OPEN,
                now=now,
                reason=f"probe failed: {safe_error_text(error, LAST_ERROR_MAX)}",
                opened_at=_dt(now),
                half_open_in_flight=0,
                probe_lease_until=None,
                consecutive_failures=F("consecutive_failures") + 1,
                total_failures=F("total_failures") + 1,
                last_failure_at=_dt(now),
                last_error=safe_error_text(error, LAST_ERROR_MAX),
            )
            if row is not None:
                self._remember(row, now)
                return
            # Another probe decided first: its generation is over; the totals take this failure.
        batch = _take_pending(self.name)
        try:
            row = self.storage.add_failure(
                self.name, permit.version, error, batch, now=now, window=self.policy.window
            )
        except DatabaseError:
            _give_back_pending(self.name, batch)
            raise
        fresh = self._remember(row, now)
        # Only a failure counted in the generation that admitted it can trip the breaker; the
        # transition is conditional on that version too.
        if fresh.state == CLOSED and fresh.version == permit.version:
            reason = self._trip_reason(row, fresh, now)
            if reason:
                opened = self.storage.transition(
                    fresh,
                    OPEN,
                    now=now,
                    reason=reason,
                    opened_at=_dt(now),
                    half_open_in_flight=0,
                    probe_lease_until=None,
                )
                if opened is not None:
                    self._remember(opened, now)
                else:
                    self._refresh(now)

    def _trip_reason(self, row: Any, snapshot: BreakerSnapshot, now: float) -> str:
        """Why a closed breaker must open now, or "" when it need not."""
        threshold = self._threshold(snapshot)
        if row.consecutive_failures >= threshold:
            return f"{row.consecutive_failures} consecutive failures (threshold {threshold})"
        rate_limit = self.policy.failure_rate
        if rate_limit is None:
            return ""
        calls, failures = self.window_estimate(row, now)
        if calls >= self.policy.minimum_calls and calls > 0 and failures / calls >= rate_limit:
            return (
                f"failure rate {failures / calls:.0%} over the last {self.policy.window:g}s "
                f"({failures:.0f} of {calls:.0f} calls; limit {rate_limit:.0%})"
            )
        return ""

    def window_estimate(self, row: Any, now: float) -> tuple[float, float]:
        """Calls and failures over the last ``window`` seconds: the current bucket plus the
        previous one weighted by how much of it the sliding window still covers."""
        window = self.policy.window
        start = math.floor(now / window) * window
        if row.window_start is None:
            return 0.0, 0.0
        row_start = row.window_start.timestamp()
        if row_start >= start:
            current = (row.window_calls, row.window_failures)
            previous = (row.previous_window_calls, row.previous_window_failures)
        elif row_start == start - window:
            current = (0, 0)
            previous = (row.window_calls, row.window_failures)
        else:
            return 0.0, 0.0
        weight = max(0.0, 1.0 - (now - start) / window)
        return (
            current[0] + previous[0] * weight,
            current[1] + previous[1] * weight,
        )


def get_breaker(
    name: str,
    policy: BreakerPolicy | None = None,
    *,
    clock: Clock | None = None,
    probe_lease: float | None = None,
) -> Breaker:
    """The breaker of service ``name``. Its row is created on first use."""
    return Breaker(name, policy, clock=clock, probe_lease=probe_lease)
