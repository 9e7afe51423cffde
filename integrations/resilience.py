"""The one retry runner of the project: every outbound call goes through ``call_with_resilience``.

``ServiceClient`` and ``StripeService`` both hand their service's ``CallPolicy``
(``integrations.calls``) an ``attempt`` callable that makes ONE try and either returns or raises
an ``IntegrationError`` already mapped from the transport's exception; the policy runs it here.
The runner, built from tenacity's composable stop/wait/retry objects, then:

- checks each attempt against the circuit breaker (``acquire``) and counts its outcome
  (``record_success`` / ``record_failure`` as ``error.breaker_failure`` says);
- retries only when ``error.retryable`` (timeouts, connection errors, 5xx, 408, 429), waiting with
  exponential backoff and full jitter capped at ``max_delay``, or as long as the vendor's
  ``Retry-After`` asks;
- bounds attempts plus waits by ``retry.deadline`` and passes what is left to each attempt
  (``AttemptInfo.remaining``) so that it can shorten its own timeouts; a wait that would end past
  the deadline is not started: the last error is raised at once (a ``RateLimitedError`` keeps its
  ``retry_after`` so a Celery task can retry later);
- sets ``error.attempts``, logs one line per call with ``logging`` extras and sends the
  ``call_retried`` / ``call_finished`` signals.

Time is read and waited through a ``BackoffClock``; ``integrations.testing.instant_backoff()``
installs one whose waits return at once (and are recorded) while its clock still moves on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from .exceptions import (
    CircuitOpenError,
    IntegrationError,
    RateLimitedError,
    SlowCall,
    Throttled,
    safe_error_text,
)
from .signals import call_finished, call_retried, retry_budget_spent

if TYPE_CHECKING:
    from .policies import RetryPolicy

__all__ = [
    "AsyncBreakerLike",
    "AsyncGuardLike",
    "AttemptInfo",
    "BackoffClock",
    "BreakerLike",
    "GuardLike",
    "ThrottleLike",
    "call_with_resilience",
    "call_with_resilience_async",
    "get_backoff_clock",
    "use_backoff_clock",
]

logger = logging.getLogger("integrations.calls")

T = TypeVar("T")
C = TypeVar("C", bound="BackoffClock")


@dataclass(frozen=True)
class AttemptInfo:
    """What one attempt needs to know: its number (from 1) and the seconds left before the
    call's deadline (shorten timeouts to fit)."""

    number: int
    remaining: float


class BreakerLike(Protocol):
    """The part of ``integrations.breaker.Breaker`` the runner uses."""

    @property
    def state(self) -> str: ...

    @property
    def cached_state(self) -> str:
        """The last known state, without querying anything (used in log lines)."""
        ...

    def acquire(self, operation: str) -> Any: ...

    def record_success(self, permit: Any) -> None: ...

    def record_failure(self, permit: Any, error: BaseException) -> None: ...


class GuardLike(Protocol):
    """The part of ``integrations.fleet.FleetGuard`` the runner uses: ``enter`` before an
    attempt (may wait, or raise) returns a ticket; ``leave`` takes it back after the attempt,
    with its error (None on success, or when the attempt was not made)."""

    @property
    def active(self) -> bool: ...

    def enter(self, operation: str, remaining: float, clock: BackoffClock, number: int) -> Any: ...

    def allow_retry(self, operation: str) -> bool: ...

    def leave(self, operation: str, ticket: Any, error: BaseException | None) -> None: ...


class ThrottleLike(Protocol):
    """The part of ``integrations.throttle.ClientThrottle`` the runners use (no I/O: the async
    runner calls it as it is): ``before_attempt`` returns or raises ``Throttled``; ``record``
    counts the outcome of an attempt that went to the vendor (None for a success)."""

    def before_attempt(self, operation: str, now: float) -> None: ...

    def record(self, now: float, error: BaseException | None) -> None: ...


class AsyncBreakerLike(Protocol):
    """``BreakerLike`` for the async runner (``integrations.breaker.AsyncBreaker``): the same
    decisions, its database work off the event loop. ``release`` gives back a permit whose
    attempt was cancelled."""

    @property
    def cached_state(self) -> str: ...

    async def acquire(self, operation: str) -> Any: ...

    async def record_success(self, permit: Any) -> None: ...

    async def record_failure(self, permit: Any, error: BaseException) -> None: ...

    async def release(self, permit: Any) -> None: ...


