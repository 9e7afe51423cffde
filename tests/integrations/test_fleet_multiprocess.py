"""The shared policies across OS processes, against the real Redis, the real PostgreSQL (the
breaker) and a real HTTP fake vendor that records when each request arrived.

The issue asks for 10 s runs; a few seconds prove the same bounds here (every one-second window
of the run is checked), and keep the suite fast.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from integrations.testing import FakeVendor, RecordedRequest, Reply
from tests.integrations import fleet_procs

pytestmark = [pytest.mark.multiprocess, pytest.mark.django_db(transaction=True)]

SPAWN = multiprocessing.get_context("spawn")
PATH = "/v1/things"


def run_callers(
    integrations: dict[str, Any],
    service: str,
    *,
    processes: int,
    seconds: float,
    threads: int = 1,
) -> tuple[list[dict[str, int]], float]:
    """``processes`` spawned processes (``threads`` threads each) calling ``service`` as fast as
    they can for ``seconds``; their outcome counts, and the ``time.monotonic()`` at which they
    were all released."""
    barrier = SPAWN.Barrier(processes + 1)
    queue = SPAWN.Queue()
    db_name = connection.settings_dict["NAME"]
    workers = [
        SPAWN.Process(
            target=fleet_procs.call_until,
            args=(db_name, integrations, service, PATH, seconds, threads, barrier, queue),
        )
        for _ in range(processes)
    ]
    results = []
    try:
        for worker in workers:
            worker.start()
        barrier.wait(timeout=120)
        released = time.monotonic()
        for _ in workers:
            status, value = queue.get(timeout=seconds + 120)
            assert status == "ok", value
            results.append(value)
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    return results, released


def integrations_for(vendor: FakeVendor, service: str, **policies: Any) -> dict[str, Any]:
    return {
        "REDIS_URL": settings.REDIS_URL,
        "RETRY": {"MAX_ATTEMPTS": 3, "BASE_DELAY": 0.05, "MAX_DELAY": 0.2, "DEADLINE": 5.0},
        "SERVICES": {service: {"BASE_URL": vendor.url, **policies}},
    }


def most_in_any_window(times: list[float], width: float) -> int:
    """The most of ``times`` (sorted) that fall in any window ``width`` seconds wide."""
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= width:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_four_processes_share_one_rate_limit(vendor):
    """4 processes calling as fast as they can under RATE_LIMIT 50/s (burst 5): the vendor
    sees at most 50 + 5 calls in every one-second window, and not much less than 50/s."""
    vendor.route("GET", "/warm", Reply.json({}))
    vendor.route("GET", PATH, Reply.json({"ok": True}))
    service = "fleet-rate"
    config = integrations_for(vendor, service, RATE_LIMIT={"RATE": "50/s", "BURST": 5})
    seconds = 4.0

    results, released = run_callers(config, service, processes=4, seconds=seconds)

    times = sorted(r.received_at for r in vendor.requests_to("GET", PATH))
    assert most_in_any_window(times, 1.0) <= 50 + 5
    # Steady state: not much less than the limit (the limiter does not starve the fleet).
    steady = [t for t in times if released + 1.0 <= t < released + seconds - 0.5]
    assert len(steady) >= 0.85 * 50 * (seconds - 1.5)
    assert sum(r.get("success", 0) for r in results) == len(times)
    # Every process got its share: the slots go to whoever asks, not to one winner.
    assert all(r.get("success", 0) >= 0.1 * len(times) for r in results)


def test_a_429_holds_every_process(vendor):
    """One process gets 429 with Retry-After: 2; the fake vendor then sees no call from any of
    the 4 processes for 2 s, after which calls resume."""
    answered_429: list[float] = []
    seen = 0
    lock = threading.Lock()

    def reply(request: RecordedRequest) -> Reply:
        nonlocal seen
        with lock:
            seen += 1
            if seen == 200:  # a second or so into the run, every process calling
                answered_429.append(time.monotonic())
                return Reply.rate_limited(2)
        return Reply.json({"ok": True})

    vendor.route("GET", "/warm", Reply.json({}))
    vendor.route("GET", PATH, reply)
    service = "fleet-cooldown"
    # A rate limit keeps 4 busy processes from saturating this 2-core machine; the cool-down is
    # what is tested.
    config = integrations_for(vendor, service, RATE_LIMIT="200/s", SHARED_COOLDOWN=True)

    results, _ = run_callers(config, service, processes=4, seconds=5.0)

    assert answered_429, "the vendor never answered 429"
    at = answered_429[0]
    times = sorted(r.received_at for r in vendor.requests_to("GET", PATH))
    # A request already on its way when the 429 left may still arrive just after it.
    assert [t - at for t in times if at + 0.1 < t < at + 1.95] == []
    resumed = [t for t in times if at + 1.95 <= t < at + 2.6]
    assert len(resumed) >= 20  # every process resumes: calls at the limit again
    assert sum(r.get("success", 0) for r in results) >= len(times) - 1


def most_at_once(vendor: FakeVendor, path: str = PATH) -> int:
    """The most requests to ``path`` the vendor was answering at once: overlaps of [arrived,
    replied], each within the time its caller held its bulkhead place."""
    events = []
    for answer in vendor.answers:
        if answer.request.path == path and answer.replied_at is not None:
            events += [(answer.request.received_at, 1), (answer.replied_at, -1)]
    most = current = 0
    for _, step in sorted(events):
        current += step
        most = max(most, current)
    return most


def test_a_cluster_bulkhead_of_3_holds_across_4_processes_of_4_threads(vendor):
    vendor.route("GET", "/warm", Reply.json({}))
    vendor.route("GET", PATH, Reply.slow(0.05, Reply.json({"ok": True})))
    service = "fleet-bulkhead"
    config = integrations_for(vendor, service, CLUSTER_MAX_CONCURRENCY=3)

    results, _ = run_callers(config, service, processes=4, threads=4, seconds=3.0)

    assert most_at_once(vendor) == 3  # used to the full, never beyond
    assert vendor.max_in_flight <= 3
    assert all(r.get("success", 0) > 0 for r in results)
    assert sum(r.get("success", 0) for r in results) == vendor.count("GET", PATH)


def test_a_killed_process_gives_its_places_back_when_their_leases_end(vendor, settings):
    """A process holding all 3 places is killed (SIGKILL: no clean-up at all); the places come
    back when their leases end (the attempt's deadline + BULKHEAD_LEASE_MARGIN), not never."""
    from django.test import override_settings

    from integrations import ServiceClient, shared_state
    from integrations.fleet import BULKHEAD_LEASE_MARGIN

    vendor.route("GET", "/warm", Reply.json({}))
    vendor.route("GET", PATH, Reply.hang())
    vendor.route("GET", "/after", Reply.json({"ok": True}))
    service = "fleet-killed"
    config = integrations_for(vendor, service, CLUSTER_MAX_CONCURRENCY=3)
    config["RETRY"] = {"MAX_ATTEMPTS": 1, "DEADLINE": 1.5}
    barrier = SPAWN.Barrier(2)
    queue = SPAWN.Queue()
    holder = SPAWN.Process(
        target=fleet_procs.call_until,
        args=(connection.settings_dict["NAME"], config, service, PATH, 60.0, 3, barrier, queue),
    )
    holder.start()
    try:
        barrier.wait(timeout=120)
        while vendor.in_flight < 3:  # its 3 calls hang at the vendor, holding every place
            time.sleep(0.01)
        taken = time.monotonic()
        holder.kill()
        holder.join(timeout=10)
    finally:
        if holder.is_alive():
            holder.kill()
    with override_settings(INTEGRATIONS={**config, "RETRY": {"DEADLINE": 10.0}}):
        assert shared_state.leases_in_force(service) == 3  # the dead process's, still leased
        client = type("After", (ServiceClient,), {"service": service})()
        assert client.get_json("/after", operation="after") == {"ok": True}
        waited = time.monotonic() - taken
        # The holder's three leases end as far apart as its threads started (tens of ms on a
        # busy machine), and this call's place goes back within milliseconds: all are back
        # before the latest the first one may end.
        lease = 1.5 + BULKHEAD_LEASE_MARGIN
        while shared_state.leases_in_force(service) and time.monotonic() - taken < lease + 1.0:
            time.sleep(0.01)
        assert shared_state.leases_in_force(service) == 0
    assert lease - 0.3 <= waited < lease + 1.0


def test_retries_stay_within_the_budget_across_4_processes(vendor):
    """A vendor failing every call under steady load from 4 processes: retries, counted at the
    vendor, stay within the budget's ratio of first attempts (plus its minimum), where without a
    budget each call would be tried 3 times."""
    vendor.route("GET", "/warm", Reply.json({}))
    vendor.route("GET", PATH, Reply.server_error(503))
    service = "fleet-budget"
    config = integrations_for(
        vendor,
        service,
        RETRY_BUDGET={"RATIO": 0.1, "MIN_RETRIES_PER_SECOND": 1.0, "WINDOW": 2.0},
        BREAKER={"FAILURE_THRESHOLD": 1_000_000},  # the budget alone is under test
    )
    config["RETRY"] = {"MAX_ATTEMPTS": 3, "BASE_DELAY": 0.01, "MAX_DELAY": 0.02, "DEADLINE": 5.0}
    seconds = 4.0

    results, _ = run_callers(config, service, processes=4, seconds=seconds)

    calls = sum(sum(r.values()) for r in results)  # one first attempt each
    assert calls == sum(r.get("IntegrationUnavailable", 0) for r in results)
    retries = vendor.count("GET", PATH) - calls
    allowed = 0.1 * (calls + 4) + 1.0 * (seconds + 2.0)  # (+4: the warm-up calls' attempts)
    print(f"calls {calls}, retries {retries}, allowed {allowed:.1f}")
    assert 0 < retries <= allowed * 1.05, (calls, retries, allowed)
    assert retries < 0.2 * calls  # against 2 retries per call without the budget
