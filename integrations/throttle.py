"""Client-side adaptive throttling, per process and per service (Google SRE book, "Handling
Overload": client-side throttling).

Each process keeps, for each service whose ``ADAPTIVE_THROTTLE`` is on, two counts over the
trailing ``WINDOW`` seconds:

- ``requests``: every attempt the client wanted to make, the ones it rejected itself included;
- ``accepts``: attempts the vendor accepted, i.e. whose outcome is not an overload signal.

Before each attempt (each retry too) it rejects the attempt locally with probability
``max(0, (requests - K * accepts) / (requests + 1))``: nothing while the vendor accepts at least
one attempt in ``K``; more and more of them as it refuses more. A local rejection raises
``Throttled`` and is never sent; it counts as a request (so a vendor that stays down keeps being
throttled) and, like every refusal made before the vendor is called, never against the circuit
breaker. An attempt refused by another local policy (the breaker, a bulkhead, the shared rate
limit) is not counted at all: it says nothing about the vendor.

The overload signal is the hierarchy's own: an ``IntegrationError`` whose ``retryable`` is set
(timeouts, connection errors, 5xx, 408 and 429; ``integrations.exceptions``). Any other outcome,
a 4xx or an answer we cannot parse included, is an accept: the vendor had room to answer.

The counts live in one-second buckets (a ``deque``: at most ``ceil(WINDOW)`` of them, so memory
is bounded whatever the traffic), under a lock (threads and event loops share one object; no
I/O, so the async runner calls it without awaiting). The time is the runner's ``BackoffClock``
(``integrations.resilience``) and the random draw comes from ``get_throttle_random()``: tests
install their own of each (``use_backoff_clock``, ``use_throttle_random``).
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured

from tether.fork import after_fork

from .conf import integrations_settings, service_settings
from .exceptions import IntegrationError, Throttled
from .policies import number_fields
from .signals import call_throttled

__all__ = [
    "MAX_K",
    "MAX_WINDOW",
    "AdaptiveThrottle",
    "ClientThrottle",
    "forget_throttles",
    "get_throttle_random",
    "is_overload",
    "throttle_for",
    "use_throttle_random",
]

logger = logging.getLogger("integrations.throttle")

#: The largest ``K`` accepted (a larger one would hardly ever reject anything).
MAX_K = 10.0
#: The longest ``WINDOW`` accepted, in seconds.
MAX_WINDOW = 3600.0


@dataclass(frozen=True)
class AdaptiveThrottle:
    """The setting: reject locally once requests exceed ``k`` times the accepts over the last
    ``window`` seconds.

    Built from ``ADAPTIVE_THROTTLE``: None (off) or ``{"K": 2.0, "WINDOW": 120}`` (these are
    the defaults of keys left out)."""

    k: float = 2.0
    window: float = 120.0

    def __str__(self) -> str:
        return f"K={self.k:g} over {self.window:g}s"

    @classmethod
    def parse(
        cls, value: object, where: str = 'INTEGRATIONS["ADAPTIVE_THROTTLE"]'
    ) -> AdaptiveThrottle | None:
        """The policy ``value`` describes (None for None); ``ImproperlyConfigured``, naming
        ``where``, for anything else."""
        known = {"K": "k", "WINDOW": "window"}
        values = number_fields(value, where, known, '{"K": 2.0, "WINDOW": 120}')
        if values is None:
            return None
        policy = cls(**values)
        if not 1 < policy.k <= MAX_K:
            raise ImproperlyConfigured(
                f"{where}['K'] must be greater than 1 and at most {MAX_K:g}."
            )
        if not 0 < policy.window <= MAX_WINDOW:
            raise ImproperlyConfigured(
                f"{where}['WINDOW'] must be greater than 0 and at most {MAX_WINDOW:g} seconds."
            )
        return policy


def is_overload(error: BaseException | None) -> bool:
    """Whether an attempt's outcome says the vendor could not take it: the hierarchy's
    ``retryable`` (timeouts, connection errors, 5xx, 408, 429). None (a success) is not."""
    return isinstance(error, IntegrationError) and bool(error.retryable)


_installed_random: Callable[[], float] = random.random


def get_throttle_random() -> Callable[[], float]:
    """The source of the draws (uniform in [0, 1)) the throttles compare to their probability."""
    return _installed_random


@contextmanager
def use_throttle_random(source: Callable[[], float]) -> Iterator[Callable[[], float]]:
    """Install ``source`` as the throttles' random draw for the block (tests, benchmarks)."""
    global _installed_random
    previous, _installed_random = _installed_random, source
    try:
        yield source
    finally:
        _installed_random = previous


