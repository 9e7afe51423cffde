"""What a breaker costs a healthy call, and how fast an open one fails."""

from __future__ import annotations

import contextlib
import statistics
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations.breaker import get_breaker
from integrations.exceptions import CircuitOpenError, IntegrationUnavailable
from integrations.policies import BreakerPolicy
from tests.integrations.factories import CircuitBreakerFactory

pytestmark = pytest.mark.django_db

WRITES = ("INSERT", "UPDATE", "DELETE")


def writes(ctx: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in ctx.captured_queries if q["sql"].lstrip().upper().startswith(WRITES)]


def test_closed_hot_path_writes_nothing_and_reads_once_per_ttl(clock):
    b = get_breaker("rates", BreakerPolicy(cache_ttl=1.0), clock=clock)
    b.acquire("rate")  # creates the row
    calls = 2000
    with CaptureQueriesContext(connection) as ctx:
        for _ in range(calls):
            b.record_success(b.acquire("rate"))
            clock.advance(0.005)  # 2000 calls over 10 s: ten snapshot refreshes
    assert writes(ctx) == []
    assert 9 <= len(ctx.captured_queries) <= 11
    assert len(ctx.captured_queries) / calls < 0.05


def test_success_after_failures_writes_once_then_nothing(clock):
    b = get_breaker("rates", BreakerPolicy(failure_threshold=5), clock=clock)
    b.record_failure(b.acquire("rate"), IntegrationUnavailable("rates", "rate"))
    with CaptureQueriesContext(connection) as ctx:
        for _ in range(100):
            b.record_success(b.acquire("rate"))
    assert len(writes(ctx)) == 1  # the reset of the consecutive count, once
    assert len(ctx.captured_queries) == 1


def test_open_breaker_fails_fast_without_a_query():
    CircuitBreakerFactory(name="rates", tripped=True)
    b = get_breaker("rates", BreakerPolicy(reset_timeout=300.0))
    with pytest.raises(CircuitOpenError):
        b.acquire("rate")  # loads the snapshot
    timings = []
    with CaptureQueriesContext(connection) as ctx:
        for _ in range(2000):
            started = time.perf_counter()
            with contextlib.suppress(CircuitOpenError):
                b.acquire("rate")
            timings.append(time.perf_counter() - started)
    assert len(ctx.captured_queries) <= 1  # at most one refresh if the 1 s TTL ran out
    median_us = statistics.median(timings) * 1e6
    assert median_us < 50, f"open breaker took {median_us:.1f} µs per call (median)"


def test_healthy_call_overhead_is_microseconds():
    b = get_breaker("rates", BreakerPolicy())
    b.acquire("rate")
    timings = []
    for _ in range(2000):
        started = time.perf_counter()
        b.record_success(b.acquire("rate"))
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) * 1e6 < 20


def test_forced_open_expiry_is_read_from_the_snapshot(clock):
    CircuitBreakerFactory(
        name="rates", state="forced_open", forced_until=timezone.now() + timedelta(hours=1)
    )
    b = get_breaker("rates", clock=clock)
    with pytest.raises(CircuitOpenError):
        b.acquire("rate")
    with CaptureQueriesContext(connection) as ctx, pytest.raises(CircuitOpenError):
        b.acquire("rate")
    assert ctx.captured_queries == []
