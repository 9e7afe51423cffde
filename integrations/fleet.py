"""Policies that hold for the whole fleet of processes calling a service: the shared rate limit,
the shared cool-down after a 429, and the bulkhead.

``CallPolicy`` builds one ``FleetGuard`` per call from the service's settings; the runner
(``integrations.resilience``) calls ``enter`` before each attempt, before the circuit breaker is
asked (a call refused here never takes a half-open probe's place), and ``leave`` after it. The
state lives in Redis (``integrations.shared_state``, one round trip per attempt); the decisions,
the waits and the errors are here.

- **Rate limit** (``RATE_LIMIT``): a GCRA across every process. A call over the limit is given
  the next free slot and waits for it (the computed time, no polling) when the slot comes before
  its deadline; else it raises ``RateLimited`` (retryable, ``retry_after`` = when the slot is),
  and nothing is reserved for it.
- **Cool-down** (``SHARED_COOLDOWN``): when the vendor answers 429, or 503 with
  ``Retry-After``, every process stops calling the service until the time it gives (1 s for a
  429 without one; at most ``MAX_RETRY_AFTER``). A call meeting a cool-down waits for its end
  when that fits its deadline, else raises ``RateLimited``. Checked in the rate limit's round
  trip.
- **Bulkhead** (``MAX_CONCURRENCY`` per process, ``CLUSTER_MAX_CONCURRENCY`` across the
  fleet): at most that many calls of the service in flight. A call waits for a place within its
  deadline, else raises ``BulkheadFull``. The process's places are a semaphore (no Redis); the
  fleet's are leases in a Redis sorted set, each ending ``BULKHEAD_LEASE_MARGIN`` seconds after
  the attempt's deadline (which bounds the attempt), so that a killed process's places come back
  by then. A call waiting for a fleet place asks again every ``BULKHEAD_POLL`` seconds at most
  (or when the first lease ends, if sooner). The fleet place is taken in the same script as the
  rate-limit slot (a slot is never wasted waiting for a place, nor a place held during a
  cool-down), and given back as soon as the attempt ends, without a round trip of its own: with
  this process's next admission for the service, or by a background thread at most about
  ``shared_state.GIVE_BACK_LOOK_MAX`` (20 ms) later.
- **One round trip**: a healthy call with every policy on asks Redis once
  (``shared_state.Admitter``); a retry asks the budget once more.
- **Redis unreachable**: the shared policies fail open. The call goes out as if they were off,
  a warning is logged at most once a minute per process and service, the
  ``shared_state_unavailable`` signal counts it (``tether_integration_shared_state_errors_total``)
  and this process does not ask Redis again for ``REDIS_RETRY_INTERVAL`` seconds, so that a Redis
  that answers nothing costs one call ``REDIS_TIMEOUT`` at most, not every call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from tether.fork import after_fork

from . import shared_state
from .exceptions import (
    BulkheadFull,
    CircuitOpenError,
    IntegrationUnavailable,
    RateLimited,
    RateLimitedError,
)
from .signals import cooldown_started, shared_state_unavailable

if TYPE_CHECKING:
    from .policies import RateLimit, RetryBudget
    from .resilience import BackoffClock

__all__ = [
    "BULKHEAD_LEASE_MARGIN",
    "BULKHEAD_POLL",
    "DEFAULT_COOLDOWN",
    "REDIS_RETRY_INTERVAL",
    "WARNING_INTERVAL",
    "FleetGuard",
    "Ticket",
    "forget_unavailable",
    "in_flight",
]

logger = logging.getLogger("integrations.fleet")

#: Seconds of cool-down after a 429 that gives no ``Retry-After``.
DEFAULT_COOLDOWN = 1.0
#: Seconds this process leaves Redis alone after it could not be asked.
REDIS_RETRY_INTERVAL = 1.0
#: Seconds between two warnings, per process and service, that Redis cannot be asked.
WARNING_INTERVAL = 60.0
#: Seconds a fleet bulkhead lease outlasts the deadline of the attempt that holds it.
BULKHEAD_LEASE_MARGIN = 2.0
#: The longest a call waiting for a fleet bulkhead place sleeps before asking again (seconds).
BULKHEAD_POLL = 0.02

#: (service, size) -> this process's bulkhead semaphore.
_semaphores: dict[tuple[str, int], threading.BoundedSemaphore] = {}

_state_lock = threading.Lock()
#: ``time.monotonic()`` until which this process does not ask Redis (after an error).
_redis_down_until = 0.0
#: service -> ``time.monotonic()`` of this process's last warning about Redis.
_last_warning: dict[str, float] = {}


def _forget_after_fork() -> None:
    global _state_lock
    _semaphores.clear()  # a child's threads hold none of its parent's places
    _state_lock = threading.Lock()


after_fork(_forget_after_fork)


def _semaphore(service: str, size: int) -> threading.BoundedSemaphore:
    semaphore = _semaphores.get((service, size))
    if semaphore is None:
        with _state_lock:
            semaphore = _semaphores.setdefault((service, size), threading.BoundedSemaphore(size))
    return semaphore


def in_flight(service: str, size: int) -> int:
    """How many of this process's ``size`` bulkhead places for ``service`` are taken."""
    semaphore = _semaphores.get((service, size))
    return 0 if semaphore is None else size - semaphore._value


