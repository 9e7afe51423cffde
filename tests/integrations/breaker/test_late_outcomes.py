"""Late outcomes: an attempt's outcome counts only against the breaker generation (the row's
``version``) that admitted it. A call let through before an outage that fails after a probe
has closed the breaker again must not count as a fresh failure, nor re-open it; a late success
must not reset the new generation's failures. Both still go to the totals."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models import F
from django.utils import timezone

from integrations.breaker import CLOSED, DISABLED, HALF_OPEN, OPEN, disable_breaker, get_breaker
from integrations.exceptions import IntegrationTimeout, IntegrationUnavailable
from integrations.models import BreakerTransition, CircuitBreaker
from integrations.policies import BreakerPolicy

pytestmark = pytest.mark.django_db

SERVICE = "rates"
RATE_RULE = {"failure_threshold": 100, "failure_rate": 0.5, "minimum_calls": 5, "window": 600.0}


def breaker(clock, **policy):
    defaults = {"failure_threshold": 5, "reset_timeout": 30.0, "cache_ttl": 1.0}
    return get_breaker(
        SERVICE, BreakerPolicy(**{**defaults, **policy}), clock=clock, probe_lease=10.0
    )


def unavailable() -> IntegrationUnavailable:
    return IntegrationUnavailable(SERVICE, "rate", "server error", status_code=503)


def fail(b, times=1):
    for _ in range(times):
        b.record_failure(b.acquire("rate"), unavailable())


def row() -> CircuitBreaker:
    return CircuitBreaker.objects.get(name=SERVICE)


def transitions() -> list[tuple[str, str]]:
    return list(
        BreakerTransition.objects.filter(breaker__name=SERVICE)
        .order_by("id")
        .values_list("from_state", "to_state")
    )


def outage_and_recovery(b, clock, failures: int) -> None:
    """The vendor goes down (``failures`` failures open the breaker), recovers, and a probe
    closes the breaker again: a new generation."""
    fail(b, failures)
    assert b.state == OPEN
    clock.advance(30)
    probe = b.acquire("rate")
    assert probe.is_probe
    b.record_success(probe)
    assert b.state == CLOSED


CYCLE = [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_a_late_failure_does_not_reopen_a_recovered_breaker(clock):
    b = breaker(clock)
    in_flight = [b.acquire("rate") for _ in range(5)]  # admitted before the outage
    outage_and_recovery(b, clock, 5)
    closed_version = row().version

    clock.advance(2)
    for permit in in_flight:  # as many late failures as the threshold
        b.record_failure(permit, IntegrationTimeout(SERVICE, "rate"))

    after = row()
    assert after.state == CLOSED and after.version == closed_version
    assert after.consecutive_failures == 0
    assert (after.window_calls, after.window_failures) == (0, 0)
    assert after.total_failures == 10  # still counted in the totals
    # The newest failure reported is kept for the operator, whichever generation it was of.
    assert after.last_failure_at.timestamp() == pytest.approx(clock())
    assert after.last_error.startswith("rates.rate")
    assert transitions() == CYCLE

    # The new generation counts its own failures as before.
    fail(b, 4)
    assert row().consecutive_failures == 4
    fail(b)
    assert b.state == OPEN
    assert transitions() == [*CYCLE, (CLOSED, OPEN)]


def test_late_failures_do_not_reach_the_new_generations_failure_rate(clock):
    clock.now = 6000.0 * 600  # the start of a window bucket: the test never straddles one
    b = breaker(clock, **RATE_RULE)
    in_flight = [b.acquire("rate") for _ in range(10)]
    outage_and_recovery(b, clock, 5)  # 5 failures of 5 calls: 100%, at minimum_calls
    assert (
        BreakerTransition.objects.filter(to_state=OPEN).get().reason.startswith("failure rate 100%")
    )
    for _ in range(3):
        b.record_success(b.acquire("rate"))

    for permit in in_flight:  # 10 late failures: 10 of 13 calls would be 77%
        b.record_failure(permit, unavailable())

    after = row()
    assert after.state == CLOSED
    assert (after.window_failures, after.previous_window_failures) == (0, 0)
    assert after.window_calls == 3  # the new generation's own successes, flushed
    assert after.total_failures == 15
    assert transitions() == CYCLE


def test_a_late_success_does_not_reset_the_new_generations_failures(clock):
    b = breaker(clock, failure_threshold=3)
    before_outage = b.acquire("rate")
    outage_and_recovery(b, clock, 3)
    fail(b, 2)
    assert row().consecutive_failures == 2

    b.record_success(before_outage)
    assert row().consecutive_failures == 2
    fail(b)  # the third failure in a row of this generation
    assert b.state == OPEN

    clock.advance(31)  # past the batch interval: the next read adds the batched successes
    b.snapshot(fresh=True)
    assert row().total_successes == 2  # the probe's and the late one


def test_late_successes_do_not_join_the_new_generations_window(clock):
    clock.now = 6000.0 * 600
    b = breaker(clock, **RATE_RULE)
    in_flight = [b.acquire("rate") for _ in range(4)]
    outage_and_recovery(b, clock, 5)
    for permit in in_flight:
        b.record_success(permit)
    b.record_success(b.acquire("rate"))  # one of the new generation
    clock.advance(1)  # CACHE_TTL: with a failure rate, batches are flushed this often
    b.snapshot(fresh=True)

    after = row()
    assert after.window_calls == 1
    assert after.total_successes == 6  # the probe, 4 late ones, 1 new


def test_the_generation_is_checked_in_the_update_not_the_snapshot(clock):
    """Another process may have moved the row on while this one's snapshot is still fresh: the
    conditional UPDATE itself refuses outcomes of an older generation."""
    b = breaker(clock, failure_threshold=3)
    old = [b.acquire("rate") for _ in range(3)]
    fail(b, 2)
    # Another process (here: a direct write) ran an outage and a recovery, and its new
    # generation has already seen two failures. This process's snapshot is still fresh.
    CircuitBreaker.objects.filter(name=SERVICE).update(
        version=F("version") + 3, consecutive_failures=2
    )
    assert b.snapshot().version == old[0].version

    b.record_success(old[0])  # the snapshot says: failures to reset, same generation
    assert row().consecutive_failures == 2
    b.record_failure(old[1], unavailable())
    b.record_failure(old[2], unavailable())
    after = row()
    assert after.consecutive_failures == 2
    assert after.state == CLOSED
    assert after.total_failures == 4
    assert transitions() == []


def test_a_losing_probes_failure_does_not_count_against_the_closed_breaker(clock):
    b = breaker(clock, failure_threshold=1, half_open_max_calls=2)
    fail(b)
    clock.advance(30)
    first, second = b.acquire("rate"), b.acquire("rate")
    assert first.is_probe and second.is_probe
    b.record_success(first)
    b.record_failure(second, unavailable())  # threshold 1: counted, it would re-open
    after = row()
    assert after.state == CLOSED
    assert after.consecutive_failures == 0
    assert after.total_failures == 2


def test_failures_let_through_while_disabled_do_not_count_once_it_closes(clock):
    b = breaker(clock, failure_threshold=3)
    until = timezone.now() + timedelta(seconds=60)
    disable_breaker(SERVICE, actor="bob", reason="vendor flaky", until=until, create=True)
    let_through = [b.acquire("rate") for _ in range(3)]
    assert {permit.state for permit in let_through} == {DISABLED}
    clock.advance(until.timestamp() - clock() + 1)
    assert b.acquire("rate").state == CLOSED  # the hold expired

    for permit in let_through:
        b.record_failure(permit, unavailable())
    after = row()
    assert after.state == CLOSED
    assert after.consecutive_failures == 0
    assert after.total_failures == 3
