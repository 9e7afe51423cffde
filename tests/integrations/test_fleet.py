"""The shared policies in one process, against the real Redis (its own database number,
``TETHER_REDIS_DB``) and a real HTTP fake vendor: the rate limit's waits and refusals, the
cool-down after a 429 or a 503 with ``Retry-After``, settings and checks, and what happens when
Redis cannot be reached. Across processes: ``test_fleet_multiprocess.py``."""

from __future__ import annotations

import itertools
import logging
import time

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from integrations import AsyncServiceClient, ServiceClient, shared_state
from integrations.checks import check_integrations_settings
from integrations.exceptions import (
    CircuitOpenError,
    IntegrationUnavailable,
    RateLimited,
    RateLimitedError,
)
from integrations.models import CircuitBreaker
from integrations.policies import RateLimit
from integrations.signals import shared_state_unavailable
from integrations.testing import Reply, unused_port_url
from integrations.testing.stripe import FakeStripe
from integrations.vendors.stripe import StripeService
from tests.integrations.rates import Awaited
from tests.integrations.vendors.conftest import API_KEY, stripe_settings
from tests.servers import RedisServer

pytestmark = pytest.mark.django_db

PATH = "/v1/things"


class Things(ServiceClient):
    service = "things"


class AsyncThings(AsyncServiceClient):
    service = "things"


@pytest.fixture(params=["sync", "async"])
def make_things(request):
    """Makes the "things" client, as ``ServiceClient`` and as ``AsyncServiceClient`` (driven
    through ``Awaited``): the shared policies hold for both."""
    if request.param == "sync":
        return Things
    return lambda **kwargs: Awaited(AsyncThings(**kwargs))


def configure(settings, vendor, **policies):
    settings.INTEGRATIONS = {
        "REDIS_URL": settings.REDIS_URL,
        "RETRY": {"MAX_ATTEMPTS": 3, "BASE_DELAY": 0.01, "MAX_DELAY": 0.05, "DEADLINE": 5.0},
        "SERVICES": {"things": {"BASE_URL": vendor.url, **policies}},
    }


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100/s", RateLimit(100, 1.0, 1)),
        ("6000/m", RateLimit(6000, 60.0, 1)),
        ("5/10s", RateLimit(5, 10.0, 1)),
        ({"RATE": "80/s", "BURST": 10}, RateLimit(80, 1.0, 10)),
        (None, None),
    ],
)
def test_rate_limit_settings_parse(value, expected):
    assert RateLimit.parse(value) == expected


@pytest.mark.parametrize(
    "value",
    ["100", "100/fortnight", "0/s", "-1/s", 100, {"RATE": "1/s", "BURST": 0},
     {"RATE": "1/s", "BURST": True}, {"RATE": "1/s", "BRUST": 2}],
)  # fmt: skip
def test_bad_rate_limits_are_refused_naming_the_key(value):
    with pytest.raises(ImproperlyConfigured, match=r'SERVICES.*"RATE_LIMIT"'):
        RateLimit.parse(value, 'INTEGRATIONS["SERVICES"]["x"]["RATE_LIMIT"]')


def ids(settings, integrations):
    settings.INTEGRATIONS = integrations
    return [message.id for message in check_integrations_settings()]


