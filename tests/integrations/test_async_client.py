"""AsyncServiceClient on one event loop, over real HTTP to a FakeVendor on 127.0.0.1, the real
PostgreSQL breaker and the real Redis: what only an event loop can show. Many concurrent calls
share one breaker (its half-open probe limit holds), a cancelled call gives back its probe, its
bulkhead places and its connection, the shared policies hold for tasks of one loop, and an open
breaker refuses without leaving the loop. The contract tests that hold for both clients run
against both (``make_rates``, ``make_things``) in the test_client_* and test_fleet files.

Each scenario runs on one loop through asgiref's ``async_to_sync``, so that the breaker's
database work (``sync_to_async``) runs in the test's thread, inside its transaction."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from asgiref.sync import async_to_sync, sync_to_async

from integrations import shared_state
from integrations.client import open_async_connections
from integrations.exceptions import (
    BulkheadFull,
    CircuitOpenError,
    IntegrationTimeout,
    IntegrationUnavailable,
    InvalidResponseError,
    RateLimitedError,
)
from integrations.models import CircuitBreaker
from integrations.testing import Reply, aclose_connections, force_breaker, unused_port_url
from tests import postgres
from tests.integrations.rates import AsyncRates, configure

pytestmark = pytest.mark.django_db

T = TypeVar("T")


def on_one_loop(scenario: Callable[[], Awaitable[T]]) -> T:
    """Run ``scenario`` to its end on a fresh event loop, then close that loop's connections."""

    async def run() -> T:
        try:
            return await scenario()
        finally:
            await aclose_connections()

    return async_to_sync(run)()


async def gather(calls: int, make: Callable[[], Awaitable[Any]]) -> list[Any]:
    return await asyncio.gather(*(make() for _ in range(calls)), return_exceptions=True)


def open_then_wait_out(settings, vendor, *, max_calls: int) -> None:
    configure(
        settings,
        vendor.url,
        BREAKER={"FAILURE_THRESHOLD": 2, "RESET_TIMEOUT": 0.2, "HALF_OPEN_MAX_CALLS": max_calls},
        RETRY={"MAX_ATTEMPTS": 1, "DEADLINE": 10},
        TIMEOUT=CONNECT,
    )
    force_breaker("rates", "open")
    time.sleep(0.25)  # the reset timeout has passed: the next calls may probe


# --- one breaker for every task ----------------------------------------------------------------


@pytest.mark.parametrize("max_calls", [1, 3])
def test_concurrent_calls_on_one_loop_take_at_most_the_probe_limit(settings, vendor, max_calls):
    open_then_wait_out(settings, vendor, max_calls=max_calls)
    vendor.route("GET", "/v1/rates/EUR", Reply.slow(0.4, Reply.json({"rate": 2})))

    outcomes = on_one_loop(lambda: gather(30, lambda: AsyncRates().rate("EUR")))

    probes = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, CircuitOpenError)]
    assert len(probes) == max_calls  # every probe slot taken, none more
    assert len(refused) == 30 - max_calls
    assert vendor.count() == max_calls
    assert vendor.max_in_flight == max_calls
    row = CircuitBreaker.objects.get(name="rates")
    assert row.state == "closed"  # a probe succeeded
    assert row.half_open_in_flight == 0


#: The fake vendor's listen backlog is short: connections over it are answered after the
#: kernel's first SYN retry (1 s), so the many-connection tests allow a longer connect.
CONNECT = {"CONNECT": 5.0, "READ": 10.0}


def test_many_healthy_concurrent_calls_share_one_closed_breaker(settings, vendor):
    configure(settings, vendor.url, BREAKER={"FAILURE_THRESHOLD": 3}, TIMEOUT=CONNECT)
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 1}))

    outcomes = on_one_loop(lambda: gather(25, lambda: AsyncRates().rate("EUR")))

    assert outcomes == [1] * 25, [o for o in outcomes if o != 1][:1]
    assert vendor.count() == 25
    assert CircuitBreaker.objects.filter(name="rates").count() == 1