class AsyncGuardLike(Protocol):
    """``GuardLike`` for the async runner (``FleetGuard``'s ``*_async`` methods)."""

    @property
    def active(self) -> bool: ...

    async def enter_async(
        self, operation: str, remaining: float, clock: BackoffClock, number: int
    ) -> Any: ...

    async def allow_retry_async(self, operation: str) -> bool: ...

    async def leave_async(
        self, operation: str, ticket: Any, error: BaseException | None
    ) -> None: ...


class RetryBudgetSpent(Exception):
    """Raised by the runner's ``before_sleep`` when the service's retry budget refuses the next
    attempt; the runner turns it back into the last attempt's error (never seen by callers)."""


class BackoffClock:
    """Where the runner reads time (for the deadline) and waits between attempts."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def sleep_async(self, seconds: float) -> None:
        """``sleep`` for a call on an event loop (``AsyncServiceClient``): other tasks run."""
        if seconds > 0:
            await asyncio.sleep(seconds)


_default_clock = BackoffClock()
_clock_lock = threading.Lock()
_installed_clock: BackoffClock = _default_clock


def get_backoff_clock() -> BackoffClock:
    """The clock calls use when none is passed explicitly."""
    return _installed_clock


@contextmanager
def use_backoff_clock(clock: C) -> Iterator[C]:
    """Install ``clock`` process-wide for the duration of the block (tests)."""
    global _installed_clock
    with _clock_lock:
        previous, _installed_clock = _installed_clock, clock
    try:
        yield clock
    finally:
        with _clock_lock:
            _installed_clock = previous


# --- transport logs ------------------------------------------------------------------------------


class RedactQueryStrings(logging.Filter):
    """httpx logs each request's full URL at INFO (``HTTP Request: GET https://...?token=...``);
    this filter drops the query string from those records. Installed on the ``httpx`` logger
    when this module is imported, so it covers every client that goes through the runner
    (``ServiceClient`` and ``StripeService``'s httpx client alike)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(arg, httpx.URL) for arg in record.args
        ):
            record.args = tuple(
                arg.copy_with(query=None, fragment=None) if isinstance(arg, httpx.URL) else arg
                for arg in record.args
            )
        return True


_httpx_logger = logging.getLogger("httpx")
if not any(isinstance(f, RedactQueryStrings) for f in _httpx_logger.filters):
    _httpx_logger.addFilter(RedactQueryStrings())


# --- tenacity building blocks -------------------------------------------------------------------


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, IntegrationError) and bool(error.retryable)


_RETRY_IF_RETRYABLE = retry_if_exception(_is_retryable)


class wait_retry_after(wait_base):
    """Wait what a ``RateLimitedError`` asks (``Retry-After``), else defer to ``fallback``."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, RateLimitedError) and error.retry_after is not None:
            return max(0.0, float(error.retry_after))
        return self.fallback(retry_state)


class stop_before_deadline(stop_base):
    """Stop when the upcoming wait would end at or past the call's deadline."""

    def __init__(self, clock: BackoffClock, deadline_at: float) -> None:
        self.clock = clock
        self.deadline_at = deadline_at

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock.monotonic() + retry_state.upcoming_sleep >= self.deadline_at


# --- the decisions both runners share ------------------------------------------------------------
#
# ``call_with_resilience`` (threads) and ``call_with_resilience_async`` (an event loop) are the
# same loop, written once for each kind of I/O: every decision they make (what counts against the
# breaker, what is slow, when to stop, how long to wait, what a spent budget raises, what is
# logged) is one of the functions below.


def _counts_against_breaker(error: BaseException) -> bool:
    """The one place that decides whether a failure counts against the breaker: an error whose
    ``breaker_failure`` is False (a 4xx) is a success for it."""
    return not isinstance(error, IntegrationError) or error.breaker_failure


def _throttle_before(throttle: ThrottleLike | None, operation: str, clock: BackoffClock) -> None:
    """Before each attempt, before the shared policies and the breaker are asked: the adaptive
    throttle lets it go, or raises ``Throttled`` (nothing taken, nothing sent)."""
    if throttle is not None:
        throttle.before_attempt(operation, clock.monotonic())


def _throttle_after(
    throttle: ThrottleLike | None, clock: BackoffClock, error: BaseException | None
) -> None:
    """After an attempt that went to the vendor: its outcome counted by the adaptive throttle."""
    if throttle is not None:
        throttle.record(clock.monotonic(), error)


def _slow_call(
    service: str, operation: str, took: float, threshold: float | None
) -> SlowCall | None:
    """The failure a successful attempt that took ``took`` seconds counts as, if any."""
    if threshold is None or took <= threshold:
        return None
    return SlowCall(
        service,
        operation,
        f"succeeded in {took:.3f}s, over the slow-call threshold ({threshold:g}s)",
    )