def test_checks_of_the_shared_policies(settings):
    url = "redis://:hunter2@127.0.0.1:6379/0"
    assert ids(settings, {"REDIS_URL": url, "RATE_LIMIT": "10/s", "SHARED_COOLDOWN": True}) == []
    assert ids(settings, {"REDIS_URL": "http://:hunter2@x/"}) == ["integrations.E010"]
    assert ids(settings, {"REDIS_URL": url, "REDIS_TIMEOUT": 0}) == ["integrations.E010"]
    assert ids(settings, {"REDIS_URL": url, "SERVICES": {"a": {"RATE_LIMIT": "x"}}}) == [
        "integrations.E011"
    ]
    assert ids(settings, {"REDIS_URL": url, "SHARED_COOLDOWN": "yes"}) == ["integrations.E011"]
    assert ids(settings, {"SERVICES": {"a": {"RATE_LIMIT": "5/s"}}}) == ["integrations.E012"]
    assert ids(settings, {"SERVICES": {"a": {"CLUSTER_MAX_CONCURRENCY": 3}}}) == [
        "integrations.E012"
    ]
    assert ids(settings, {"SERVICES": {"a": {"RETRY_BUDGET": {"RATIO": 0.1}}}}) == [
        "integrations.E012"
    ]
    assert ids(settings, {"SERVICES": {"a": {"MAX_CONCURRENCY": 3}}}) == []  # no Redis needed
    for bad in ({"MAX_CONCURRENCY": 0}, {"CLUSTER_MAX_CONCURRENCY": 1.5},
                {"RETRY_BUDGET": {"RATIO": -1}}, {"RETRY_BUDGET": {"RATE": 0.1}},
                {"RETRY_BUDGET": 0.2}, {"RETRY_BUDGET": {"WINDOW": 0}}):  # fmt: skip
        assert ids(settings, {"REDIS_URL": url, "SERVICES": {"a": bad}}) == ["integrations.E011"]
    settings.INTEGRATIONS = {"REDIS_URL": "http://:hunter2@x/"}
    assert all("hunter2" not in str(m) + str(m.hint) for m in check_integrations_settings())


# -- rate limit -----------------------------------------------------------------------------


def test_calls_over_the_limit_wait_for_their_slot(make_things, settings, vendor):
    vendor.route("GET", PATH, Reply.json({}))
    vendor.route("GET", "/warm", Reply.json({}))
    configure(settings, vendor, RATE_LIMIT="20/s")  # a slot every 50 ms
    client = make_things()
    # The first call of a test also creates the breaker's row and the connections, after its
    # slot: on a busy machine that delays its arrival by tens of milliseconds. Not measured.
    client.get_json("/warm", operation="warm")
    started = time.monotonic()
    for _ in range(6):
        client.get_json(PATH, operation="get")
    took = time.monotonic() - started
    arrivals = [r.received_at for r in vendor.requests_to("GET", PATH)]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert took >= 5 * 0.05 - 0.01
    assert arrivals[-1] - arrivals[0] >= 5 * 0.05 - 0.03
    # Evenly spaced (burst 1); a slot is kept at the client, so one request delayed on its way
    # (a busy machine) arrives closer to the next: no gap is much below the interval.
    assert min(gaps) >= 0.03


def test_a_burst_goes_at_once_then_the_rate_holds(settings, vendor):
    # Sync only: each call of the async client here runs on a loop of its own (``Awaited``),
    # whose setup is too slow for the timing; test_async_client.py runs a burst on one loop.
    vendor.route("GET", PATH, Reply.json({}))
    configure(settings, vendor, RATE_LIMIT={"RATE": "2/s", "BURST": 4})
    client = Things()
    started = time.monotonic()
    for _ in range(4):
        client.get_json(PATH, operation="get")
    assert time.monotonic() - started < 0.45  # no wait (the next slot is 0.5 s away)
    client.get_json(PATH, operation="get")  # the fifth waits for the rate
    assert time.monotonic() - started >= 0.49


def test_a_slot_past_the_deadline_is_refused_at_once_and_not_taken(make_things, settings, vendor):
    vendor.route("GET", PATH, Reply.json({}))
    configure(settings, vendor, RATE_LIMIT="1/m", RETRY={"DEADLINE": 2.0})
    client = make_things()
    client.get_json(PATH, operation="get")
    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        client.get_json(PATH, operation="get")
    assert time.monotonic() - started < 0.5  # failed fast: no wait, no retry
    error = caught.value
    assert isinstance(error, RateLimitedError) and error.retryable
    assert 58 < error.retry_after <= 60
    assert error.attempts == 0
    assert "shared rate limit (1/60s (burst 1))" in str(error)
    assert vendor.count() == 1
    # Not the vendor's failure: the breaker counted nothing.
    assert CircuitBreaker.objects.get(name="things").consecutive_failures == 0
    # Nothing was reserved by the refusal: the slot after the first is still one minute out.
    tat = int(shared_state.get_redis().get(shared_state.key("things", "rate")))
    seconds, micros = shared_state.get_redis().time()
    assert tat - (seconds * 1_000_000 + micros) <= 60_000_000


