"""The breaker across OS processes against the real PostgreSQL: no lost failure increments,
the half-open probe limit holds, operator changes reach other processes within CACHE_TTL, and a
database outage fails open (or closed, when configured)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from integrations.breaker import ManualClock, force_open_breaker, get_breaker
from integrations.exceptions import IntegrationUnavailable
from integrations.models import BreakerTransition, CircuitBreaker
from integrations.policies import BreakerPolicy
from tests.integrations.breaker import procs
from tests.integrations.factories import CircuitBreakerFactory

pytestmark = [pytest.mark.multiprocess, pytest.mark.django_db(transaction=True)]

SPAWN = multiprocessing.get_context("spawn")
ROOT = Path(__file__).resolve().parents[3]


def run_processes(target, args_for, count: int, *, timeout: float = 120, conductor=None) -> list:
    """Start ``count`` spawned processes lined up on one barrier; return their results. With a
    ``conductor``, this process is one more party to the barrier: ``conductor(barrier)`` runs
    here while they wait on it."""
    barrier = SPAWN.Barrier(count + (conductor is not None))
    queue = SPAWN.Queue()
    db_name = connection.settings_dict["NAME"]
    workers = [
        SPAWN.Process(target=target, args=(db_name, *args_for(i), barrier, queue))
        for i in range(count)
    ]
    for worker in workers:
        worker.start()
    results = []
    try:
        if conductor is not None:
            try:
                conductor(barrier)
            except BaseException:
                barrier.abort()  # the workers stop waiting at once
                raise
        for _ in workers:
            status, value = queue.get(timeout=timeout)
            assert status == "ok", value
            results.append(value)
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    return results


def test_concurrent_failures_are_counted_exactly():
    CircuitBreakerFactory(name="counted")
    # The failure-rate window is on too (but cannot trip: a million calls minimum), and a
    # year long, so that the test never straddles a bucket edge.
    policy = BreakerPolicy(
        failure_threshold=10_000, failure_rate=0.5, minimum_calls=10**6, window=366 * 86400.0
    )
    results = run_processes(procs.record_failures, lambda i: ("counted", policy, 50), 4)
    assert results == [50] * 4
    row = CircuitBreaker.objects.get(name="counted")
    assert row.consecutive_failures == 200
    assert row.total_failures == 200
    assert row.window_failures == 200
    assert row.window_calls == 200
    assert row.state == "closed"


def test_concurrent_failures_open_the_breaker_exactly_once():
    CircuitBreakerFactory(name="tripped-once")
    policy = BreakerPolicy(failure_threshold=5, reset_timeout=300.0)
    run_processes(procs.record_failures, lambda i: ("tripped-once", policy, 10), 4)
    row = CircuitBreaker.objects.get(name="tripped-once")
    assert row.state == "open"
    assert row.total_failures == 40
    transitions = BreakerTransition.objects.filter(breaker=row)
    assert list(transitions.values_list("from_state", "to_state")) == [("closed", "open")]


@pytest.mark.parametrize("max_calls", [1, 3])
def test_half_open_probe_limit_holds_across_processes(max_calls):
    name = f"probed-{max_calls}"
    CircuitBreakerFactory(
        name=name, state="open", opened_at=timezone.now() - timedelta(seconds=60), version=7
    )
    policy = BreakerPolicy(reset_timeout=30.0, half_open_max_calls=max_calls)
    results = run_processes(procs.race_acquire, lambda i: (name, policy), 8)
    assert sorted(results).count("half_open") == max_calls
    assert sorted(results).count("refused") == 8 - max_calls
    row = CircuitBreaker.objects.get(name=name)
    assert row.state == "half_open"
    assert row.half_open_in_flight == max_calls
    transitions = BreakerTransition.objects.filter(breaker=row)
    assert list(transitions.values_list("from_state", "to_state")) == [("open", "half_open")]


def test_probe_limit_holds_when_already_half_open():
    CircuitBreakerFactory(
        name="half",
        state="half_open",
        half_open_in_flight=1,
        probe_lease_until=timezone.now() + timedelta(seconds=60),
    )
    policy = BreakerPolicy(half_open_max_calls=2)
    results = run_processes(procs.race_acquire, lambda i: ("half", policy), 6)
    assert results.count("half_open") == 1
    assert CircuitBreaker.objects.get(name="half").half_open_in_flight == 2


@pytest.mark.parametrize(
    ("outcomes", "final"),
    [((False, False, False, False), "closed"), ((True, True, True, True), "open")],
    ids=["all-succeed", "all-fail"],
)
def test_probes_reporting_at_once_move_the_breaker_once(outcomes, final):
    CircuitBreakerFactory(
        name="reported",
        state="half_open",
        version=11,
        half_open_in_flight=4,
        probe_lease_until=timezone.now() + timedelta(seconds=60),
    )
    policy = BreakerPolicy(half_open_max_calls=4, reset_timeout=300.0)
    run_processes(
        procs.report_probe, lambda i: ("reported", policy, 11, outcomes[i]), len(outcomes)
    )
    row = CircuitBreaker.objects.get(name="reported")
    assert row.state == final
    assert row.half_open_in_flight == 0
    transitions = list(BreakerTransition.objects.filter(breaker=row).values_list("to_state"))
    assert transitions == [(final,)]
    if final == "open":
        assert row.total_failures == 4  # the losers' failures are still counted


def test_calls_in_flight_across_an_outage_do_not_reopen_the_recovered_breaker():
    """Four processes hold permits granted in ``closed``; the breaker opens, a probe closes it
    again, then they report all 20 calls failed (four times the threshold, and 100% of the
    failure-rate rule's calls): the recovered breaker stays closed."""
    CircuitBreakerFactory(name="recovered")
    policy = BreakerPolicy(
        failure_threshold=5,
        reset_timeout=30.0,
        failure_rate=0.5,
        minimum_calls=5,
        window=366 * 86400.0,  # a year: the test never straddles a bucket edge
    )
    clock = ManualClock()

    def outage_and_recovery(barrier) -> None:
        barrier.wait(timeout=60)  # every worker holds 5 permits
        breaker = get_breaker("recovered", policy, clock=clock, probe_lease=60.0)
        for _ in range(5):
            breaker.record_failure(breaker.acquire("op"), IntegrationUnavailable("recovered", "op"))
        assert breaker.state == "open"
        clock.advance(30)
        breaker.record_success(breaker.acquire("op"))
        assert breaker.state == "closed"
        barrier.wait(timeout=60)  # now the workers report

    results = run_processes(
        procs.late_failures, lambda i: ("recovered", policy, 5), 4, conductor=outage_and_recovery
    )
    assert results == ["closed"] * 4
    row = CircuitBreaker.objects.get(name="recovered")
    assert row.state == "closed"
    assert row.consecutive_failures == 0
    assert (row.window_calls, row.window_failures) == (0, 0)
    assert row.total_failures == 5 + 20
    transitions = BreakerTransition.objects.filter(breaker=row).order_by("id")
    assert list(transitions.values_list("from_state", "to_state")) == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_first_use_from_several_processes_creates_one_row():
    policy = BreakerPolicy()
    results = run_processes(procs.race_acquire, lambda i: ("brand-new", policy), 6)
    assert results == ["closed"] * 6
    assert CircuitBreaker.objects.filter(name="brand-new").count() == 1


def test_an_operator_change_reaches_another_process_within_the_cache_ttl():
    CircuitBreakerFactory(name="watched")
    ready = SPAWN.Event()
    queue = SPAWN.Queue()
    watcher = SPAWN.Process(
        target=procs.watch_until_open,
        args=(connection.settings_dict["NAME"], "watched", ready, queue, 20.0),
    )
    watcher.start()
    try:
        assert ready.wait(timeout=60)
        changed_at = time.time()
        force_open_breaker("watched", actor="alice", reason="maintenance")
        status, seen_at = queue.get(timeout=60)
    finally:
        watcher.join(timeout=10)
    assert status == "ok", seen_at
    assert seen_at is not None, "the other process never saw the breaker open"
    lag = seen_at - changed_at
    assert 0 <= lag <= 1.0 + 0.5  # CACHE_TTL is 1 s; 0.5 s for a busy, shared machine


def run_outage(scenario: str, *, port: int | str = 1) -> dict:
    """Run a scenario in a subprocess whose database is a closed port on 127.0.0.1."""
    good = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "TETHER_PG_URL": f"postgres://{good['USER']}@{good['HOST']}:{port}/{good['NAME']}",
        "TETHER_DB_NAME": good["NAME"],
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.integrations.breaker.procs", scenario, str(good["PORT"])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_database_unreachable_fails_open_with_an_error_log():
    result = run_outage("fail_open")
    assert result["permit"] == "closed" and result["degraded"] is True
    assert result["recorded"] is True  # outcomes are not written, and nothing raises
    assert result["state"] == "degraded"
    assert any(
        m.startswith("ERROR:") and "cannot read its state" in m and "failing open" in m
        for m in result["errors"]
    )
    # One attempt per CACHE_TTL: the hundred calls that follow do not dial the database again.
    assert len([m for m in result["errors"] if "cannot read" in m]) == 1
    assert result["hundred_calls_seconds"] < 0.05


def test_database_unreachable_fails_closed_when_configured():
    result = run_outage("fail_closed")
    assert result["circuit_open"] is True
    assert result["retry_after"] == 1.0
    assert any("failing closed" in m for m in result["errors"])


def test_breaker_reads_the_database_again_when_it_comes_back():
    CircuitBreakerFactory(name="outage-svc", state="forced_open")
    result = run_outage("recovers")
    assert result["permit"] == "closed" and result["degraded"] is True
    assert result["state_after_recovery"] == "forced_open"
    assert result["permit_after_recovery"] == "refused"


def test_database_lost_mid_way_fails_open_and_never_raises():
    CircuitBreakerFactory(name="tripped-svc", state="open", opened_at=timezone.now())
    result = run_outage("mid_way", port=connection.settings_dict["PORT"])
    assert 20 < result["open_before"] <= 31
    assert result["recorded_failure"] is True
    assert result["probe"] == ["closed", True]  # a degraded permit: the call goes through
    assert result["state"] == "degraded"
    assert any("cannot record an outcome" in m for m in result["errors"])
    assert any("cannot change its state" in m for m in result["errors"])
    # Nothing was written while the database was away.
    assert CircuitBreaker.objects.get(name="healthy-svc").total_failures == 0
    assert CircuitBreaker.objects.get(name="tripped-svc").state == "open"