def forget_unavailable() -> None:
    """Ask Redis again on the next call, and warn again (tests, and after Redis came back)."""
    global _redis_down_until
    with _state_lock:
        _redis_down_until = 0.0
        _last_warning.clear()


def _redis_skipped() -> bool:
    return time.monotonic() < _redis_down_until


def _unavailable(service: str, operation: str, error: shared_state.SharedStateUnavailable) -> None:
    """Redis could not be asked: fail open, and say so (once a minute in the log)."""
    global _redis_down_until
    now = time.monotonic()
    with _state_lock:
        _redis_down_until = now + REDIS_RETRY_INTERVAL
        last = _last_warning.get(service)
        warn = last is None or now - last >= WARNING_INTERVAL
        if warn:
            _last_warning[service] = now
    if warn:
        logger.warning(
            "%s: the shared policies' Redis cannot be asked (%s); calls go out without the "
            "shared rate limit, cool-down and fleet bulkhead (failing open) until it answers again",
            service,
            error,
            extra={"service": service, "operation": operation, "error_class": str(error)},
        )
    shared_state_unavailable.send(sender=service, service=service, error_class=str(error))


class Ticket:
    """The places one attempt holds in its service's bulkheads, handed back to ``leave``."""

    __slots__ = ("process", "token")

    def __init__(self) -> None:
        self.process: threading.BoundedSemaphore | None = None
        self.token: str | None = None


_token_prefix = f"{os.getpid()}-"
_token_numbers = itertools.count()


def _new_token() -> str:
    """A bulkhead place's token, unique in the fleet: this process's id and a number."""
    return f"{_token_prefix}{next(_token_numbers)}"


def _new_tokens_after_fork() -> None:
    global _token_prefix
    _token_prefix = f"{os.getpid()}-"


after_fork(_new_tokens_after_fork)


# -- the policies' I/O, as steps (one definition of each policy for both kinds of caller) -------

T = TypeVar("T")

#: What a step asks for: a place in this process's bulkhead (a semaphore, within a timeout), an
#: admission (``shared_state.Admitter``: the fleet place, the cool-down, the budget and the rate
#: limit in one round trip), a cool-down started, a wait. A fleet place is given back without a
#: step (``shared_state.give_back_later``: with the next admission, or by the flusher thread,
#: whichever kind of caller gave it back).
PLACE, ADMIT, COOLDOWN, SLEEP = range(4)


_NO_KWARGS: Mapping[str, Any] = MappingProxyType({})


class Step(NamedTuple):
    """One piece of I/O a policy needs; the answer is sent back into the policy's generator
    (an error raised doing it is thrown into it). A tuple: made on every attempt."""

    kind: int
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = _NO_KWARGS