def test_stripe_service_shares_the_same_rate_limit(settings):
    with FakeStripe(api_key=API_KEY) as fake:
        config = stripe_settings(fake.base_url, RATE_LIMIT="1/m", RETRY={"DEADLINE": 1.0})
        config["REDIS_URL"] = settings.REDIS_URL
        with override_settings(INTEGRATIONS=config):
            StripeService().create_customer("ada@example.com")
            with pytest.raises(RateLimited):
                StripeService().create_customer("bob@example.com")
        assert fake.count() == 1


# -- cool-down --------------------------------------------------------------------------------


def test_a_429_cools_down_every_caller_of_the_service(make_things, settings, vendor):
    vendor.route("GET", PATH, Reply.rate_limited(0.6), Reply.json({}))
    vendor.route("GET", "/other", Reply.json({}))
    configure(settings, vendor, SHARED_COOLDOWN=True, RETRY={"MAX_ATTEMPTS": 1})
    with pytest.raises(RateLimitedError):
        make_things().get_json(PATH, operation="get")
    left, reason = shared_state.cooldown_left("things")
    assert 0.4 < left <= 0.6
    assert reason == "429 from things.get"
    hit = time.monotonic()
    make_things().get_json("/other", operation="other")  # another caller: waits out the cool-down
    other = vendor.requests_to("GET", "/other")[0]
    assert other.received_at - hit >= left - 0.05


def test_a_cooldown_longer_than_the_deadline_fails_fast(make_things, settings, vendor):
    vendor.route("GET", PATH, Reply.error(503, headers={"Retry-After": "30"}), Reply.json({}))
    configure(settings, vendor, SHARED_COOLDOWN=True, RETRY={"MAX_ATTEMPTS": 1, "DEADLINE": 3})
    with pytest.raises(IntegrationUnavailable) as first:
        make_things().get_json(PATH, operation="get")
    assert first.value.retry_after == 30
    started = time.monotonic()
    with pytest.raises(RateLimited, match="cool-down") as caught:
        make_things().get_json(PATH, operation="get")
    assert time.monotonic() - started < 0.5
    assert 29 < caught.value.retry_after <= 30
    assert vendor.count() == 1


def test_a_503_without_retry_after_starts_no_cooldown(make_things, settings, vendor):
    vendor.route("GET", PATH, Reply.server_error(503), Reply.json({}))
    configure(settings, vendor, SHARED_COOLDOWN=True, RETRY={"MAX_ATTEMPTS": 1})
    with pytest.raises(IntegrationUnavailable):
        make_things().get_json(PATH, operation="get")
    assert shared_state.cooldown_left("things") == (0.0, "")
    make_things().get_json(PATH, operation="get")
    assert vendor.count() == 2


def test_without_shared_cooldown_a_429_holds_only_its_caller(make_things, settings, vendor):
    vendor.route("GET", PATH, Reply.rate_limited(30), Reply.json({}))
    configure(settings, vendor, RATE_LIMIT="1000/s", RETRY={"MAX_ATTEMPTS": 1})
    with pytest.raises(RateLimitedError):
        make_things().get_json(PATH, operation="get")
    make_things().get_json(PATH, operation="get")
    assert vendor.count() == 2


# -- Redis unreachable: fail open ---------------------------------------------------------------


def test_redis_down_fails_open_with_one_warning_and_a_signal(make_things, settings, vendor, caplog):
    vendor.route("GET", PATH, Reply.json({}))
    configure(settings, vendor, RATE_LIMIT="1/m", SHARED_COOLDOWN=True)
    port = unused_port_url().rsplit(":", 1)[1]  # a closed port: connections are refused
    settings.INTEGRATIONS = {
        **settings.INTEGRATIONS,
        "REDIS_URL": f"redis://:s3cret-password@127.0.0.1:{port}/0",
    }
    sent = []

    def receiver(sender, **kwargs):
        sent.append((sender, kwargs["error_class"]))

    shared_state_unavailable.connect(receiver)
    try:
        with caplog.at_level(logging.WARNING, logger="integrations.fleet"):
            started = time.monotonic()
            for _ in range(3):  # a 1/m limit would refuse the second: it is not applied
                make_things().get_json(PATH, operation="get")
            took = time.monotonic() - started
    finally:
        shared_state_unavailable.disconnect(receiver)
    assert vendor.count() == 3
    assert took < 1.0  # no call waits on the dead Redis past REDIS_TIMEOUT
    warnings = [r for r in caplog.records if r.name == "integrations.fleet"]
    assert len(warnings) == 1
    assert "failing open" in warnings[0].getMessage()
    assert sent == [("things", "ConnectionError")]  # later calls leave Redis alone for a while
    assert "s3cret" not in caplog.text