def _retry_controls(retry: RetryPolicy, clock: BackoffClock, deadline_at: float) -> dict[str, Any]:
    """tenacity's stop, wait and retry objects for ``retry`` (``Retrying`` and ``AsyncRetrying``
    alike): attempts and the deadline, full-jitter backoff or ``Retry-After``, retryable errors."""
    return {
        "stop": stop_after_attempt(max(1, retry.max_attempts))
        | stop_before_deadline(clock, deadline_at),
        "wait": wait_retry_after(
            wait_random_exponential(multiplier=retry.base_delay, max=retry.max_delay)
        ),
        "retry": _RETRY_IF_RETRYABLE,
        "reraise": True,
    }


def _announce_retry(service: str, operation: str, state: RetryCallState) -> None:
    """The log line and the ``call_retried`` signal of a retry about to be waited for."""
    error = state.outcome.exception() if state.outcome else None
    delay = state.upcoming_sleep
    if logger.isEnabledFor(logging.INFO):
        logger.info(
            "%s.%s attempt %d failed (%s), retrying in %.2fs",
            service,
            operation,
            state.attempt_number,
            _outcome(error),
            delay,
            extra={
                "service": service,
                "operation": operation,
                "status": _outcome(error),
                "status_code": getattr(error, "status_code", None),
                "attempt": state.attempt_number,
                "delay": delay,
            },
        )
    call_retried.send(
        sender=service,
        service=service,
        operation=operation,
        attempt=state.attempt_number,
        delay=delay,
        error=error,
    )


def _no_retry_first(error: BaseException, retry: RetryPolicy) -> bool:
    """Whether the first attempt's ``error`` ends the call (no retry machinery is built)."""
    return not _is_retryable(error) or retry.max_attempts <= 1


def _budget_spent(
    service: str,
    operation: str,
    breaker: BreakerLike | AsyncBreakerLike | None,
    started: float,
    attempts: int,
    last: BaseException,
) -> BaseException:
    """The retry budget refused a retry: the last attempt's error, marked, logged and sent, to
    be raised as if no retry had been allowed."""
    if isinstance(last, IntegrationError):
        last.retry_budget_spent = True
    retry_budget_spent.send(sender=service, service=service, operation=operation)
    _fail(service, operation, breaker, started, attempts, last)
    last.__suppress_context__ = True  # raised for the vendor's failure, not the budget's
    return last


# --- the runner ---------------------------------------------------------------------------------