class ClientThrottle:
    """One service's throttle in this process: its counts and its decision."""

    def __init__(self, service: str, policy: AdaptiveThrottle) -> None:
        self.service = service
        self.policy = policy
        # Buckets of [index, requests, accepts], oldest first; index = floor(time / width).
        self._width = min(1.0, policy.window)
        self._span = math.ceil(policy.window / self._width - 1e-9)
        self._buckets: deque[list[int]] = deque()
        self._lock = threading.Lock()
        #: Attempts this process rejected since it started (the operator's status view).
        self.rejected = 0

    def __repr__(self) -> str:
        return f"ClientThrottle({self.service!r}, {self.policy})"

    def _bucket(self, now: float) -> list[int]:
        """The current bucket, the ones past the window dropped (the lock held)."""
        index = math.floor(now / self._width)
        buckets = self._buckets
        while buckets and buckets[0][0] <= index - self._span:
            buckets.popleft()
        if not buckets or buckets[-1][0] < index:
            buckets.append([index, 0, 0])
        return buckets[-1]  # a clock that went back counts in the newest bucket

    def _counts(self) -> tuple[int, int]:
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def counts(self, now: float) -> tuple[int, int]:
        """``(requests, accepts)`` over the window ending at ``now``."""
        with self._lock:
            self._bucket(now)
            return self._counts()

    def _probability(self, requests: int, accepts: int) -> float:
        return max(0.0, (requests - self.policy.k * accepts) / (requests + 1))

    def probability(self, now: float) -> float:
        """The probability that an attempt made at ``now`` is rejected locally."""
        with self._lock:
            self._bucket(now)
            return self._probability(*self._counts())

    def decide(self, now: float, draw: float) -> float | None:
        """Whether an attempt at ``now`` goes out: None when it does (its outcome is counted by
        ``record``), else the probability it was rejected with (counted as a request now)."""
        with self._lock:
            bucket = self._bucket(now)
            p = self._probability(*self._counts())
            if draw >= p:
                return None
            bucket[1] += 1
            self.rejected += 1
            return p

    def record(self, now: float, error: BaseException | None) -> None:
        """Count an attempt that went to the vendor, with its outcome (None: a success)."""
        accepted = not is_overload(error)
        with self._lock:
            bucket = self._bucket(now)
            bucket[1] += 1
            bucket[2] += accepted

    def before_attempt(self, operation: str, now: float) -> None:
        """Before an attempt at ``now``: return, or raise ``Throttled`` (logged at DEBUG and
        sent as ``call_throttled``) for an attempt rejected locally."""
        p = self.decide(now, get_throttle_random()())
        if p is None:
            return
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s.%s rejected locally (adaptive throttle %s, probability %.3f)",
                self.service,
                operation,
                self.policy,
                p,
                extra={"service": self.service, "operation": operation, "probability": p},
            )
        call_throttled.send(
            sender=self.service, service=self.service, operation=operation, probability=p
        )
        raise Throttled(
            self.service,
            operation,
            f"rejected locally by the adaptive throttle ({self.policy}) with probability "
            f"{p:.3f}: the vendor has been refusing calls",
            probability=p,
        )


#: (service, policy) -> this process's throttle: kept across settings reloads while the policy
#: stays the same; emptied in a forked child (its counts are its parent's).
_throttles: dict[tuple[str, AdaptiveThrottle], ClientThrottle] = {}
_throttles_lock = threading.Lock()
#: service -> its policy from settings (None: off), emptied when settings reload.
_policies: dict[str, AdaptiveThrottle | None] = {}
integrations_settings.register_cache(_policies.clear)


def _policy_for(service: str) -> AdaptiveThrottle | None:
    try:
        return _policies[service]
    except KeyError:
        pass
    merged = integrations_settings.merged
    policy = AdaptiveThrottle.parse(
        service_settings(service)["ADAPTIVE_THROTTLE"],
        f'INTEGRATIONS["SERVICES"][{service!r}]["ADAPTIVE_THROTTLE"]',
    )
    integrations_settings.remember(_policies, service, policy, source=merged)
    return policy


def throttle_for(service: str) -> ClientThrottle | None:
    """This process's throttle for ``service``; None when its ``ADAPTIVE_THROTTLE`` is off."""
    policy = _policy_for(service)
    if policy is None:
        return None
    key = (service, policy)
    throttle = _throttles.get(key)
    if throttle is None:
        with _throttles_lock:
            throttle = _throttles.setdefault(key, ClientThrottle(service, policy))
    return throttle


def forget_throttles() -> None:
    """Forget every throttle's counts (tests; a forked child does it by itself)."""
    global _throttles_lock
    _throttles.clear()
    _throttles_lock = threading.Lock()


after_fork(forget_throttles)