#: A policy written as a generator of the ``Step``s it needs, returning its decision.
Steps = Generator[Step, Any, T]


def _perform(steps: Steps[T], clock: BackoffClock | None) -> T:
    """Run a policy's steps with blocking I/O (redis-py, ``clock.sleep``)."""
    answer: Any = None
    failure: BaseException | None = None
    while True:
        try:
            step = steps.send(answer) if failure is None else steps.throw(failure)
        except StopIteration as done:
            return cast(T, done.value)
        failure = None
        try:
            kind, args, kwargs = step
            if kind == SLEEP:
                assert clock is not None
                clock.sleep(*args)
                answer = None
            elif kind == ADMIT:
                (admitter,) = args
                answer = admitter(**kwargs)
            elif kind == COOLDOWN:
                answer = shared_state.start_cooldown(*args)
            else:
                semaphore, timeout = args
                answer = semaphore.acquire(timeout=timeout)
        except BaseException as exc:  # the policy's own ``except`` and cleanup decide
            answer, failure = None, exc


async def _perform_async(steps: Steps[T], clock: BackoffClock | None) -> T:
    """Run a policy's steps on an event loop (redis.asyncio, ``clock.sleep_async``); a place in
    this process's bulkhead (shared with threads) is polled every ``BULKHEAD_POLL`` seconds."""
    answer: Any = None
    failure: BaseException | None = None
    while True:
        try:
            step = steps.send(answer) if failure is None else steps.throw(failure)
        except StopIteration as done:
            return cast(T, done.value)
        failure = None
        try:
            kind, args, kwargs = step
            if kind == ADMIT:
                (admitter,) = args
                answer = await admitter.call_async(**kwargs)
            elif kind == COOLDOWN:
                answer = await shared_state.start_cooldown_async(*args)
            elif kind == SLEEP:
                assert clock is not None
                await clock.sleep_async(*args)
                answer = None
            else:
                answer = await _acquire_polling(*args)
        except BaseException as exc:
            answer, failure = None, exc


async def _acquire_polling(semaphore: threading.BoundedSemaphore, timeout: float) -> bool:
    """A place in ``semaphore`` within ``timeout`` seconds, without blocking the loop."""
    give_up = time.monotonic() + timeout
    while not semaphore.acquire(blocking=False):
        left = give_up - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(BULKHEAD_POLL, left))
    return True