def test_concurrent_failures_trip_the_shared_breaker_once(settings, vendor):
    configure(
        settings,
        vendor.url,
        BREAKER={"FAILURE_THRESHOLD": 3, "RESET_TIMEOUT": 60},
        RETRY={"MAX_ATTEMPTS": 1},
        TIMEOUT=CONNECT,
    )
    vendor.route("GET", "/v1/rates/EUR", Reply.server_error(503))

    async def scenario() -> list[Any]:
        first = await gather(10, lambda: AsyncRates().rate("EUR"))
        then = await gather(10, lambda: AsyncRates().rate("EUR"))
        return first + then

    outcomes = on_one_loop(scenario)

    assert all(isinstance(o, IntegrationUnavailable | CircuitOpenError) for o in outcomes)
    assert all(isinstance(o, CircuitOpenError) for o in outcomes[10:])  # no call went out
    assert vendor.count() <= 10
    row = CircuitBreaker.objects.get(name="rates")
    assert row.state == "open"
    assert list(row.transitions.values_list("from_state", "to_state")) == [("closed", "open")]


def test_an_open_breaker_refuses_without_a_query_or_a_request(settings, vendor):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    configure(settings, vendor.url, BREAKER={"FAILURE_THRESHOLD": 2, "RESET_TIMEOUT": 60})
    force_breaker("rates", "open")

    async def scenario() -> tuple[list[Any], float]:
        client = AsyncRates()
        await gather(1, lambda: client.rate("EUR"))  # reads the row once
        started = time.perf_counter()
        outcomes = await gather(200, lambda: client.rate("EUR"))
        return outcomes, (time.perf_counter() - started) / 200

    with CaptureQueriesContext(connection) as queries:
        outcomes, each = on_one_loop(scenario)

    assert all(isinstance(o, CircuitOpenError) for o in outcomes)
    assert 0 < outcomes[0].retry_after <= 60
    assert len(queries) <= 2  # the first snapshot; the 200 refusals asked nothing
    assert vendor.count() == 0
    assert each < 0.005  # a refusal stays on the loop (generous: the machine is shared)


# --- cancellation ------------------------------------------------------------------------------


async def cancel_when_in_flight(vendor, call: Awaitable[Any]) -> None:
    task = asyncio.ensure_future(call)
    for _ in range(500):  # until the vendor holds the request
        if vendor.in_flight:
            break
        await asyncio.sleep(0.01)
    assert vendor.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_cancelled_probe_gives_its_slot_back_at_once(settings, vendor):
    open_then_wait_out(settings, vendor, max_calls=1)
    vendor.route("GET", "/v1/rates/EUR", Reply.hang(), Reply.json({"rate": 7}))

    async def scenario() -> tuple[int, Any, int]:
        await cancel_when_in_flight(vendor, AsyncRates().rate("EUR"))
        in_flight = await sync_to_async(
            lambda: CircuitBreaker.objects.values_list("half_open_in_flight", flat=True).get()
        )()
        left = open_async_connections("rates")
        # Without the slot back, this call would be refused until the probe's lease ends
        # (the deadline plus PROBE_LEASE_MARGIN: 15 s).
        return in_flight, await AsyncRates().rate("EUR"), left

    in_flight, rate, connections_left = on_one_loop(scenario)

    assert in_flight == 0  # released at once
    assert rate == 7
    assert connections_left == 0  # the cancelled request's connection was closed, not pooled
    row = CircuitBreaker.objects.get(name="rates")
    assert row.state == "closed"
    assert row.consecutive_failures == 0  # a cancellation is not the vendor's failure
    assert vendor.count() == 2


@postgres.ROW_LOCKS
@pytest.mark.django_db(transaction=True)
def test_a_call_cancelled_while_the_database_grants_its_probe_gives_the_slot_back(settings, vendor):
    """The probe is being granted off the loop (the breaker's row is locked by an operator's
    transaction in another connection, so the grant waits) when the task is cancelled: once the
    grant lands, the slot is given back, not held until its lease ends (15 s here)."""
    from django.db import connection as this_thread_connection
    from django.db import transaction

    open_then_wait_out(settings, vendor, max_calls=1)
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 7}))
    locked, unlock = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        try:
            with transaction.atomic():
                CircuitBreaker.objects.select_for_update().get(name="rates")
                locked.set()
                unlock.wait(30)
        finally:
            this_thread_connection.close()

    def lock_waits() -> int:
        try:
            with this_thread_connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                return cursor.fetchone()[0]
        finally:
            this_thread_connection.close()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    assert locked.wait(10)

    async def scenario() -> tuple[int, Any]:
        task = asyncio.ensure_future(AsyncRates().rate("EUR"))
        for _ in range(500):  # until the grant waits for the row
            if await sync_to_async(lock_waits, thread_sensitive=False)():
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the probe's grant never waited for the locked row")
        task.cancel()
        unlock.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        in_flight = await sync_to_async(
            lambda: CircuitBreaker.objects.values_list("half_open_in_flight", flat=True).get()
        )()
        # Without the slot back, this call would be refused until the probe's lease ends.
        return in_flight, await AsyncRates().rate("EUR")

    try:
        in_flight, rate = on_one_loop(scenario)
    finally:
        unlock.set()
        holder.join(10)

    assert in_flight == 0  # granted, then given back
    assert rate == 7
    assert vendor.count() == 1  # the cancelled call never reached the vendor
    assert CircuitBreaker.objects.get(name="rates").state == "closed"