def test_a_redis_that_never_answers_costs_one_call_its_timeout(settings, vendor):
    """A listening socket that never answers (a hung Redis): the first call waits
    ``REDIS_TIMEOUT`` and goes out; the next ones do not wait again. (Sync here: the async
    client's calls through ``Awaited`` each set up a loop, too slow for the timing;
    test_async_client.py runs the same on one loop.)"""
    make_things = Things
    import socket

    vendor.route("GET", PATH, Reply.json({}))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        configure(settings, vendor, RATE_LIMIT="100/s")
        settings.INTEGRATIONS = {
            **settings.INTEGRATIONS,
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "REDIS_TIMEOUT": 0.2,
        }
        started = time.monotonic()
        make_things().get_json(PATH, operation="get")
        first = time.monotonic() - started
        make_things().get_json(PATH, operation="get")
        both = time.monotonic() - started
    assert 0.2 <= first < 0.6
    assert both - first < 0.1
    assert vendor.count() == 2


# -- slow calls count against the breaker ---------------------------------------------------


def test_slow_successes_open_the_breaker_when_their_rate_crosses_the_threshold(
    make_things, settings, vendor
):
    vendor.route("GET", PATH, Reply.slow(0.5, Reply.json({"ok": True})))
    vendor.route("GET", "/fast", Reply.json({"ok": True}))
    breaker = {
        "FAILURE_THRESHOLD": 1000,  # only the failure-rate rule can open it
        "FAILURE_RATE": 0.5,
        "MINIMUM_CALLS": 5,
        # Long: the test never straddles two windows (the previous one's calls would be
        # weighted below 1 and the rate estimated, not counted).
        "WINDOW": 3600.0,
        "CACHE_TTL": 0.0,
        "SLOW_CALL_THRESHOLD": 0.3,  # well above a fast call, even on a busy machine
    }
    settings.INTEGRATIONS = {
        "RETRY": {"MAX_ATTEMPTS": 1},
        "SERVICES": {"things": {"BASE_URL": vendor.url, "BREAKER": breaker}},
    }
    client = make_things()
    for _ in range(3):
        assert client.get_json("/fast", operation="fast") == {"ok": True}
    for _ in range(2):  # slow, but each caller still gets its answer
        assert client.get_json(PATH, operation="get") == {"ok": True}
    assert CircuitBreaker.objects.get(name="things").state == "closed"  # 2 of 5: under 50 %
    assert client.get_json(PATH, operation="get") == {"ok": True}  # 3 of 6: the rate is reached
    row = CircuitBreaker.objects.get(name="things")
    assert row.state == "open"
    assert "over the slow-call threshold (0.3s)" in row.last_error
    with pytest.raises(CircuitOpenError):
        client.get_json("/fast", operation="fast")


def test_without_a_threshold_slow_calls_are_successes(make_things, settings, vendor):
    vendor.route("GET", PATH, Reply.slow(0.15, Reply.json({"ok": True})))
    settings.INTEGRATIONS = {
        "SERVICES": {
            "things": {"BASE_URL": vendor.url, "BREAKER": {"FAILURE_THRESHOLD": 1}},
        },
    }
    for _ in range(3):
        make_things().get_json(PATH, operation="get")
    row = CircuitBreaker.objects.get(name="things")
    assert (row.state, row.consecutive_failures) == ("closed", 0)


# -- bulkhead -------------------------------------------------------------------------------


