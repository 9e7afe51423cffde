"""Circuit breakers whose state lives in the database, shared by every process: the state machine.

As pybreaker separates a breaker's policy from its storage, ``Breaker`` here is the policy: which
state lets a call through, what a success or a failure does, when the state changes. Where the
state lives is ``integrations.storage``: every change is one conditional write there, so two
processes never both take the same transition, never exceed the half-open probe limit and never
lose a failure. The breaker reads state through a short-lived, process-local snapshot and keeps
nothing in memory that correctness depends on.

States and transitions (``S`` = the system, in ``Breaker``; ``P`` = a person, through the
operator actions at the end of this module)::

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
generation's failures and joins ``total_successes`` only. The storage checks the generation in
the same conditional UPDATE that counts the outcome, so the rule holds across processes.

Costs: a healthy call in ``closed`` makes no query while the snapshot is fresh (``CACHE_TTL``)
and no write at all unless failures had been counted; successes are added to the row's totals
in batches: at the first snapshot refresh ``SUCCESS_FLUSH_INTERVAL`` after the last batch (every
``CACHE_TTL`` with a failure-rate rule), by a background timer that long after the first success
of an idle process, and when the process exits. An open breaker fails fast from the snapshot,
without a query.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from asgiref.sync import sync_to_async
from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from tether.audit import log_actions
from tether.fork import after_fork

from .conf import integrations_settings
from .exceptions import BreakerNotFound, CircuitOpenError, InvalidExpiry, safe_error_text
from .models import CircuitBreaker
from .policies import PROBE_LEASE_MARGIN, BreakerPolicy, RetryPolicy, probe_lease_for
from .storage import BreakerSnapshot, DatabaseStorage, SuccessBatch

logger = logging.getLogger("integrations.breaker")

__all__ = [
    "PROBE_LEASE_MARGIN",
    "AsyncBreaker",
    "Breaker",
    "BreakerSnapshot",
    "BreakerState",
    "Clock",
    "ManualClock",
    "OperatorAction",
    "Permit",
    "act_and_log",
    "check_until",
    "clear_local_cache",
    "disable_breaker",
    "flush_successes",
    "force_open_breaker",
    "get_breaker",
    "operator_log_message",
    "probe_lease_for",
    "reset_breaker",
    "set_breaker_overrides",
]

BreakerState = CircuitBreaker.State
CLOSED = BreakerState.CLOSED.value
OPEN = BreakerState.OPEN.value
HALF_OPEN = BreakerState.HALF_OPEN.value
FORCED_OPEN = BreakerState.FORCED_OPEN.value
DISABLED = BreakerState.DISABLED.value
#: States only people set (through the operator actions below).
MANUAL_STATES = (FORCED_OPEN, DISABLED)

#: Without a failure-rate rule, a process adds its batched successes to the row's
#: ``total_successes`` at most this often (seconds). With one, every ``CACHE_TTL``.
SUCCESS_FLUSH_INTERVAL = 30.0
#: A process that goes idle has its batch written by a timer this long after its first pending
#: success, and every process writes what is pending when it exits (``flush_successes``), so
#: that a short-lived one (a command, a script) loses none.

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


# -- what this process keeps: snapshots, and successes not yet written -------------------------

_snapshots: dict[str, BreakerSnapshot] = {}
_pending_lock = threading.Lock()
#: name -> successes seen by this process and not yet added to the row.
_pending_successes: dict[str, SuccessBatch] = {}
#: name -> clock time of this process's last flush of successes.
_last_flush: dict[str, float] = {}
#: name -> the failure-rate window (seconds) of the breaker whose successes are pending.
_pending_windows: dict[str, float] = {}
#: The timer that writes the pending successes of a process that went idle (one at a time).
_flush_timer: threading.Timer | None = None


def clear_local_cache(name: str | None = None) -> None:
    """Forget this process's snapshot of one breaker (or all): the next call reads the row.

    Operator actions call it for the process they run in; other processes see the change when
    their snapshot expires (``CACHE_TTL``). Tests call it between tests."""
    if name is None:
        _snapshots.clear()
        with _pending_lock:
            _pending_successes.clear()
            _pending_windows.clear()
            _last_flush.clear()
            _cancel_timer()
    else:
        _snapshots.pop(name, None)


def _add_pending(name: str, version: int, window: float) -> None:
    """One more success of a call admitted by generation ``version``, for the next batch."""
    global _flush_timer
    with _pending_lock:
        _pending_windows[name] = window
        batch = _pending_successes.get(name)
        if batch is None:
            _pending_successes[name] = SuccessBatch(version, 1)
        else:
            batch.add(version)
        if _flush_timer is None:  # an idle process still writes its batch
            _flush_timer = threading.Timer(SUCCESS_FLUSH_INTERVAL, _flush_from_timer)
            _flush_timer.daemon = True
            _flush_timer.start()


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


_storage = DatabaseStorage()


def flush_successes() -> int:
    """Add every success this process has batched to its breaker's row now; how many were
    written. Runs when the process exits (``atexit``); a batch that cannot be written (the
    database is gone) is logged and dropped, never raised."""
    with _pending_lock:
        names = list(_pending_successes)
    written = 0
    for name in names:
        batch = _take_pending(name)
        if not batch.total:
            continue
        try:
            window = _pending_windows.get(name) or BreakerPolicy.for_service(name).window
            _storage.add_successes(name, batch, now=time.time(), window=window)
        except DatabaseError as exc:
            logger.error(
                "circuit breaker %s: cannot add %d successes to its row (%s)",
                name,
                batch.total,
                type(exc).__name__,
                extra={"breaker": name},
            )
        else:
            written += batch.total
    return written


def _cancel_timer() -> None:
    global _flush_timer
    if _flush_timer is not None:
        _flush_timer.cancel()
        _flush_timer = None


def _flush_from_timer() -> None:
    global _flush_timer
    with _pending_lock:
        _flush_timer = None
    try:
        flush_successes()
    except Exception:
        logger.exception("circuit breaker: flushing successes from the idle timer failed")
    finally:
        connections.close_all()  # this thread's own connections


def _flush_at_exit() -> None:
    _cancel_timer()
    try:
        flush_successes()
    except Exception:  # at exit: settings or the database may already be unusable
        logger.exception("circuit breaker: flushing successes at exit failed")


def _forget_pending_after_fork() -> None:
    """A forked child starts with no batch of its own: its parent writes what it had counted
    (a copy would count every one of them twice); the lock may have been held by a thread of
    the parent that does not exist in the child."""
    global _pending_lock, _flush_timer
    _pending_lock = threading.Lock()
    _flush_timer = None  # the parent's thread: not in this process
    _pending_successes.clear()
    _pending_windows.clear()
    _last_flush.clear()


atexit.register(_flush_at_exit)
after_fork(_forget_pending_after_fork)


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
            stored = self.storage.load(self.name)
        except DatabaseError as exc:
            self._log_db_error("cannot read its state from the database", exc)
            snapshot = BreakerSnapshot(
                pk=None, state=CLOSED, version=-1, expires_at=now + ttl, degraded=True
            )
            _snapshots[self.name] = snapshot
            return snapshot
        return self._remember(stored, now)

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

    def _remember(self, stored: BreakerSnapshot, now: float) -> BreakerSnapshot:
        """Cache ``stored``, as the storage just gave it, for ``CACHE_TTL``."""
        snapshot = replace(stored, expires_at=now + self.policy.cache_ttl)
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

    def policy_in_force(self, snapshot: BreakerSnapshot) -> BreakerPolicy:
        """The policy this breaker applies to ``snapshot``'s row: the settings', with the row's
        overrides in place (what the admin shows)."""
        return replace(
            self.policy,
            failure_threshold=self._threshold(snapshot),
            reset_timeout=self._reset_timeout(snapshot),
            half_open_max_calls=self._max_probes(snapshot),
        )

    def next_probe_at(self, snapshot: BreakerSnapshot) -> float | None:
        """When ``snapshot``'s breaker lets a call through again (epoch seconds): an open one
        once its reset timeout has passed (the first call then probes), a forced-open or
        disabled one when its ``forced_until`` passes (None: never by itself). None for the
        other states, which need no probe to be granted."""
        if snapshot.state == OPEN:
            return (snapshot.opened_at or self.clock()) + self._reset_timeout(snapshot)
        if snapshot.state in MANUAL_STATES:
            return snapshot.forced_until
        return None

    def probe_lease(self) -> float:
        if self._probe_lease is not None:
            return self._probe_lease
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
            permit = self._acquire_slow(snapshot, operation, now)
            assert permit is not None  # only an offline decision stops short
            return permit
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

    def acquire_cached(self, operation: str) -> Permit | None:
        """``acquire`` decided from this process's fresh snapshot alone, without any I/O: a
        permit, ``CircuitOpenError``, or None when the decision needs the database (no snapshot
        or an expired one, a probe to take, a hold that ended). ``AsyncBreaker`` calls it on the
        event loop and goes to the database, off the loop, only on None."""
        now = self.clock()
        snapshot = _snapshots.get(self.name)
        if snapshot is None or snapshot.expires_at <= now:
            return None
        if snapshot.state == CLOSED and not snapshot.degraded:
            return Permit(self.name, operation, CLOSED, snapshot.version)
        return self._acquire_slow(snapshot, operation, now, offline=True)

    def _acquire_slow(
        self, snapshot: BreakerSnapshot, operation: str, now: float, *, offline: bool = False
    ) -> Permit | None:
        """The state machine's answer to a call. ``offline``: stop (None) where the answer needs
        a write, instead of writing."""
        for _attempt in range(3):  # another process may move the row between our read and our write
            if snapshot.degraded:
                return self._acquire_degraded(operation)
            state = snapshot.state
            if state == CLOSED:
                return Permit(self.name, operation, CLOSED, snapshot.version)
            if state in MANUAL_STATES:
                if snapshot.forced_until is not None and now >= snapshot.forced_until:
                    if offline:
                        return None
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
                if offline:
                    return None
                moved = self.storage.transition(
                    snapshot,
                    HALF_OPEN,
                    now=now,
                    reason="reset timeout elapsed: probing",
                    probe_lease_until=now + self.probe_lease(),
                )
                if moved is not None:
                    self._remember(moved, now)
                    return Permit(self.name, operation, HALF_OPEN, moved.version)
                snapshot = self._refresh(now)
                continue
            if state == HALF_OPEN:
                if offline:
                    return None
                moved = self.storage.take_probe(
                    snapshot,
                    now=now,
                    max_calls=self._max_probes(snapshot),
                    lease=self.probe_lease(),
                )
                if moved is not None:
                    self._remember(moved, now)
                    return Permit(self.name, operation, HALF_OPEN, moved.version)
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
        moved = self.storage.transition(
            snapshot, CLOSED, now=now, reason=f"{snapshot.state} expired", if_hold_ended=True
        )
        return self._remember(moved, now) if moved is not None else self._refresh(now)

    # -- outcomes -----------------------------------------------------------------------------

    def record_success(self, permit: Permit) -> None:
        """The attempt succeeded (or failed in a way that is not the vendor's fault)."""
        write = self.success_write(permit)
        if write is not None:
            self._guarded(*write)

    def success_write(self, permit: Permit) -> tuple[Any, ...] | None:
        """What recording ``permit``'s success must write, as (function, arguments...) for
        ``_guarded``; or None when it needs no write (it was counted in memory, here, without
        I/O). ``record_success`` runs the write at once, ``AsyncBreaker`` off the event loop."""
        if permit.degraded:
            return None
        if permit.state == HALF_OPEN:
            return (self._close_after_probe, permit, self.clock())
        snapshot = _snapshots.get(self.name)
        if (
            snapshot is not None
            and snapshot.state == CLOSED
            and snapshot.consecutive_failures
            and permit.state == CLOSED
            and permit.version == snapshot.version  # else a late success: no reset to write
        ):
            return (self._reset_failures, permit, snapshot, self.clock())
        # The hot path: nothing written; the success joins this process's next batch, which
        # is written when it is due (``_flush_successes``), by the idle timer, or at exit.
        _add_pending(self.name, permit.version, self.policy.window)
        return None

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
            self._guarded(self.storage.release_probe, self.name, permit.version)

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
        written = False
        try:
            written = self.storage.reset_failures(
                snapshot, permit.version, batch, now=now, window=self.policy.window
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
        moved = self.storage.transition(
            probe, CLOSED, now=now, reason="probe succeeded", success=True
        )
        if moved is not None:
            self._remember(moved, now)
        else:  # another probe decided first; the success still counts (in the totals)
            _add_pending(self.name, permit.version, self.policy.window)

    def _count_failure(self, permit: Permit, error: BaseException | None, now: float) -> None:
        snapshot = self.snapshot()
        if snapshot.degraded:
            return
        text = safe_error_text(error)
        if permit.state == HALF_OPEN:
            probe = replace(snapshot, state=HALF_OPEN, version=permit.version)
            moved = self.storage.transition(
                probe, OPEN, now=now, reason=f"probe failed: {text}", failure=text
            )
            if moved is not None:
                self._remember(moved, now)
                return
            # Another probe decided first: its generation is over; the totals take this failure.
        batch = _take_pending(self.name)
        try:
            counted = self.storage.add_failure(
                self.name, permit.version, text, batch, now=now, window=self.policy.window
            )
        except DatabaseError:
            _give_back_pending(self.name, batch)
            raise
        fresh = self._remember(counted, now)
        # Only a failure counted in the generation that admitted it can trip the breaker; the
        # transition is conditional on that version too.
        if fresh.state == CLOSED and fresh.version == permit.version:
            reason = self._trip_reason(fresh, now)
            if reason:
                opened = self.storage.transition(fresh, OPEN, now=now, reason=reason)
                if opened is not None:
                    self._remember(opened, now)
                else:
                    self._refresh(now)

    def _trip_reason(self, snapshot: BreakerSnapshot, now: float) -> str:
        """Why a closed breaker must open now, or "" when it need not."""
        threshold = self._threshold(snapshot)
        failures_in_a_row = snapshot.consecutive_failures
        if failures_in_a_row >= threshold:
            return f"{failures_in_a_row} consecutive failures (threshold {threshold})"
        rate_limit = self.policy.failure_rate
        if rate_limit is None:
            return ""
        calls, failures = self.window_estimate(snapshot, now)
        if calls >= self.policy.minimum_calls and calls > 0 and failures / calls >= rate_limit:
            return (
                f"failure rate {failures / calls:.0%} over the last {self.policy.window:g}s "
                f"({failures:.0f} of {calls:.0f} calls; limit {rate_limit:.0%})"
            )
        return ""

    def window_estimate(self, snapshot: BreakerSnapshot, now: float) -> tuple[float, float]:
        """Calls and failures over the last ``window`` seconds: the current bucket plus the
        previous one weighted by how much of it the sliding window still covers."""
        window = self.policy.window
        start = math.floor(now / window) * window
        row_start = snapshot.window_start
        if row_start is None:
            return 0.0, 0.0
        if row_start >= start:
            current = (snapshot.window_calls, snapshot.window_failures)
            previous = (snapshot.previous_window_calls, snapshot.previous_window_failures)
        elif row_start == start - window:
            current = (0, 0)
            previous = (snapshot.window_calls, snapshot.window_failures)
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


class AsyncBreaker:
    """``breaker`` for a call on an event loop (``AsyncServiceClient``): the same state machine,
    the same decisions (``Breaker.acquire_cached``, ``Breaker.success_write``), and the
    database reached only off the loop, through ``sync_to_async`` (Django's ORM has no async
    form of the conditional writes the storage makes). The hot paths, a closed breaker with a
    fresh snapshot and an open one failing fast, never leave the loop."""

    __slots__ = ("breaker",)

    def __init__(self, breaker: Breaker) -> None:
        self.breaker = breaker

    def __repr__(self) -> str:
        return f"<AsyncBreaker {self.breaker.name}>"

    @property
    def cached_state(self) -> str:
        return self.breaker.cached_state

    async def acquire(self, operation: str) -> Permit:
        permit = self.breaker.acquire_cached(operation)
        if permit is not None:
            return permit
        asking = asyncio.ensure_future(sync_to_async(self.breaker.acquire)(operation))
        try:
            return await asyncio.shield(asking)
        except asyncio.CancelledError:
            # Cancelled while the database decided: a permit it granted (a probe's slot) is
            # given back rather than held until its lease ends.
            with contextlib.suppress(Exception):
                await self.release(await asking)
            raise

    async def record_success(self, permit: Permit) -> None:
        write = self.breaker.success_write(permit)
        if write is not None:
            await sync_to_async(self.breaker._guarded)(*write)

    async def record_failure(self, permit: Permit, error: BaseException | None = None) -> None:
        if not permit.degraded:
            await sync_to_async(self.breaker.record_failure)(permit, error)

    async def release(self, permit: Permit) -> None:
        """Give back the permit of an attempt that did not end (its task was cancelled): a
        half-open probe's slot is free at once."""
        if permit.state == HALF_OPEN and not permit.degraded:
            await sync_to_async(self.breaker.release)(permit)


# -- operator actions ---------------------------------------------------------------------------
#
# The admin, the ``circuit_breakers`` command, the operator API and ``integrations.testing`` call
# these. Each is a transition through the storage's one transition path, recorded as a
# ``BreakerTransition`` with who did it (``actor``), why, and the counts at the time. The process
# that runs the action forgets its snapshot at once; every other process sees the change when its
# snapshot expires, within ``CACHE_TTL``.


#: The longest a person may hold a breaker forced open or disabled with an ``until``: a hold
#: meant to last longer is one without an end (reset by hand), not a typo's year 2206.
MAX_HOLD = timedelta(days=366)


def check_until(until: datetime | None, now: datetime | None = None) -> None:
    """The rule for an operator's ``until``, on every surface (admin, command, API): aware, in
    the future, and at most ``MAX_HOLD`` away. Raises ``InvalidExpiry`` saying which."""
    if until is None:
        return
    now = now or timezone.now()
    if timezone.is_naive(until):
        raise InvalidExpiry("until must be timezone-aware")
    if until <= now:
        raise InvalidExpiry(f"until ({until.isoformat()}) is not in the future")
    if until - now > MAX_HOLD:
        raise InvalidExpiry(
            f"until ({until.isoformat()}) is more than {MAX_HOLD.days} days away; "
            "hold it without an end instead, and reset it by hand"
        )


class OperatorAction(Protocol):
    """What the surfaces call an operator action with (``reset_breaker``,
    ``force_open_breaker``, ``disable_breaker``): the breaker's name, who acts and why; the
    holds also take ``until``. Returns the row as it is now."""

    def __call__(self, name: str, /, *, actor: str, reason: str) -> CircuitBreaker: ...


def reset_breaker(
    name: str, *, actor: str, reason: str = "", create: bool = False
) -> CircuitBreaker:
    """Close the breaker whatever its state (ending a forced state), with its failure counts
    at zero. Totals are kept."""
    return _set_state(name, CLOSED, actor=actor, reason=reason or "reset", create=create)


def force_open_breaker(
    name: str,
    *,
    actor: str,
    reason: str,
    until: datetime | None = None,
    create: bool = False,
) -> CircuitBreaker:
    """Hold the breaker open: every call fails fast with ``CircuitOpenError`` (``retry_after``
    is the time left until ``until``, or None) until a person resets it or ``until`` passes."""
    return _set_state(name, FORCED_OPEN, actor=actor, reason=reason, until=until, create=create)


def disable_breaker(
    name: str,
    *,
    actor: str,
    reason: str,
    until: datetime | None = None,
    create: bool = False,
) -> CircuitBreaker:
    """Let every call through whatever fails (outcomes are still counted) until a person
    resets it or ``until`` passes; then the breaker is closed again."""
    return _set_state(name, DISABLED, actor=actor, reason=reason, until=until, create=create)


#: How the History (``LogEntry``) names each operator action, by the state it leads to.
ACTION_NAMES = {CLOSED: "Reset", FORCED_OPEN: "Force opened", DISABLED: "Disabled"}


def operator_log_message(
    row: CircuitBreaker, *, from_state: str, via: str, reason: str = ""
) -> str:
    """The History's change message of an operator action that left ``row`` as it is, on every
    surface: ``"<Reset|Force opened|Disabled> via <via>[: <reason>] (<from> -> <to>[, until
    <UTC ISO 8601>])"``, e.g. ``"Force opened via command circuit_breakers: vendor maintenance
    (closed -> forced_open, until 2026-12-05T06:00:00+00:00)"``."""
    until = ""
    if row.forced_until is not None:
        until = f", until {row.forced_until.astimezone(UTC).isoformat(timespec='seconds')}"
    head = f"{ACTION_NAMES.get(row.state, row.state)} via {via}"
    if reason:
        head += f": {reason}"
    return f"{head} ({from_state} -> {row.state}{until})"


def act_and_log(
    action: OperatorAction,
    name: str,
    /,
    *,
    user: Any,
    via: str,
    actor: str,
    reason: str,
    **kwargs: Any,
) -> CircuitBreaker:
    """Run one operator action (``reset_breaker``, ``force_open_breaker``,
    ``disable_breaker``; ``kwargs`` such as ``until`` passed on) and write its ``LogEntry`` on
    the breaker's row by ``user`` (the system user if None; ``tether.audit.log_actions``), in
    the transaction of its transition: both are written, or neither (``BreakerNotFound``,
    ``InvalidExpiry``). ``via`` names the surface (``"admin"``, ``"command circuit_breakers"``,
    ``"operator API"``); ``actor`` is the transition's. Returns the row as it is now."""
    with transaction.atomic():
        row = action(name, actor=actor, reason=reason, **kwargs)
        # The transition just written (the row stays locked until this transaction ends).
        from_state = row.transitions.order_by("-id").values_list("from_state", flat=True)[0]
        message = operator_log_message(row, from_state=from_state, via=via, reason=reason)
        log_actions([row], user=user, message=message)
    return row


def set_breaker_overrides(name: str, overrides: Mapping[str, int | float | None]) -> None:
    """Set a person's policy overrides of one breaker (``failure_threshold``,
    ``reset_timeout``, ``half_open_max_calls``; None: from the settings), nothing else."""
    _storage.set_overrides(name, overrides, now=time.time())
    clear_local_cache(name)


def _set_state(
    name: str,
    to_state: str,
    *,
    actor: str,
    reason: str,
    until: datetime | None = None,
    create: bool,
) -> CircuitBreaker:
    """Move the breaker to ``to_state`` from whatever state it is in; the row, as it is now.

    A breaker is created on its service's first call; one of a service configured in
    ``INTEGRATIONS["SERVICES"]`` can be acted on before that (e.g. opened ahead of a vendor's
    maintenance), from every surface alike. Any other unknown name is ``BreakerNotFound``
    unless ``create``. ``until`` follows ``check_until`` (``InvalidExpiry``)."""
    now = timezone.now()
    check_until(until, now)
    row = _storage.set_state(
        name,
        to_state,
        now=now.timestamp(),
        reason=reason,
        actor=actor,
        forced_until=until,
        create=create or name in integrations_settings["SERVICES"],
    )
    if row is None:
        raise BreakerNotFound(name)
    clear_local_cache(name)
    return row