def test_a_cancelled_call_releases_its_connection_and_counts_nothing(settings, vendor):
    configure(settings, vendor.url, BREAKER={"FAILURE_THRESHOLD": 1})
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 1}), Reply.hang())

    async def scenario() -> tuple[int, int]:
        await AsyncRates().rate("EUR")
        before = open_async_connections("rates")  # the idle keep-alive connection
        await cancel_when_in_flight(vendor, AsyncRates().rate("EUR"))
        return before, open_async_connections("rates")

    before, after = on_one_loop(scenario)

    assert before == 1
    assert after == 0
    assert CircuitBreaker.objects.get(name="rates").state == "closed"  # threshold 1: untouched


def test_a_cancelled_call_gives_its_bulkhead_places_back(settings, vendor):
    configure(settings, vendor.url, RETRY={"MAX_ATTEMPTS": 1, "DEADLINE": 5})
    settings.INTEGRATIONS = {
        **settings.INTEGRATIONS,
        "REDIS_URL": settings.REDIS_URL,
    }
    settings.INTEGRATIONS["SERVICES"]["rates"].update(MAX_CONCURRENCY=1, CLUSTER_MAX_CONCURRENCY=1)
    vendor.route("GET", "/v1/rates/EUR", Reply.hang(), Reply.json({"rate": 3}))

    async def scenario() -> tuple[int, Any]:
        await cancel_when_in_flight(vendor, AsyncRates().rate("EUR"))
        leases = await asyncio.to_thread(shared_state.leases_in_force, "rates")
        return leases, await AsyncRates(retry={"DEADLINE": 0.5}).rate("EUR")

    leases, rate = on_one_loop(scenario)

    assert leases == 0
    assert rate == 3  # the places were free at once (a held one would be BulkheadFull)


# --- the shared policies on one loop -----------------------------------------------------------


def redis_settings(settings, vendor, **service) -> None:
    configure(settings, vendor.url, RETRY={"MAX_ATTEMPTS": 1, "DEADLINE": 5}, **service)
    settings.INTEGRATIONS = {**settings.INTEGRATIONS, "REDIS_URL": settings.REDIS_URL}


def test_tasks_of_one_loop_share_the_bulkheads(settings, vendor):
    redis_settings(settings, vendor, MAX_CONCURRENCY=3, CLUSTER_MAX_CONCURRENCY=2)
    vendor.route("GET", "/v1/rates/EUR", Reply.slow(0.1, Reply.json({"rate": 1})))

    outcomes = on_one_loop(lambda: gather(8, lambda: AsyncRates().rate("EUR")))

    assert outcomes == [1] * 8
    assert vendor.max_in_flight == 2  # the fleet's limit, the smaller one
    assert shared_state.leases_in_force("rates") == 0


def test_a_full_bulkhead_refuses_at_the_deadline(settings, vendor):
    redis_settings(settings, vendor, MAX_CONCURRENCY=1)
    vendor.route("GET", "/v1/rates/EUR", Reply.slow(0.6, Reply.json({"rate": 1})))

    async def scenario() -> list[Any]:
        busy = asyncio.ensure_future(AsyncRates().rate("EUR"))
        await asyncio.sleep(0.1)
        refused = await gather(1, lambda: AsyncRates(retry={"DEADLINE": 0.2}).rate("EUR"))
        return [await busy, *refused]

    done, refused = on_one_loop(scenario)

    assert done == 1
    assert isinstance(refused, BulkheadFull)
    assert vendor.count() == 1


def test_a_burst_then_the_shared_rate_on_one_loop(settings, vendor):
    redis_settings(settings, vendor, RATE_LIMIT={"RATE": "4/s", "BURST": 3})
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 1}))

    async def scenario() -> float:
        started = time.monotonic()
        assert await gather(5, lambda: AsyncRates().rate("EUR")) == [1] * 5
        return time.monotonic() - started

    took = on_one_loop(scenario)

    arrivals = sorted(r.received_at for r in vendor.requests)
    assert arrivals[2] - arrivals[0] < 0.2  # the burst of 3 at once
    assert arrivals[4] - arrivals[0] >= 2 * 0.25 - 0.1  # then a slot every 250 ms
    assert took >= 0.45


