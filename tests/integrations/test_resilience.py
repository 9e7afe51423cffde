"""The retry runner itself: what it retries, how long it waits, what it tells the breaker.

Attempts here are plain callables raising our errors (the runner's contract), or real HTTP calls
to a FakeVendor; the breaker is the real database-backed one."""

from __future__ import annotations

import logging

import httpx
import pytest

from integrations.breaker import get_breaker
from integrations.exceptions import (
    CircuitOpenError,
    ClientRequestError,
    IntegrationTimeout,
    IntegrationUnavailable,
    InvalidResponseError,
    RateLimitedError,
)
from integrations.models import CircuitBreaker
from integrations.policies import BreakerPolicy, RetryPolicy
from integrations.resilience import (
    AttemptInfo,
    BackoffClock,
    call_with_resilience,
    get_backoff_clock,
)
from integrations.testing import InstantBackoff, Reply, force_breaker, instant_backoff

POLICY = RetryPolicy(max_attempts=4, base_delay=1.0, max_delay=8.0, deadline=60.0)


class Script:
    """An attempt that raises the scripted errors in turn, then returns "ok"."""

    def __init__(self, *outcomes: BaseException | str) -> None:
        self.outcomes = list(outcomes)
        self.infos: list[AttemptInfo] = []

    def __call__(self, info: AttemptInfo) -> str:
        self.infos.append(info)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def unavailable() -> IntegrationUnavailable:
    return IntegrationUnavailable("svc", "op", "down", status_code=503)


def run(attempt, *, retry=POLICY, breaker=None, **kwargs):
    return call_with_resilience(
        attempt, service="svc", operation="op", retry=retry, breaker=breaker, **kwargs
    )


def test_success_first_time(backoff):
    attempt = Script("ok")
    assert run(attempt) == "ok"
    assert [i.number for i in attempt.infos] == [1]
    assert backoff.sleeps == []


@pytest.mark.parametrize(
    "error",
    [
        IntegrationTimeout("svc", "op"),
        IntegrationUnavailable("svc", "op", status_code=502),
        RateLimitedError("svc", "op", retry_after=None),
        ClientRequestError("svc", "op", status_code=408),
    ],
    ids=["timeout", "unavailable", "rate-limited", "408"],
)
def test_retryable_errors_are_retried(backoff, error):
    attempt = Script(error, "ok")
    assert run(attempt) == "ok"
    assert len(attempt.infos) == 2
    assert len(backoff.sleeps) == 1


@pytest.mark.parametrize(
    "error",
    [
        ClientRequestError("svc", "op", status_code=400),
        ClientRequestError("svc", "op", status_code=404),
        InvalidResponseError("svc", "op"),
        CircuitOpenError("svc", "op", retry_after=3),
    ],
    ids=["400", "404", "invalid", "circuit-open"],
)
def test_non_retryable_errors_are_raised_at_once(backoff, error):
    attempt = Script(error, "ok")
    with pytest.raises(type(error)) as caught:
        run(attempt)
    assert caught.value is error
    assert error.attempts == 1
    assert len(attempt.infos) == 1
    assert backoff.sleeps == []


def test_unexpected_exceptions_are_not_retried(backoff):
    attempt = Script(KeyError("bug"), "ok")
    with pytest.raises(KeyError):
        run(attempt)
    assert len(attempt.infos) == 1


def test_attempt_numbers_and_remaining_time(backoff):
    attempt = Script(unavailable(), unavailable(), "ok")
    run(attempt, retry=RetryPolicy(max_attempts=3, base_delay=2.0, max_delay=2.0, deadline=50))

    assert [i.number for i in attempt.infos] == [1, 2, 3]
    remaining = [i.remaining for i in attempt.infos]
    assert 49.0 < remaining[0] <= 50.0
    # Each later attempt has what the deadline left after the (instant, but counted) waits.
    assert remaining[1] == pytest.approx(remaining[0] - backoff.sleeps[0], abs=0.2)
    assert remaining[2] == pytest.approx(remaining[1] - backoff.sleeps[1], abs=0.2)


def test_full_jitter_spreads_the_first_wait_over_zero_to_base():
    waits = []
    for _ in range(200):
        with instant_backoff() as clock:
            run(Script(unavailable(), "ok"), retry=RetryPolicy(base_delay=1.0, max_delay=8.0))
        waits.extend(clock.sleeps)
    assert all(0.0 <= w <= 1.0 for w in waits)
    assert min(waits) < 0.2
    assert max(waits) > 0.8


def test_retry_after_is_used_instead_of_backoff(backoff):
    attempt = Script(RateLimitedError("svc", "op", retry_after=20.0), "ok")
    assert run(attempt, retry=RetryPolicy(max_delay=1.0, deadline=60)) == "ok"
    assert backoff.sleeps == [20.0]  # the vendor's word beats our max_delay, within the deadline


def test_retry_after_zero_retries_at_once(backoff):
    attempt = Script(RateLimitedError("svc", "op", retry_after=0.0), "ok")
    assert run(attempt) == "ok"
    assert backoff.sleeps == [0.0]


def test_retry_after_past_the_deadline_raises_the_rate_limited_error(backoff):
    error = RateLimitedError("svc", "op", retry_after=61.0)
    with pytest.raises(RateLimitedError) as caught:
        run(Script(error, "ok"))
    assert caught.value is error
    assert caught.value.retry_after == 61.0
    assert backoff.sleeps == []