@dataclass(frozen=True, slots=True)
class FleetGuard:
    """The shared policies of one service, as resolved for one call."""

    service: str
    rate_limit: RateLimit | None
    shared_cooldown: bool
    max_concurrency: int | None = None
    cluster_max_concurrency: int | None = None
    retry_budget: RetryBudget | None = None
    #: The service's admission, encoded once (None: no policy kept in Redis).
    admitter: shared_state.Admitter | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        limit = self.rate_limit
        if (
            limit is not None
            or self.shared_cooldown
            or self.retry_budget is not None
            or self.cluster_max_concurrency is not None
        ):
            object.__setattr__(
                self,
                "admitter",
                shared_state.Admitter(
                    self.service,
                    interval=limit.interval if limit else None,
                    burst=limit.burst if limit else 1,
                    cooldown=self.shared_cooldown,
                    budget=self._budget_args(),
                    bulkhead=self.cluster_max_concurrency,
                ),
            )

    @property
    def active(self) -> bool:
        return self.admitter is not None or self.max_concurrency is not None

    # Each policy below is written once, as a generator of ``Step``s (the I/O it needs: a Redis
    # script, a wait, a place in this process's semaphore); ``enter``/``leave``/``allow_retry``
    # perform the steps with redis-py and the clock's ``sleep``, their ``*_async`` twins with
    # redis.asyncio and ``sleep_async`` (``AsyncServiceClient``).

    def enter(
        self, operation: str, remaining: float, clock: BackoffClock, number: int = 1
    ) -> Ticket:
        """Before attempt ``number`` with ``remaining`` seconds to its deadline: take its
        process bulkhead place, then, in one round trip to Redis, its fleet bulkhead place and
        its rate-limit slot (after any cool-down), counting a first attempt in the retry budget;
        wait for the slot within the deadline; or raise ``BulkheadFull`` / ``RateLimited``
        (holding nothing)."""
        return _perform(self._enter(operation, remaining, clock, number), clock)

    async def enter_async(
        self, operation: str, remaining: float, clock: BackoffClock, number: int = 1
    ) -> Ticket:
        """``enter`` on an event loop."""
        return await _perform_async(self._enter(operation, remaining, clock, number), clock)

    def _enter(
        self, operation: str, remaining: float, clock: BackoffClock, number: int
    ) -> Steps[Ticket]:
        ticket = Ticket()
        try:
            if self.max_concurrency is not None:
                yield from self._take_process_place(ticket, operation, remaining)
            if self.admitter is not None and not _redis_skipped():
                yield from self._admit(
                    ticket, operation, clock.monotonic() + remaining, clock, number == 1
                )
        except BaseException:
            self._give_back(ticket)
            raise
        return ticket

    def _take_process_place(self, ticket: Ticket, operation: str, remaining: float) -> Steps[None]:
        size = self.max_concurrency
        assert size is not None
        semaphore = _semaphore(self.service, size)
        # Waiting is real time, whatever the clock: another thread (or task) gives it back.
        if not (yield Step(PLACE, (semaphore, max(0.0, remaining)))):
            raise BulkheadFull(
                self.service,
                operation,
                f"{size} call(s) already in flight in this process (MAX_CONCURRENCY) until the "
                "call's deadline",
            )
        ticket.process = semaphore

    def _admit(
        self, ticket: Ticket, operation: str, deadline_at: float, clock: BackoffClock, first: bool
    ) -> Steps[None]:
        admitter = self.admitter
        assert admitter is not None
        # A retry was counted when the budget allowed it (``allow_retry``).
        attempt = shared_state.FIRST_ATTEMPT if first and self.retry_budget else 0
        token = _new_token() if self.cluster_max_concurrency is not None else ""
        cooldowns = 0
        while True:
            left = deadline_at - clock.monotonic()
            try:
                code, wait = yield Step(
                    ADMIT,
                    (admitter,),
                    {
                        "max_wait": left,
                        "attempt": attempt,
                        "lease": (left if left > 0 else 0.0) + BULKHEAD_LEASE_MARGIN,
                        "token": token,
                    },
                )
            except shared_state.SharedStateUnavailable as error:
                _unavailable(self.service, operation, error)
                return
            if code == shared_state.ADMITTED:
                if token:
                    ticket.token = token
                yield Step(SLEEP, (wait,))
                return
            if code == shared_state.BULKHEAD_FULL:
                if left <= 0:
                    raise BulkheadFull(
                        self.service,
                        operation,
                        f"{self.cluster_max_concurrency} call(s) already in flight across the "
                        "fleet (CLUSTER_MAX_CONCURRENCY) until the call's deadline",
                    )
                # A place is freed by an event no one can predict: ask again soon.
                yield Step(SLEEP, (max(0.001, min(wait, BULKHEAD_POLL, left)),))
                continue
            # A cool-down waited for, then the slot; a new cool-down meanwhile.
            if code == shared_state.COOLING_DOWN and wait < left and cooldowns < 2:
                cooldowns += 1
                yield Step(SLEEP, (wait,))
                continue
            if code == shared_state.COOLING_DOWN and wait < left:
                raise RateLimited(
                    self.service,
                    operation,
                    "the vendor's cool-down keeps being renewed",
                    retry_after=1.0,
                )
            raise self._refused(operation, shared_state.Admission(code, wait))

    def _give_back(self, ticket: Ticket) -> None:
        """Give the attempt's places back; no I/O (so no step), for either kind of caller."""
        if ticket.process is not None:
            ticket.process.release()
            ticket.process = None
        token, ticket.token = ticket.token, None
        if token is not None:  # sent with the next admission, or within milliseconds
            shared_state.give_back_later(self.service, token)

    def _budget_args(self) -> tuple[float, float, float] | None:
        budget = self.retry_budget
        if budget is None:
            return None
        return (budget.window, budget.ratio, budget.min_retries)

    def allow_retry(self, operation: str) -> bool:
        """Whether the service's retry budget allows one more retry now (counting it when it
        does). True without a budget, or when Redis cannot be asked (failing open)."""
        return _perform(self._allow_retry(operation), None)

    async def allow_retry_async(self, operation: str) -> bool:
        """``allow_retry`` on an event loop."""
        return await _perform_async(self._allow_retry(operation), None)

    def _allow_retry(self, operation: str) -> Steps[bool]:
        budget = self._budget_args()
        if budget is None or _redis_skipped():
            return True
        try:
            code, _ = yield Step(
                ADMIT,
                (
                    shared_state.Admitter(
                        self.service,
                        interval=None,
                        burst=1,
                        cooldown=False,
                        budget=budget,
                        bulkhead=None,
                    ),
                ),
                {"max_wait": 0.0, "attempt": shared_state.RETRY},
            )
        except shared_state.SharedStateUnavailable as error:
            _unavailable(self.service, operation, error)
            return True
        if code == shared_state.BUDGET_SPENT:
            logger.info(
                "%s.%s: the retry budget (%s) is spent; the failure is raised without retrying",
                self.service,
                operation,
                self.retry_budget,
                extra={"service": self.service, "operation": operation},
            )
            return False
        return True

    def _refused(self, operation: str, admission: shared_state.Admission) -> RateLimited:
        if admission.code == shared_state.COOLING_DOWN:
            reason = f"the vendor asked every caller to wait {admission.wait:.2f}s more (cool-down)"
        else:
            reason = (
                f"the shared rate limit ({self.rate_limit}) has no slot for "
                f"{admission.wait:.2f}s, past the call's deadline"
            )
        return RateLimited(self.service, operation, reason, retry_after=admission.wait)

    def leave(self, operation: str, ticket: Ticket, error: BaseException | None) -> None:
        """After an attempt (or when it was not made): give its places back; a 429, or a 503
        with ``Retry-After``, starts the fleet's cool-down."""
        _perform(self._leave(operation, ticket, error), None)

    async def leave_async(
        self, operation: str, ticket: Ticket, error: BaseException | None
    ) -> None:
        """``leave`` on an event loop."""
        await _perform_async(self._leave(operation, ticket, error), None)

    def _leave(self, operation: str, ticket: Ticket, error: BaseException | None) -> Steps[None]:
        self._give_back(ticket)
        if (
            error is None
            or not self.shared_cooldown
            or isinstance(error, RateLimited | CircuitOpenError)
        ):
            return
        seconds: float | None = None
        if isinstance(error, RateLimitedError):
            seconds = error.retry_after if error.retry_after is not None else DEFAULT_COOLDOWN
            reason = "429"
        elif isinstance(error, IntegrationUnavailable) and error.retry_after is not None:
            seconds = error.retry_after
            reason = str(error.status_code or 503)
        if not seconds or _redis_skipped():
            return
        try:
            started = yield Step(
                COOLDOWN, (self.service, seconds, f"{reason} from {self.service}.{operation}")
            )
        except shared_state.SharedStateUnavailable as exc:
            _unavailable(self.service, operation, exc)
            return
        if started:
            cooldown_started.send(
                sender=self.service,
                service=self.service,
                operation=operation,
                seconds=seconds,
                status=reason,
            )
            logger.warning(
                "%s: the vendor answered %s; every process holds its calls for %.2fs (cool-down)",
                self.service,
                reason,
                seconds,
                extra={"service": self.service, "operation": operation, "cooldown": seconds},
            )