def most_at_once(vendor) -> int:
    """The most requests the vendor was answering at once: overlaps of [arrived, replied]
    (each lies within the time its caller held its place)."""
    events = []
    for answer in vendor.answers:
        if answer.replied_at is not None:
            events += [(answer.request.received_at, 1), (answer.replied_at, -1)]
    most = current = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        current += step
        most = max(most, current)
    return most


@pytest.mark.django_db(transaction=True)  # other threads: other connections
def test_a_process_bulkhead_caps_calls_in_flight(make_things, settings, vendor):
    from concurrent.futures import ThreadPoolExecutor

    vendor.route("GET", PATH, Reply.slow(0.1, Reply.json({})))
    configure(settings, vendor, MAX_CONCURRENCY=2)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: make_things().get_json(PATH, operation="get"), range(12)))
    assert results == [{}] * 12
    assert vendor.max_in_flight <= 2
    assert most_at_once(vendor) == 2


@pytest.mark.django_db(transaction=True)  # other threads: other connections
def test_a_full_bulkhead_fails_at_the_deadline_and_is_not_a_breaker_failure(
    make_things, settings, vendor
):
    import threading

    from integrations.exceptions import BulkheadFull

    vendor.route("GET", PATH, Reply.slow(1.0, Reply.json({})))
    configure(settings, vendor, MAX_CONCURRENCY=1, RETRY={"DEADLINE": 2.0})
    busy = threading.Thread(target=lambda: make_things().get_json(PATH, operation="get"))
    busy.start()
    while vendor.count() < 1:
        time.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(BulkheadFull, match="MAX_CONCURRENCY") as caught:
        make_things(retry={"DEADLINE": 0.3}).get_json(PATH, operation="get")
    assert 0.29 <= time.monotonic() - started < 0.8
    busy.join()
    assert caught.value.attempts == 0 and not caught.value.retryable
    assert vendor.count() == 1
    assert CircuitBreaker.objects.get(name="things").consecutive_failures == 0


def test_a_refused_call_gives_its_place_back(make_things, settings, vendor):
    """A call the breaker refuses, or the rate limit refuses, holds no place afterwards."""
    from integrations.fleet import in_flight
    from integrations.testing import force_breaker

    vendor.route("GET", PATH, Reply.json({}))
    configure(settings, vendor, MAX_CONCURRENCY=1, CLUSTER_MAX_CONCURRENCY=1, RATE_LIMIT="1/m")
    make_things().get_json(PATH, operation="get")
    with pytest.raises(RateLimited):
        make_things().get_json(PATH, operation="get")
    assert in_flight("things", 1) == 0
    assert shared_state.leases_in_force("things") == 0
    configure(settings, vendor, MAX_CONCURRENCY=1, CLUSTER_MAX_CONCURRENCY=1)
    force_breaker("things", "forced_open")
    with pytest.raises(CircuitOpenError):
        make_things().get_json(PATH, operation="get")
    assert in_flight("things", 1) == 0
    assert shared_state.leases_in_force("things") == 0


# -- retry budget ---------------------------------------------------------------------------


def test_retries_stop_when_the_budget_is_spent(make_things, settings, vendor, caplog):
    vendor.route("GET", PATH, Reply.server_error(503))
    # 10 % of first attempts, and 2 retries always allowed per 10 s window.
    configure(
        settings,
        vendor,
        RETRY_BUDGET={"RATIO": 0.1, "MIN_RETRIES_PER_SECOND": 0.2, "WINDOW": 10.0},
        BREAKER={"FAILURE_THRESHOLD": 1000},
    )
    errors = []
    with caplog.at_level(logging.INFO, logger="integrations"):
        for _ in range(10):
            with pytest.raises(IntegrationUnavailable) as caught:
                make_things().get_json(PATH, operation="get")
            errors.append(caught.value)
    # 10 first attempts allow 0.1 x 10 + 2 = 3 retries in all, whoever asks.
    retries = vendor.count() - 10
    assert retries == 3
    spent = [e for e in errors if e.retry_budget_spent]
    assert len(spent) >= 8
    assert sum(e.attempts for e in errors) == vendor.count()
    assert all(e.status_code == 503 for e in errors)  # the vendor's error, as without a budget
    finished = [r for r in caplog.records if "retry budget spent: not retried" in r.getMessage()]
    assert len(finished) == len(spent)
    assert all(r.retry_budget_spent for r in finished)
    first, retried = shared_state.budget_counts("things", 10.0)
    # The estimate weighs the previous bucket by what is left of the window: when the calls
    # straddle a bucket's end, the counts have decayed by the fraction of the window that
    # passed since (the calls take well under 2 s of the 10 s window). Never more than counted.
    assert 10.0 * 0.8 <= first <= 10.0
    assert 3.0 * 0.8 <= retried <= 3.0


