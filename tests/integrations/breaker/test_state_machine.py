"""The breaker's state machine in one process, with the clock moved instead of slept."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from integrations.breaker import (
    CLOSED,
    DISABLED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    PROBE_LEASE_MARGIN,
    clear_local_cache,
    disable_breaker,
    force_open_breaker,
    get_breaker,
    probe_lease_for,
    reset_breaker,
)
from integrations.exceptions import (
    CircuitOpenError,
    ClientRequestError,
    IntegrationTimeout,
    IntegrationUnavailable,
)
from integrations.models import BreakerTransition, CircuitBreaker
from integrations.policies import BreakerPolicy, RetryPolicy
from integrations.resilience import call_with_resilience
from integrations.signals import breaker_transitioned
from integrations.storage import CLOSED_COUNTS
from tests.integrations.factories import CircuitBreakerFactory

pytestmark = pytest.mark.django_db

SERVICE = "rates"
ONE_TRY = RetryPolicy(max_attempts=1, base_delay=0.0, max_delay=0.0, deadline=10.0)


def unavailable() -> IntegrationUnavailable:
    return IntegrationUnavailable(SERVICE, "rate", "server error", status_code=503)


def breaker(clock, **policy):
    defaults = {"failure_threshold": 3, "reset_timeout": 30.0, "cache_ttl": 1.0}
    return get_breaker(
        SERVICE, BreakerPolicy(**{**defaults, **policy}), clock=clock, probe_lease=10.0
    )


def fail(b, times=1, error=None):
    for _ in range(times):
        b.record_failure(b.acquire("rate"), error or unavailable())


def row() -> CircuitBreaker:
    return CircuitBreaker.objects.get(name=SERVICE)


def transitions() -> list[tuple[str, str, str]]:
    return list(
        BreakerTransition.objects.filter(breaker__name=SERVICE)
        .order_by("id")
        .values_list("from_state", "to_state", "actor")
    )


def test_row_is_created_on_first_use(clock):
    assert not CircuitBreaker.objects.filter(name=SERVICE).exists()
    assert breaker(clock).state == CLOSED
    assert row().state == CLOSED


def test_full_cycle_closed_open_half_open_closed(clock):
    b = breaker(clock)
    fail(b, 2)
    assert b.state == CLOSED
    assert row().consecutive_failures == 2
    fail(b)
    assert b.state == OPEN
    opened = row()
    assert opened.state == OPEN and opened.opened_at is not None

    with pytest.raises(CircuitOpenError) as caught:
        b.acquire("rate")
    assert caught.value.retry_after == pytest.approx(30.0)
    assert caught.value.service == SERVICE and caught.value.operation == "rate"

    clock.advance(29)
    with pytest.raises(CircuitOpenError) as caught:
        b.acquire("rate")
    assert caught.value.retry_after == pytest.approx(1.0)

    clock.advance(1)
    probe = b.acquire("rate")
    assert probe.is_probe
    assert row().state == HALF_OPEN and row().half_open_in_flight == 1
    with pytest.raises(CircuitOpenError):  # HALF_OPEN_MAX_CALLS = 1: the probe is in flight
        b.acquire("rate")

    b.record_success(probe)
    assert b.state == CLOSED
    closed = row()
    assert closed.consecutive_failures == 0 and closed.half_open_in_flight == 0
    assert closed.opened_at is None
    assert transitions() == [
        (CLOSED, OPEN, "system"),
        (OPEN, HALF_OPEN, "system"),
        (HALF_OPEN, CLOSED, "system"),
    ]
    first = BreakerTransition.objects.filter(breaker__name=SERVICE).order_by("id").first()
    assert first.reason == "3 consecutive failures (threshold 3)"
    assert first.snapshot["consecutive_failures"] == 3
    assert first.snapshot["total_failures"] == 3


def test_failed_probe_reopens_for_another_reset_timeout(clock):
    b = breaker(clock)
    fail(b, 3)
    clock.advance(30)
    probe = b.acquire("rate")
    b.record_failure(probe, IntegrationTimeout(SERVICE, "rate"))
    assert b.state == OPEN
    reopened = row()
    assert reopened.opened_at.timestamp() == pytest.approx(clock())
    assert reopened.half_open_in_flight == 0
    assert "probe failed" in transitions_reasons()[-1]
    with pytest.raises(CircuitOpenError) as caught:
        b.acquire("rate")
    assert caught.value.retry_after == pytest.approx(30.0)
    assert transitions()[-1][:2] == (HALF_OPEN, OPEN)


def transitions_reasons() -> list[str]:
    return list(
        BreakerTransition.objects.filter(breaker__name=SERVICE)
        .order_by("id")
        .values_list("reason", flat=True)
    )


def test_success_in_closed_resets_the_consecutive_count(clock):
    b = breaker(clock)
    fail(b, 2)
    b.record_success(b.acquire("rate"))
    assert row().consecutive_failures == 0
    fail(b, 2)
    assert b.state == CLOSED  # 2 + 2 failures, but never 3 in a row


def test_client_errors_count_as_successes(clock):
    # The runner decides from ``error.breaker_failure`` which outcome the breaker records.
    def through_runner(b, error):
        def attempt(info):
            raise error

        with pytest.raises(ClientRequestError):
            call_with_resilience(
                attempt, service=SERVICE, operation="rate", retry=ONE_TRY, breaker=b
            )

    b = breaker(clock)
    fail(b, 2)
    through_runner(b, ClientRequestError(SERVICE, "rate", "not found", status_code=404))
    assert row().consecutive_failures == 0
    assert b.state == CLOSED
    # ... but a 408 is the vendor's timeout and counts.
    for _ in range(3):
        through_runner(b, ClientRequestError(SERVICE, "rate", "timeout", status_code=408))
    assert b.state == OPEN


def test_half_open_limit_of_three_probes_and_one_failure_reopens(clock):
    b = breaker(clock, half_open_max_calls=3)
    fail(b, 3)
    clock.advance(30)
    probes = [b.acquire("rate") for _ in range(3)]
    assert all(p.is_probe for p in probes)
    with pytest.raises(CircuitOpenError) as caught:
        b.acquire("rate")
    assert 0 < caught.value.retry_after <= 10.0  # at the latest when the probe lease ends
    b.record_failure(probes[0], unavailable())
    assert b.state == OPEN
    # Late reports of the other probes do not move the breaker again.
    b.record_success(probes[1])
    b.record_failure(probes[2], unavailable())
    assert b.state == OPEN
    assert [t[:2] for t in transitions()][-1] == (HALF_OPEN, OPEN)
    assert len(transitions()) == 3


def test_a_probe_that_never_reports_does_not_wedge_the_breaker(clock):
    b = breaker(clock)
    fail(b, 3)
    clock.advance(30)
    lost = b.acquire("rate")  # its process dies: it never reports
    assert lost.is_probe
    clock.advance(9)
    with pytest.raises(CircuitOpenError):
        b.acquire("rate")
    clock.advance(1.5)  # the 10 s probe lease has run out
    probe = b.acquire("rate")
    assert probe.is_probe
    assert row().half_open_in_flight == 1
    b.record_success(probe)
    assert b.state == CLOSED


def test_a_shorter_lease_never_cuts_short_a_probe_in_flight(clock):
    # Two callers with different deadlines (one client's DEADLINE 60, another's 1): the second
    # grant must not shorten the lease that covers the first probe, still running.
    policy = BreakerPolicy(failure_threshold=3, reset_timeout=30.0, half_open_max_calls=2)
    long_calls = get_breaker(SERVICE, policy, clock=clock, probe_lease=60.0)
    short_calls = get_breaker(SERVICE, policy, clock=clock, probe_lease=1.0)
    fail(long_calls, 3)
    clock.advance(30)
    assert long_calls.acquire("rate").is_probe
    assert short_calls.acquire("rate").is_probe

    clock.advance(2)  # the short lease would be over, the long probe is still running
    with pytest.raises(CircuitOpenError):
        short_calls.acquire("rate")
    assert row().half_open_in_flight == 2

    clock.advance(59)  # now every lease is over: the slots are taken back
    assert short_calls.acquire("rate").is_probe
    assert row().half_open_in_flight == 1


def test_the_default_lease_outlasts_the_deadline_by_the_margin(clock, settings):
    settings.INTEGRATIONS = {"RETRY": {"DEADLINE": 12.0}}
    b = get_breaker(SERVICE, BreakerPolicy(failure_threshold=1), clock=clock)
    assert b.probe_lease() == 12.0 + PROBE_LEASE_MARGIN == probe_lease_for(12.0)
    fail(b)
    clock.advance(30)
    b.acquire("rate")
    assert row().probe_lease_until.timestamp() == pytest.approx(clock() + 12.0 + PROBE_LEASE_MARGIN)


def test_release_gives_a_probe_slot_back(clock):
    b = breaker(clock)
    fail(b, 3)
    clock.advance(30)
    probe = b.acquire("rate")
    b.release(probe)
    assert row().half_open_in_flight == 0
    assert b.acquire("rate").is_probe


def test_row_overrides_win_over_the_policy(clock):
    CircuitBreakerFactory(name=SERVICE, failure_threshold=1, reset_timeout=5.0)
    b = breaker(clock)
    fail(b)
    assert b.state == OPEN
    with pytest.raises(CircuitOpenError) as caught:
        b.acquire("rate")
    assert caught.value.retry_after == pytest.approx(5.0)


def test_forced_open_fails_fast_and_expires(clock):
    b = breaker(clock)
    b.acquire("rate")
    until = timezone.now() + timedelta(seconds=120)
    force_open_breaker(SERVICE, actor="alice", reason="vendor maintenance", until=until)
    with pytest.raises(CircuitOpenError) as caught:
        b.acquire("rate")
    assert caught.value.retry_after == pytest.approx(until.timestamp() - clock(), abs=1)
    clock.advance(until.timestamp() - clock() + 1)
    permit = b.acquire("rate")
    assert permit.state == CLOSED
    assert row().forced_until is None
    assert transitions()[-2:] == [(CLOSED, FORCED_OPEN, "alice"), (FORCED_OPEN, CLOSED, "system")]
    assert transitions_reasons()[-1] == "forced_open expired"


def test_forced_open_without_expiry_has_no_retry_after(clock):
    b = breaker(clock)
    b.acquire("rate")
    force_open_breaker(SERVICE, actor="alice", reason="fraud")
    clock.advance(10_000)
    with pytest.raises(CircuitOpenError) as caught:
        b.acquire("rate")
    assert caught.value.retry_after is None
    reset_breaker(SERVICE, actor="alice")
    assert b.acquire("rate").state == CLOSED


def test_disabled_lets_every_call_through_and_expires(clock):
    b = breaker(clock)
    b.acquire("rate")
    until = timezone.now() + timedelta(seconds=60)
    disable_breaker(SERVICE, actor="bob", reason="vendor flaky, we accept it", until=until)
    fail(b, 10)
    assert b.state == DISABLED
    assert row().total_failures == 10
    clock.advance(until.timestamp() - clock() + 1)
    assert b.acquire("rate").state == CLOSED
    assert transitions()[-1] == (DISABLED, CLOSED, "system")
    assert row().consecutive_failures == 0


@pytest.mark.parametrize("hold", [DISABLED, FORCED_OPEN])
def test_a_hold_that_expires_closes_with_the_counts_a_reset_leaves(clock, hold):
    """A hold that expires closes the breaker as a reset does: the failure-rate window is
    emptied too, so failures counted before or during the hold cannot trip it again at once."""
    b = breaker(clock, failure_threshold=100, failure_rate=0.5, minimum_calls=10, window=600.0)
    until = timezone.now() + timedelta(seconds=60)
    if hold == DISABLED:
        disable_breaker(SERVICE, actor="bob", reason="vendor flaky", until=until, create=True)
        fail(b, 12)  # let through, and counted
        assert b.state == DISABLED
    else:
        fail(b, 9)  # under minimum_calls: still closed
        force_open_breaker(SERVICE, actor="bob", reason="maintenance", until=until)
    clock.advance(until.timestamp() - clock() + 1)
    assert b.acquire("rate").state == CLOSED
    closed = row()
    assert (closed.consecutive_failures, closed.window_calls, closed.window_failures) == (0, 0, 0)
    assert (closed.previous_window_calls, closed.previous_window_failures) == (0, 0)
    fail(b)
    assert b.state == CLOSED  # one failure in one call: under minimum_calls
    reset_breaker(SERVICE, actor="bob")
    reset = row()
    assert [getattr(reset, name) for name in CLOSED_COUNTS] == [
        getattr(closed, name) for name in CLOSED_COUNTS
    ]


def test_last_error_is_short_and_free_of_secrets(clock):
    b = breaker(clock)
    secret_text = "https://api.example.com/v1?api_key=sk_live_SECRET " + "x" * 2000
    b.record_failure(b.acquire("rate"), RuntimeError(secret_text))
    assert row().last_error == "RuntimeError"
    long = IntegrationUnavailable(SERVICE, "rate", "y" * 2000)
    b.record_failure(b.acquire("rate"), long)
    assert len(row().last_error) == 500
    assert row().last_error.startswith("rates.rate: yyy")


def test_transition_signal_is_sent_after_commit(clock, django_capture_on_commit_callbacks):
    received = []

    def receiver(sender, **kwargs):
        received.append(kwargs)

    breaker_transitioned.connect(receiver)
    try:
        b = breaker(clock)
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            fail(b, 3)
        assert received == []  # not before the commit
        assert len(callbacks) == 1
        callbacks[0]()
    finally:
        breaker_transitioned.disconnect(receiver)
    assert len(received) == 1
    assert received[0]["breaker"].name == SERVICE
    assert (received[0]["from_state"], received[0]["to_state"]) == (CLOSED, OPEN)
    assert received[0]["actor"] == "system"


def test_a_deleted_row_is_created_again(clock):
    b = breaker(clock)
    b.acquire("rate")
    CircuitBreaker.objects.filter(name=SERVICE).delete()
    b.record_failure(b.acquire("rate"), unavailable())  # snapshot still names the old row
    assert row().consecutive_failures == 1


def test_failure_rate_over_the_window_opens(clock):
    b = breaker(clock, failure_threshold=100, failure_rate=0.5, minimum_calls=10, window=60.0)
    for _ in range(8):
        b.record_success(b.acquire("rate"))
    fail(b, 7)
    assert b.state == CLOSED  # 7 failures of 15 calls: 47%
    fail(b)
    assert b.state == OPEN  # 8 of 16: 50%
    assert transitions_reasons()[-1] == (
        "failure rate 50% over the last 60s (8 of 16 calls; limit 50%)"
    )


def test_failure_rate_needs_the_minimum_number_of_calls(clock):
    b = breaker(clock, failure_threshold=100, failure_rate=0.5, minimum_calls=10, window=60.0)
    fail(b, 9)
    assert b.state == CLOSED  # 100% but only 9 calls
    fail(b)
    assert b.state == OPEN


def test_failure_rate_window_slides(clock):
    b = breaker(clock, failure_threshold=100, failure_rate=0.5, minimum_calls=10, window=60.0)
    clock.now = 6000.0 * 60  # the start of a window bucket
    fail(b, 8)
    clock.advance(150)  # two windows later: the old failures have slid out
    fail(b, 3)
    assert b.state == CLOSED
    current = row()
    assert current.window_failures == 3 and current.previous_window_failures == 0
    calls, failures = b.window_estimate(b.snapshot(fresh=True), clock())
    assert (calls, failures) == (3, 3)


def test_window_estimate_weights_the_previous_bucket(clock):
    b = breaker(clock, failure_threshold=100, failure_rate=0.9, minimum_calls=1000, window=60.0)
    clock.now = 6000.0 * 60
    fail(b, 10)
    clock.advance(75)  # 15 s into the next bucket: 75% of the previous one still counts
    fail(b, 2)
    calls, failures = b.window_estimate(b.snapshot(fresh=True), clock())
    assert calls == pytest.approx(2 + 10 * 0.75)
    assert failures == pytest.approx(2 + 10 * 0.75)


def test_successes_are_batched_into_the_totals(clock):
    b = breaker(clock)
    for _ in range(25):
        b.record_success(b.acquire("rate"))
    assert row().total_successes == 0  # nothing written on the hot path
    clock.advance(31)  # past the batch interval: the next read adds them
    b.acquire("rate")
    assert row().total_successes == 25
    # A failure carries the batch along with it, in the same UPDATE.
    b.record_success(b.acquire("rate"))
    fail(b)
    assert row().total_successes == 26
    assert row().total_failures == 1


def test_other_process_changes_are_seen_after_the_cache_ttl(clock):
    b = breaker(clock, cache_ttl=1.0)
    b.acquire("rate")
    # Another process (here: a direct write) opens the breaker.
    CircuitBreaker.objects.filter(name=SERVICE).update(
        state=OPEN, opened_at=timezone.now(), version=99
    )
    assert b.acquire("rate").state == CLOSED  # still within the TTL
    clock.advance(1.0)
    with pytest.raises(CircuitOpenError):
        b.acquire("rate")


def test_state_reads_the_row_through_the_snapshot(clock):
    b = breaker(clock)
    fail(b, 3)
    clear_local_cache()
    assert b.state == OPEN