def call_with_resilience(
    attempt: Callable[[AttemptInfo], T],
    *,
    service: str,
    operation: str,
    retry: RetryPolicy,
    breaker: BreakerLike | None,
    clock: BackoffClock | None = None,
    guard: GuardLike | None = None,
    slow_call_threshold: float | None = None,
    throttle: ThrottleLike | None = None,
) -> T:
    """Run ``attempt`` under ``retry`` and ``breaker``; return its result or raise the last
    ``IntegrationError`` (with ``attempts`` set). ``breaker=None`` runs without a breaker.

    ``guard`` (the service's shared policies, ``integrations.fleet``) is entered before each
    attempt, before the breaker is asked, and left after it. An attempt that succeeds after
    more than ``slow_call_threshold`` seconds counts as a failure for the breaker
    (``SlowCall``); its result is still returned. ``throttle`` (``integrations.throttle``, this
    process's adaptive throttle) may reject each attempt before anything else is asked
    (``Throttled``), and counts the outcome of each attempt sent."""
    clock = clock or _installed_clock
    started = time.perf_counter()
    deadline_at = clock.monotonic() + retry.deadline
    sent = 0  # attempts that went past the breaker
    if guard is not None and not guard.active:
        guard = None

    def one_attempt(number: int) -> T:
        _throttle_before(throttle, operation, clock)
        if guard is None:
            return breaker_attempt(number)
        ticket = guard.enter(operation, max(0.0, deadline_at - clock.monotonic()), clock, number)
        left = False

        def leave(error: BaseException | None) -> None:
            # As soon as the attempt ends, before its outcome is written: the places it held
            # are free for the next caller.
            nonlocal left
            left = True
            guard.leave(operation, ticket, error)

        try:
            return breaker_attempt(number, leave)
        finally:
            if not left:  # the breaker refused it, or recording its outcome failed
                guard.leave(operation, ticket, None)

    def breaker_attempt(
        number: int, ended: Callable[[BaseException | None], None] | None = None
    ) -> T:
        nonlocal sent
        permit = breaker.acquire(operation) if breaker is not None else None
        sent += 1
        attempt_started = time.perf_counter()
        try:
            result = attempt(AttemptInfo(number, max(0.0, deadline_at - clock.monotonic())))
        except BaseException as error:
            _throttle_after(throttle, clock, error)
            if ended is not None:
                ended(error)
            if breaker is not None:
                if _counts_against_breaker(error):
                    breaker.record_failure(permit, error)
                else:
                    breaker.record_success(permit)
            raise
        _throttle_after(throttle, clock, None)
        if ended is not None:
            ended(None)
        if breaker is not None:
            slow = _slow_call(
                service, operation, time.perf_counter() - attempt_started, slow_call_threshold
            )
            if slow is not None:
                breaker.record_failure(permit, slow)
            else:
                breaker.record_success(permit)
        return result

    # The first attempt is made before any retry machinery is built: a healthy call (and a
    # call refused by an open breaker) costs no more than the attempt itself. A retryable
    # failure is then handed to tenacity as the outcome of its attempt 1, and tenacity's
    # stop/wait/retry objects decide everything from there.
    try:
        result = one_attempt(1)
    except BaseException as error:
        first_error = error
        if _no_retry_first(error, retry):
            _fail(service, operation, breaker, started, sent, error)
            raise
    else:
        _finish(service, operation, breaker, started, sent, None)
        return result

    def before_sleep(state: RetryCallState) -> None:
        # The retry budget decides before the wait: a retry it refuses is not waited for.
        if guard is not None and not guard.allow_retry(operation):
            raise RetryBudgetSpent
        _announce_retry(service, operation, state)

    retrying = Retrying(
        sleep=clock.sleep, before_sleep=before_sleep, **_retry_controls(retry, clock, deadline_at)
    )

    previous_error: BaseException = first_error
    try:
        for tenacity_attempt in retrying:
            with tenacity_attempt:
                number = tenacity_attempt.retry_state.attempt_number
                if number == 1:
                    raise first_error  # already made, above
                try:
                    result = one_attempt(number)
                except BaseException as error:
                    previous_error = _chain(error, previous_error)
                    raise
    except RetryBudgetSpent:
        raise _budget_spent(service, operation, breaker, started, sent, previous_error)  # noqa: B904
    except BaseException as error:
        _fail(service, operation, breaker, started, sent, error)
        raise
    _finish(service, operation, breaker, started, sent, None)
    return result


async def call_with_resilience_async(
    attempt: Callable[[AttemptInfo], Awaitable[T]],
    *,
    service: str,
    operation: str,
    retry: RetryPolicy,
    breaker: AsyncBreakerLike | None,
    clock: BackoffClock | None = None,
    guard: AsyncGuardLike | None = None,
    slow_call_threshold: float | None = None,
    throttle: ThrottleLike | None = None,
) -> T:
    """``call_with_resilience`` on an event loop: the same loop and the same decisions (the
    functions above), with the breaker's and the shared policies' I/O awaited and the waits
    through ``clock.sleep_async``.

    A task cancelled during an attempt (``asyncio.CancelledError``) gives the attempt's places
    and its breaker permit back (a half-open probe's slot is freed at once, not counted as a
    failure) and is not retried; the cancellation propagates."""
    clock = clock or _installed_clock
    started = time.perf_counter()
    deadline_at = clock.monotonic() + retry.deadline
    sent = 0
    if guard is not None and not guard.active:
        guard = None

    async def one_attempt(number: int) -> T:
        _throttle_before(throttle, operation, clock)
        if guard is None:
            return await breaker_attempt(number)
        ticket = await guard.enter_async(
            operation, max(0.0, deadline_at - clock.monotonic()), clock, number
        )
        left = False

        async def leave(error: BaseException | None) -> None:
            nonlocal left
            left = True
            await guard.leave_async(operation, ticket, error)

        try:
            return await breaker_attempt(number, leave)
        finally:
            if not left:
                await asyncio.shield(guard.leave_async(operation, ticket, None))

    async def breaker_attempt(
        number: int, ended: Callable[[BaseException | None], Awaitable[None]] | None = None
    ) -> T:
        nonlocal sent
        permit = await breaker.acquire(operation) if breaker is not None else None
        sent += 1
        attempt_started = time.perf_counter()
        try:
            result = await attempt(AttemptInfo(number, max(0.0, deadline_at - clock.monotonic())))
        except asyncio.CancelledError:
            # Not the vendor's failure: nothing to count, only the permit to give back. Shielded,
            # so that a second cancellation cannot leave a probe's slot taken until its lease ends.
            if ended is not None:
                await asyncio.shield(ended(None))
            if breaker is not None:
                await asyncio.shield(breaker.release(permit))
            raise
        except BaseException as error:
            _throttle_after(throttle, clock, error)
            if ended is not None:
                await ended(error)
            if breaker is not None:
                if _counts_against_breaker(error):
                    await breaker.record_failure(permit, error)
                else:
                    await breaker.record_success(permit)
            raise
        _throttle_after(throttle, clock, None)
        if ended is not None:
            await ended(None)
        if breaker is not None:
            slow = _slow_call(
                service, operation, time.perf_counter() - attempt_started, slow_call_threshold
            )
            if slow is not None:
                await breaker.record_failure(permit, slow)
            else:
                await breaker.record_success(permit)
        return result

    try:
        result = await one_attempt(1)
    except BaseException as error:
        first_error = error
        if isinstance(error, asyncio.CancelledError) or _no_retry_first(error, retry):
            _fail(service, operation, breaker, started, sent, error)
            raise
    else:
        _finish(service, operation, breaker, started, sent, None)
        return result

    async def before_sleep(state: RetryCallState) -> None:
        if guard is not None and not await guard.allow_retry_async(operation):
            raise RetryBudgetSpent
        _announce_retry(service, operation, state)

    retrying = AsyncRetrying(
        sleep=clock.sleep_async,
        before_sleep=before_sleep,
        **_retry_controls(retry, clock, deadline_at),
    )

    previous_error: BaseException = first_error
    try:
        async for tenacity_attempt in retrying:
            with tenacity_attempt:
                number = tenacity_attempt.retry_state.attempt_number
                if number == 1:
                    raise first_error
                try:
                    result = await one_attempt(number)
                except BaseException as error:
                    previous_error = _chain(error, previous_error)
                    raise
    except RetryBudgetSpent:
        raise _budget_spent(service, operation, breaker, started, sent, previous_error)  # noqa: B904
    except BaseException as error:
        _fail(service, operation, breaker, started, sent, error)
        raise
    _finish(service, operation, breaker, started, sent, None)
    return result


