"""The integrations app's errors.

Outbound calls have one hierarchy, rooted at ``IntegrationError``: every error carries the
service, the operation and how many attempts were made; the underlying exception is
``__cause__``. Messages never contain credentials: they are built from the service, operation,
status and a short reason, never from request headers or URLs with query strings.

Calls our own shared policies refuse before anything is sent are ``RateLimited`` (a
``RateLimitedError``: the shared rate limit or a cool-down), ``BulkheadFull`` and ``Throttled``
(this process's adaptive throttle); none counts against the breaker.

An operator's breaker action refused for what it asks is ``BreakerNotFound`` (a
``LookupError``) or ``InvalidExpiry`` (a ``ValueError``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

#: The longest wait a ``retry_after`` ever says, in seconds (one hour). A vendor's
#: ``Retry-After`` or an operator's hold that asks for more is cut to it, so that
#: ``countdown=exc.retry_after`` (Celery) or ``timedelta(seconds=exc.retry_after)`` never
#: overflows, a task retried later simply asks again, and the wait stays within Redis's default
#: visibility timeout (one hour; longer ETA tasks are redelivered early).
MAX_RETRY_AFTER = 3600.0


def bounded_retry_after(seconds: float | None) -> float | None:
    """``seconds`` as a wait in ``[0, MAX_RETRY_AFTER]``: negative is 0, too long or infinite
    is ``MAX_RETRY_AFTER``; None (unknown) for None and NaN. The one place every
    ``retry_after`` goes through (``RateLimitedError``, ``CircuitOpenError``, and
    ``integrations.client.parse_retry_after``)."""
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(float(seconds), 0.0), MAX_RETRY_AFTER)


class IntegrationError(Exception):
    """A call to a vendor failed. Base of the hierarchy."""

    #: Whether a retry of the same call may succeed.
    retryable: bool = False
    #: Whether this failure counts against the service's circuit breaker.
    breaker_failure: bool = True
    #: Set on the error of a call whose retry the service's retry budget refused.
    retry_budget_spent: bool = False

    def __init__(
        self,
        service: str,
        operation: str,
        message: str = "",
        *,
        cause: BaseException | None = None,
        attempts: int = 0,
    ) -> None:
        self.service = service
        self.operation = operation
        self.attempts = attempts
        self.message = message or _default_message(type(self))
        super().__init__(self.message)
        if cause is not None:
            self.__cause__ = cause

    def __reduce__(
        self,
    ) -> tuple[Callable[..., IntegrationError], tuple[type[IntegrationError], dict[str, Any]]]:
        # Exceptions pickle as ``cls(*args)`` by default, which loses our keyword-only fields
        # and fails for subclasses; Celery pickles them when a task raises. Rebuild from state
        # instead, leaving out the vendor's response object (large, and not always picklable).
        state = {k: v for k, v in self.__dict__.items() if k != "response"}
        return (_rebuild, (self.__class__, state))

    def __str__(self) -> str:
        attempts = f" after {self.attempts} attempt(s)" if self.attempts else ""
        return f"{self.service}.{self.operation}: {self.message}{attempts}"


class IntegrationTimeout(IntegrationError):
    """The vendor did not answer in time."""

    retryable = True


class IntegrationUnavailable(IntegrationError):
    """The vendor could not be reached or answered with a server error."""

    retryable = True

    def __init__(
        self,
        service: str,
        operation: str,
        message: str = "",
        *,
        status_code: int | None = None,
        cause: BaseException | None = None,
        attempts: int = 0,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        #: Seconds a 503's ``Retry-After`` asked us to wait (None when absent or for another
        #: status), at most ``MAX_RETRY_AFTER``: the service's shared cool-down, when on.
        self.retry_after = bounded_retry_after(retry_after)
        super().__init__(service, operation, message, cause=cause, attempts=attempts)


class CircuitOpenError(IntegrationUnavailable):
    """The circuit breaker is open: the call was not attempted."""

    retryable = False
    breaker_failure = False

    def __init__(
        self,
        service: str,
        operation: str,
        message: str = "",
        *,
        retry_after: float | None = None,
        status_code: int | None = None,
        cause: BaseException | None = None,
        attempts: int = 0,
    ) -> None:
        # ``retry_after``: seconds until the breaker lets a probe through (None when a person
        # holds it open with no end), at most ``MAX_RETRY_AFTER``.
        super().__init__(
            service,
            operation,
            message,
            status_code=status_code,
            cause=cause,
            attempts=attempts,
            retry_after=retry_after,
        )


class RateLimitedError(IntegrationError):
    """The vendor is rate limiting us (HTTP 429)."""

    retryable = True

    def __init__(
        self,
        service: str,
        operation: str,
        message: str = "",
        *,
        retry_after: float | None = None,
        cause: BaseException | None = None,
        attempts: int = 0,
    ) -> None:
        #: Seconds the vendor asked us to wait, from ``Retry-After`` (None when absent), at
        #: most ``MAX_RETRY_AFTER``.
        self.retry_after = bounded_retry_after(retry_after)
        super().__init__(service, operation, message, cause=cause, attempts=attempts)


class RateLimited(RateLimitedError):
    """Not sent: the service's shared rate limit, or a cool-down after its vendor's 429, has no
    room for this call before its deadline.

    Retryable (later): ``retry_after`` says when the call would have gone out. The vendor was
    not called, so it never counts against the breaker."""

    breaker_failure = False


class BulkheadFull(IntegrationError):
    """Not sent: the service's bulkhead (``MAX_CONCURRENCY`` in this process, or
    ``CLUSTER_MAX_CONCURRENCY`` across the fleet) had no free place before the call's deadline.

    The vendor was not called: not a breaker failure; not retried within the call (it already
    waited for as long as its deadline allowed)."""

    breaker_failure = False


class Throttled(IntegrationUnavailable):
    """Not sent: this process's adaptive throttle (``ADAPTIVE_THROTTLE``) rejected the attempt,
    the vendor having refused too many of the recent ones.

    An ``IntegrationUnavailable`` (the vendor is overloaded, as far as we can tell), with the
    ``probability`` it was rejected with. The vendor was not called: not a breaker failure, and
    not retried within the call (a retry would only meet the same throttle); a task may retry
    it later."""

    retryable = False
    breaker_failure = False

    def __init__(
        self,
        service: str,
        operation: str,
        message: str = "",
        *,
        probability: float = 0.0,
        cause: BaseException | None = None,
        attempts: int = 0,
    ) -> None:
        #: The probability the throttle rejected the attempt with (0..1).
        self.probability = probability
        super().__init__(service, operation, message, cause=cause, attempts=attempts)


class SlowCall(IntegrationError):
    """The call succeeded, but slower than the service's ``SLOW_CALL_THRESHOLD``.

    Never raised: it is the failure the breaker counts for such a call (its text is what the
    breaker's ``last_error`` shows)."""


class ClientRequestError(IntegrationError):
    """The vendor rejected the request (4xx): retrying the same request will not help."""

    breaker_failure = False

    #: The vendor's answer, set on the errors ``ServiceClient`` raises, for callers that read
    #: its validation details. It holds the request too (with its headers): never log it whole.
    #: Not pickled (``__reduce__``), and absent from ``StripeService``'s errors.
    response: httpx.Response

    def __init__(
        self,
        service: str,
        operation: str,
        message: str = "",
        *,
        status_code: int | None = None,
        cause: BaseException | None = None,
        attempts: int = 0,
    ) -> None:
        self.status_code = status_code
        super().__init__(service, operation, message, cause=cause, attempts=attempts)
        # 408 Request Timeout is the vendor's timeout, not our mistake.
        if status_code == 408:
            self.retryable = True
            self.breaker_failure = True


class InvalidResponseError(IntegrationError):
    """The vendor's answer was not what we can use (not JSON, a required field missing, or
    larger than ``MAX_RESPONSE_BYTES``)."""


class DisallowedURLError(IntegrationError):
    """The request names a URL outside the service: another origin than its base URL's (not
    listed in ``ALLOWED_ORIGINS``), credentials in the URL, or a path that leaves the base
    URL's path. Refused before anything is sent: never retried, not a breaker failure."""

    breaker_failure = False


class BreakerNotFound(LookupError):
    """No circuit breaker has this name (it is created on a service's first call)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no circuit breaker named {name!r}")


class InvalidExpiry(ValueError):
    """``until`` must be an aware datetime in the future."""


def safe_error_text(error: BaseException | None, limit: int | None = None) -> str:
    """A secret-free description of ``error`` for logs and the breaker's ``last_error``: our
    errors' text is built to be safe to show (service, operation, reason, attempts); anything
    else is named by its class only (a transport exception's text can hold a URL with a token).
    ``limit`` cuts it to that many characters."""
    if error is None:
        return ""
    text = str(error) if isinstance(error, IntegrationError) else type(error).__name__
    return text if limit is None else text[:limit]


def _default_message(cls: type[IntegrationError]) -> str:
    """The first line of the nearest docstring from ``cls`` up to ``IntegrationError`` (a
    subclass need not have one), without its final period; the class name when docstrings are
    stripped (``python -OO``)."""
    for klass in cls.__mro__:
        if not issubclass(klass, IntegrationError):
            break
        doc = (klass.__doc__ or "").strip()
        if doc:
            return doc.splitlines()[0].rstrip(".")
    return cls.__name__


def _rebuild(cls: type[IntegrationError], state: dict[str, Any]) -> IntegrationError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error