def test_a_429_cools_down_the_other_tasks(settings, vendor):
    redis_settings(settings, vendor, SHARED_COOLDOWN=True)
    vendor.route("GET", "/v1/rates/EUR", Reply.rate_limited(0.5), Reply.json({"rate": 1}))

    async def scenario() -> tuple[Any, float, Any]:
        first = (await gather(1, lambda: AsyncRates().rate("EUR")))[0]
        hit = time.monotonic()
        second = await AsyncRates().rate("EUR")
        return first, time.monotonic() - hit, second

    first, waited, second = on_one_loop(scenario)

    assert isinstance(first, RateLimitedError)
    assert second == 1
    assert waited >= 0.35  # waited out the fleet's cool-down before calling


def test_redis_down_fails_open_on_the_loop(settings, vendor):
    port = unused_port_url().rsplit(":", 1)[1]
    configure(settings, vendor.url, RATE_LIMIT="1/m")
    settings.INTEGRATIONS = {
        **settings.INTEGRATIONS,
        "REDIS_URL": f"redis://:s3cret@127.0.0.1:{port}/0",
    }
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 1}))

    outcomes = on_one_loop(lambda: gather(3, lambda: AsyncRates().rate("EUR")))

    assert outcomes == [1] * 3  # a 1/m limit would refuse two: not applied
    assert vendor.count() == 3


def test_a_redis_that_never_answers_costs_one_call_its_timeout_on_the_loop(settings, vendor):
    import socket

    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 1}))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        configure(settings, vendor.url, RATE_LIMIT="100/s")
        settings.INTEGRATIONS = {
            **settings.INTEGRATIONS,
            "REDIS_URL": f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
            "REDIS_TIMEOUT": 0.2,
        }

        async def scenario() -> tuple[float, float]:
            started = time.monotonic()
            await AsyncRates().rate("EUR")
            first = time.monotonic() - started
            await AsyncRates().rate("EUR")
            return first, time.monotonic() - started

        first, both = on_one_loop(scenario)

    assert 0.2 <= first < 0.6  # the hung Redis cost this call its timeout, then it went out
    assert both - first < 0.1  # the next call left Redis alone
    assert vendor.count() == 2


# --- the real fake vendor: slow, down, 429, garbage ----------------------------------------------


def test_slow_down_429_and_garbage_on_one_loop(settings, vendor, backoff):
    configure(
        settings,
        vendor.url,
        TIMEOUT={"READ": 0.2},
        RETRY={"MAX_ATTEMPTS": 2, "DEADLINE": 5},
    )
    vendor.route("GET", "/v1/rates/SLOW", Reply.slow(1.0, Reply.json({"rate": 1})))
    vendor.route("GET", "/v1/rates/BUSY", Reply.rate_limited(0.01), Reply.json({"rate": 2}))
    vendor.route("GET", "/v1/rates/JUNK", Reply.garbage())
    down = unused_port_url()

    async def scenario() -> list[Any]:
        return await asyncio.gather(
            AsyncRates().rate("SLOW"),
            AsyncRates().rate("BUSY"),
            AsyncRates().rate("JUNK"),
            AsyncRates(base_url=down).rate("EUR"),
            return_exceptions=True,
        )

    slow, busy, junk, gone = on_one_loop(scenario)

    assert isinstance(slow, IntegrationTimeout) and slow.attempts == 2
    assert busy == 2  # retried after the vendor's Retry-After
    assert isinstance(junk, InvalidResponseError) and junk.attempts == 1  # not retried
    assert isinstance(gone, IntegrationUnavailable) and gone.attempts == 2
    assert 0.01 in backoff.sleeps


def test_the_deadline_cancels_an_attempt_that_trickles(settings, vendor):
    configure(settings, vendor.url, RETRY={"MAX_ATTEMPTS": 3, "DEADLINE": 0.6})
    vendor.route(
        "GET",
        "/v1/rates/EUR",
        Reply.trickle(Reply.json({"rate": 1, "pad": "x" * 100}), interval=0.05),
    )

    async def scenario() -> tuple[Any, float, int]:
        started = time.monotonic()
        error = (await gather(1, lambda: AsyncRates().rate("EUR")))[0]
        return error, time.monotonic() - started, open_async_connections("rates")

    error, took, connections = on_one_loop(scenario)

    assert isinstance(error, IntegrationTimeout)
    assert took < 1.2  # the deadline, not a read timeout that each trickled byte resets
    assert connections == 0