def test_backoff_wait_past_the_deadline_stops(backoff):
    attempt = Script(unavailable(), "ok")
    policy = RetryPolicy(max_attempts=5, base_delay=100.0, max_delay=100.0, deadline=0.001)
    with pytest.raises(IntegrationUnavailable) as caught:
        run(attempt, retry=policy)
    assert caught.value.attempts == 1
    assert backoff.sleeps == []


def test_waits_really_sleep_without_instant_backoff():
    attempt = Script(unavailable(), "ok")

    class Recording(BackoffClock):
        def __init__(self):
            self.slept = []

        def sleep(self, seconds):
            self.slept.append(seconds)
            super().sleep(seconds)

    clock = Recording()
    run(attempt, retry=RetryPolicy(base_delay=0.05, max_delay=0.05), clock=clock)
    assert len(clock.slept) == 1 and 0 <= clock.slept[0] <= 0.05


def test_instant_backoff_is_restored_after_the_block():
    default = get_backoff_clock()
    with instant_backoff() as clock:
        assert get_backoff_clock() is clock
        assert isinstance(clock, InstantBackoff)
        before = clock.monotonic()
        clock.sleep(100)
        assert clock.monotonic() - before >= 100
        assert clock.total == 100
    assert get_backoff_clock() is default


# --- with the real breaker ----------------------------------------------------------------------


@pytest.mark.django_db
def test_every_attempt_is_checked_and_counted(backoff):
    breaker = get_breaker("svc", BreakerPolicy(failure_threshold=10))
    attempt = Script(unavailable(), unavailable(), "ok")

    assert run(attempt, breaker=breaker) == "ok"

    row = CircuitBreaker.objects.get(name="svc")
    assert row.total_failures == 2
    assert row.consecutive_failures == 0  # the success reset the count
    assert row.state == "closed"


@pytest.mark.django_db
def test_client_errors_count_as_successes(backoff):
    breaker = get_breaker("svc", BreakerPolicy(failure_threshold=1))
    for _ in range(3):
        with pytest.raises(ClientRequestError):
            run(Script(ClientRequestError("svc", "op", status_code=422)), breaker=breaker)
    assert breaker.snapshot(fresh=True).state == "closed"


@pytest.mark.django_db
def test_unexpected_exceptions_count_as_failures(backoff):
    breaker = get_breaker("svc", BreakerPolicy(failure_threshold=1))
    with pytest.raises(RuntimeError):
        run(Script(RuntimeError("boom")), breaker=breaker)
    assert breaker.snapshot(fresh=True).state == "open"


def test_failure_log_line_shows_our_text_and_only_the_class_of_others(backoff, caplog):
    with caplog.at_level(logging.WARNING, logger="integrations.calls"):
        with pytest.raises(RuntimeError):
            run(Script(RuntimeError("https://vendor.test/?token=tok_SECRET_123")))
        with pytest.raises(IntegrationUnavailable):
            run(Script(unavailable()), retry=RetryPolicy(max_attempts=1))
    [other, ours] = [r.getMessage() for r in caplog.records if r.name == "integrations.calls"]
    assert other.startswith("svc.op failed (runtime_error) after 1 attempt(s)")
    assert other.endswith(": RuntimeError")
    assert "tok_SECRET_123" not in other
    assert ours.endswith(": svc.op: down after 1 attempt(s)")


@pytest.mark.django_db
def test_open_breaker_means_no_attempt(backoff):
    force_breaker("svc", "forced_open")
    attempt = Script("ok")
    with pytest.raises(CircuitOpenError) as caught:
        run(attempt, breaker=get_breaker("svc"))
    assert attempt.infos == []
    assert caught.value.attempts == 0


@pytest.mark.django_db
def test_runner_over_real_http(vendor, backoff):
    """The runner with an attempt of one's own (as StripeService does), over real HTTP."""
    vendor.route("GET", "/ping", Reply.server_error(), Reply.json({"pong": True}))

    def attempt(info: AttemptInfo) -> dict:
        try:
            response = httpx.get(f"{vendor.url}/ping", timeout=min(2.0, info.remaining))
        except httpx.HTTPError as exc:
            raise IntegrationUnavailable("svc", "ping", cause=exc) from exc
        if response.status_code >= 500:
            raise IntegrationUnavailable("svc", "ping", status_code=response.status_code)
        return response.json()

    assert run(attempt, breaker=get_breaker("svc")) == {"pong": True}
    assert vendor.count("GET", "/ping") == 2


def test_httpx_request_log_lines_lose_their_query_string(vendor, caplog):
    """Any httpx client (StripeService's too) logs URLs without their query strings."""
    vendor.route("GET", "/ping", Reply.json({}))
    with caplog.at_level(logging.INFO, logger="httpx"):
        httpx.get(f"{vendor.url}/ping?token=tok_SECRET_123")

    [record] = [r for r in caplog.records if r.name == "httpx"]
    assert "/ping" in record.getMessage()
    assert "tok_SECRET_123" not in record.getMessage()
    assert vendor.requests[0].query == "token=tok_SECRET_123"  # it was really sent