def _fail(
    service: str,
    operation: str,
    breaker: BreakerLike | AsyncBreakerLike | None,
    started: float,
    attempts: int,
    error: BaseException,
) -> None:
    if isinstance(error, IntegrationError):
        error.attempts = attempts
    _finish(service, operation, breaker, started, attempts, error)


def _chain(error: BaseException, previous: BaseException | None) -> BaseException:
    """A circuit or the adaptive throttle refusing a later attempt keeps the vendor's last error
    as its cause."""
    if (
        isinstance(error, CircuitOpenError | Throttled)
        and error.__cause__ is None
        and previous is not None
    ):
        error.__cause__ = previous
    return error


def _outcome(error: BaseException | None) -> str:
    if error is None:
        return "success"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


def _finish(
    service: str,
    operation: str,
    breaker: BreakerLike | AsyncBreakerLike | None,
    started: float,
    attempts: int,
    error: BaseException | None,
) -> None:
    duration = time.perf_counter() - started
    outcome = _outcome(error)
    # A refused call is expected while a breaker is open (its opening was logged as a warning)
    # or the adaptive throttle sheds load: one warning per refused call would flood the log
    # during an outage.
    level = (
        logging.INFO
        if error is None or isinstance(error, CircuitOpenError | Throttled)
        else logging.WARNING
    )
    if logger.isEnabledFor(level):
        breaker_state = _breaker_state(breaker)
        budget_spent = bool(getattr(error, "retry_budget_spent", False))
        logger.log(
            level,
            "%s.%s %s after %d attempt(s) in %.3fs (breaker %s)%s%s",
            service,
            operation,
            outcome if error is None else f"failed ({outcome})",
            attempts,
            duration,
            breaker_state,
            " (retry budget spent: not retried)" if budget_spent else "",
            "" if error is None else f": {safe_error_text(error)}",
            extra={
                "service": service,
                "operation": operation,
                "status": outcome,
                "status_code": getattr(error, "status_code", None),
                "attempts": attempts,
                "duration": duration,
                "breaker_state": breaker_state,
                "retry_budget_spent": budget_spent,
            },
        )
    call_finished.send(
        sender=service,
        service=service,
        operation=operation,
        outcome=outcome,
        duration=duration,
        attempts=attempts,
    )


def _breaker_state(breaker: BreakerLike | AsyncBreakerLike | None) -> str:
    if breaker is None:
        return "none"
    try:
        # The cached state: a log line must never query (an expired snapshot would be re-read).
        return str(breaker.cached_state)
    except Exception:  # a log line must never turn into a failure of the call
        return "unknown"