def test_a_healthy_service_keeps_its_whole_budget(make_things, settings, vendor):
    """First attempts that succeed still earn retries: a later blip is retried."""
    vendor.route("GET", PATH, *[Reply.json({})] * 20, Reply.server_error(503), Reply.json({}))
    configure(
        settings,
        vendor,
        RETRY_BUDGET={"RATIO": 0.1, "MIN_RETRIES_PER_SECOND": 0, "WINDOW": 10.0},
    )
    for _ in range(21):
        make_things().get_json(PATH, operation="get")  # the 21st fails once, is retried, succeeds
    assert vendor.count() == 22


def test_the_budget_fails_open_when_redis_is_down(make_things, settings, vendor):
    vendor.route("GET", PATH, Reply.server_error(503), Reply.json({}))
    configure(settings, vendor, RETRY_BUDGET={"RATIO": 0.0, "MIN_RETRIES_PER_SECOND": 0})
    settings.INTEGRATIONS = {**settings.INTEGRATIONS, "REDIS_URL": "redis://127.0.0.1:1/0"}
    assert make_things().get_json(PATH, operation="get") == {}  # retried: no budget to ask
    assert vendor.count() == 2


@pytest.fixture
def own_redis():
    """A redis-server of the test's own: its script cache can be emptied, its commands
    counted."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_a_redis_that_lost_the_script_gets_it_again(make_things, settings, vendor, own_redis):
    """EVALSHA of a script Redis does not know (restarted, failed over) loads it and goes on."""
    vendor.route("GET", PATH, Reply.json({}))
    configure(settings, vendor, RATE_LIMIT="1/m")
    settings.INTEGRATIONS = {**settings.INTEGRATIONS, "REDIS_URL": own_redis.url}
    make_things().get_json(PATH, operation="get")
    shared_state.get_redis().script_flush()
    # The limit is applied (not failing open): the script was loaded again and ran.
    with pytest.raises(RateLimited):
        make_things().get_json(PATH, operation="get")
    assert vendor.count() == 1


def commands_sent(url: str, run) -> list[str]:
    """The commands clients sent the Redis at ``url`` while ``run()`` ran, as its MONITOR shows
    them (a script's own commands, shown as the "lua" client's, left out)."""
    import threading

    import redis

    sent: list[str] = []
    watcher = redis.Redis.from_url(url)
    with watcher.monitor() as monitor:
        ready = threading.Event()

        def listen() -> None:
            for command in monitor.listen():
                words = command["command"].split()
                if words[:2] == ["ECHO", "monitor-ready"]:
                    ready.set()
                elif words[:2] == ["ECHO", "monitor-end"]:
                    return
                elif ready.is_set() and command["client_type"] != "lua":
                    sent.append(words[0].lower())

        listener = threading.Thread(target=listen)
        listener.start()
        watcher.echo("monitor-ready")
        assert ready.wait(5)
        run()
        watcher.echo("monitor-end")
        listener.join(5)
    watcher.close()
    return sent


def configure_every_policy(settings, vendor, own_redis) -> None:
    """Every fleet policy on for "things", its shared state on ``own_redis``."""
    configure(
        settings,
        vendor,
        RATE_LIMIT={"RATE": "1000/s", "BURST": 100},
        SHARED_COOLDOWN=True,
        RETRY_BUDGET={"RATIO": 0.2},
        MAX_CONCURRENCY=4,
        CLUSTER_MAX_CONCURRENCY=4,
    )
    settings.INTEGRATIONS = {**settings.INTEGRATIONS, "REDIS_URL": own_redis.url}


def test_a_healthy_call_with_every_policy_costs_one_round_trip(settings, vendor, own_redis):
    """Rate limit, cool-down, retry budget, both bulkheads: one EVALSHA per healthy call, and
    nothing else (no TIME, no separate lease taken or given back on the call's path)."""
    vendor.route("GET", PATH, Reply.json({}))
    configure_every_policy(settings, vendor, own_redis)
    client = Things()
    client.get_json(PATH, operation="get")  # the script loaded
    sent = commands_sent(
        own_redis.url,
        lambda: [client.get_json(PATH, operation="get") for _ in range(20)],
    )
    # The places given back went with the next call's script; one with no call after it soon
    # enough goes with the flusher's ZREM (none, or a few on a busy machine).
    assert sent.count("evalsha") == 20
    assert set(sent) <= {"evalsha", "zrem"} and sent.count("zrem") <= 3, sent
    assert shared_state.budget_counts("things", 10.0) == (21.0, 0.0)


def test_an_async_call_with_every_policy_costs_one_round_trip_too(settings, vendor, own_redis):
    """``AsyncServiceClient`` sends the same admission script through redis.asyncio: one
    EVALSHA per healthy call, its fleet place given back with the next admission or by the
    flusher thread (no lease taken or given back on the call's path)."""
    from asgiref.sync import async_to_sync

    from integrations.testing import aclose_connections

    vendor.route("GET", PATH, Reply.json({}))
    configure_every_policy(settings, vendor, own_redis)
    client = AsyncThings()

    async def calls(count: int) -> None:
        try:
            for _ in range(count):
                assert await client.get_json(PATH, operation="get") == {}
        finally:
            await aclose_connections()

    async_to_sync(calls)(1)  # the script loaded
    sent = commands_sent(own_redis.url, lambda: async_to_sync(calls)(20))
    assert sent.count("evalsha") == 20
    # Besides, only the new connections' handshakes (the loop's client and the flusher's, once
    # each: HELLO, CLIENT SETINFO) and the flusher's ZREM of a place no call carried soon enough.
    handshakes = sent.count("hello") + sent.count("client")
    assert set(sent) <= {"evalsha", "zrem", "hello", "client"}, sent
    assert sent.count("zrem") <= 3 and handshakes <= 6, sent
    assert shared_state.budget_counts("things", 10.0) == (21.0, 0.0)
    assert shared_state.leases_in_force("things") == 0


def test_a_place_given_back_is_free_within_milliseconds_without_another_call(settings, vendor):
    """The place's ZREM is not on the call's path, but it is not left to the lease either: it
    goes with the next admission or, when none comes, within a few milliseconds."""
    vendor.route("GET", PATH, Reply.json({}))
    configure(settings, vendor, CLUSTER_MAX_CONCURRENCY=1)
    Things().get_json(PATH, operation="get")
    ended = time.monotonic()
    bulkhead = shared_state.key("things", "bulkhead")
    while shared_state.get_redis().zcard(bulkhead):  # read directly: nothing flushed by us
        assert time.monotonic() - ended < 0.1, "the place was not given back"
        time.sleep(0.001)
    assert time.monotonic() - ended < shared_state.GIVE_BACK_LOOK_MAX + 0.05


def test_places_given_back_go_with_the_next_admission(settings, vendor):
    """A bulkhead of 1, called back to back: each call is admitted at once, its predecessor's
    place given back in its own admission."""
    vendor.route("GET", PATH, Reply.json({}))
    configure(settings, vendor, CLUSTER_MAX_CONCURRENCY=1, RETRY={"DEADLINE": 1.0})
    client = Things()
    started = time.monotonic()
    for _ in range(30):
        client.get_json(PATH, operation="get")
    assert vendor.count() == 30
    assert time.monotonic() - started < 2.0  # never waited for a lease to end
    assert shared_state.leases_in_force("things") == 0


def test_a_forked_child_takes_and_gives_back_places_on_its_own(settings, vendor):
    """A child forked while its parent has a place waiting to be given back (a gunicorn or
    Celery prefork worker): the parent sends it, the child neither sends it again nor hangs on
    the parent's flusher's locks, and gives its own back."""
    from integrations.calls import fleet_guard_for
    from integrations.resilience import BackoffClock
    from tests.forking import in_a_child

    configure(settings, vendor, CLUSTER_MAX_CONCURRENCY=1)
    guard = fleet_guard_for("things")
    ticket = guard.enter("get", 5.0, BackoffClock(), 1)
    guard.leave("get", ticket, None)  # waiting in the parent, for its flusher

    def child() -> int:
        started = time.monotonic()
        ticket = guard.enter("get", 5.0, BackoffClock(), 1)  # once the parent's is back
        assert time.monotonic() - started < 1.0
        guard.leave("get", ticket, None)
        shared_state.flush_given_back()
        return shared_state.get_redis().zcard(shared_state.key("things", "bulkhead"))

    assert in_a_child(child) == 0
    assert shared_state.leases_in_force("things") == 0


# -- what operators see, when Redis cannot be read ------------------------------------------


def three_services(vendor, url: str, timeout: float = 0.25) -> dict:
    policies = {"RATE_LIMIT": "80/s", "SHARED_COOLDOWN": True, "CLUSTER_MAX_CONCURRENCY": 3}
    return {
        "REDIS_URL": url,
        "REDIS_TIMEOUT": timeout,
        "SERVICES": {name: {"BASE_URL": vendor.url, **policies} for name in ("a", "b", "c")},
    }


def test_status_reads_skip_a_redis_that_just_failed(settings, vendor):
    """A hung Redis (it accepts connections, never answers): the first status read waits
    REDIS_TIMEOUT and says why; the next ones, for other services too, do not wait again for
    UNREADABLE_FOR seconds, and still say why."""
    import socket

    from integrations.fleet_status import fleet_status

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        settings.INTEGRATIONS = three_services(vendor, f"redis://:pw@127.0.0.1:{port}/0", 0.3)
        started = time.monotonic()
        first = fleet_status("a")
        waited = time.monotonic() - started
        others = [fleet_status(name) for name in ("b", "c", "a")]
        all_three = time.monotonic() - started
    assert 0.3 <= waited < 0.8
    assert all_three - waited < 0.05
    assert [s.error for s in [first, *others]] == ["TimeoutError"] * 4
    assert all(s.rate_limit == "80/1s (burst 1)" and s.cluster_in_flight is None for s in others)
    assert "Redis unreadable (TimeoutError)" in others[0].summary()


def test_status_reads_ask_again_after_a_while_and_when_the_url_changes(settings, vendor):
    """Nothing listening on the port: refused. Remembered for UNREADABLE_FOR seconds; a new
    REDIS_URL is asked at once."""
    from integrations import fleet_status as status_module
    from integrations.fleet_status import fleet_status

    closed = unused_port_url().rsplit(":", 1)[1]
    settings.INTEGRATIONS = three_services(vendor, f"redis://:s3cret@127.0.0.1:{closed}/0")
    assert fleet_status("a").error == "ConnectionError"
    assert "s3cret" not in str(fleet_status("b").as_dict())
    settings.INTEGRATIONS = three_services(vendor, settings.REDIS_URL)
    shared_state.start_cooldown("a", 30, "429 from a.get")
    good = fleet_status("a")
    assert good.error is None and 29 < good.cooldown_left <= 30
    assert good.cooldown_reason == "429 from a.get" and good.cluster_in_flight == 0
    assert good.rate_used_last_second == 0
    assert status_module.UNREADABLE_FOR >= 1.0


def test_status_reads_forget_a_failure_after_unreadable_for(settings, vendor, own_redis):
    from integrations.fleet_status import UNREADABLE_FOR, fleet_status

    settings.INTEGRATIONS = three_services(vendor, own_redis.url)
    assert fleet_status("a").error is None
    own_redis.kill()
    assert fleet_status("a").error == "ConnectionError"
    own_redis.start()  # the same port, answering again
    assert fleet_status("b").error == "ConnectionError"  # remembered: not asked
    time.sleep(UNREADABLE_FOR + 0.1)
    assert fleet_status("b").error is None
