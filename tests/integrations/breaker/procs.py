"""Code run in OTHER OS processes by the multi-process breaker tests.

Each function is a ``multiprocessing`` 'spawn' target (a fresh interpreter: its own Django, its
own database connection, its own breaker snapshot) or, for the database-outage scenarios, the
``python -m tests.integrations.breaker.procs SCENARIO`` entry point of a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import traceback
from typing import Any


def setup_django(db_name: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ["TETHER_DB_NAME"] = db_name
    import django

    django.setup()


def _report(queue: Any, func: Any) -> None:
    try:
        queue.put(("ok", func()))
    except BaseException:
        queue.put(("error", traceback.format_exc()))


def record_failures(db_name, name, policy, count, barrier, queue) -> None:
    """Warm the snapshot, wait for the others, then make ``count`` failed calls. A call that
    finds the breaker open reports the failure of a permit granted just before it opened (a
    call that was already in flight), so every failure is recorded (after the opening, in the
    totals only: the generation that admitted it is over)."""
    setup_django(db_name)
    from integrations.breaker import CLOSED, Permit, get_breaker
    from integrations.exceptions import CircuitOpenError, IntegrationUnavailable

    def run() -> int:
        breaker = get_breaker(name, policy)
        breaker.acquire("op")
        barrier.wait(timeout=60)
        for _ in range(count):
            try:
                permit = breaker.acquire("op")
            except CircuitOpenError:
                permit = Permit(name, "op", CLOSED, 0)
            error = IntegrationUnavailable(name, "op", "server error", status_code=500)
            breaker.record_failure(permit, error)
        return count

    _report(queue, run)


def late_failures(db_name, name, policy, count, barrier, queue) -> None:
    """Take ``count`` permits while the breaker is closed (calls in flight before an outage),
    wait while the conductor runs the outage and the recovery, then report every one of
    them as failed. Returns the state this process then reads."""
    setup_django(db_name)
    from integrations.breaker import get_breaker
    from integrations.exceptions import IntegrationTimeout

    def run() -> str:
        breaker = get_breaker(name, policy)
        in_flight = [breaker.acquire("op") for _ in range(count)]
        barrier.wait(timeout=60)  # every process holds its permits
        barrier.wait(timeout=60)  # the breaker opened, and a probe closed it again
        for permit in in_flight:
            breaker.record_failure(permit, IntegrationTimeout(name, "op"))
        return breaker.snapshot(fresh=True).state

    _report(queue, run)


def race_acquire(db_name, name, policy, barrier, queue) -> None:
    """Warm the snapshot (an open breaker whose reset timeout has passed, or a half-open
    one; or none yet: the row is created on first use), wait for the others, then try once
    to get a permit."""
    setup_django(db_name)
    from integrations.breaker import get_breaker
    from integrations.exceptions import CircuitOpenError
    from integrations.models import CircuitBreaker

    def run() -> str:
        breaker = get_breaker(name, policy, probe_lease=60.0)
        if CircuitBreaker.objects.filter(name=name).exists():
            breaker.snapshot()  # warm: every process races on the same transition
        barrier.wait(timeout=60)
        try:
            permit = breaker.acquire("op")
        except CircuitOpenError:
            return "refused"
        return permit.state

    _report(queue, run)


def report_probe(db_name, name, policy, version, failed, barrier, queue) -> None:
    """Hold a half-open probe permit of ``version``; when all are lined up, report it."""
    setup_django(db_name)
    from integrations.breaker import HALF_OPEN, Permit, get_breaker
    from integrations.exceptions import IntegrationUnavailable

    def run() -> str:
        breaker = get_breaker(name, policy)
        breaker.snapshot()
        permit = Permit(name, "op", HALF_OPEN, version)
        barrier.wait(timeout=60)
        if failed:
            breaker.record_failure(permit, IntegrationUnavailable(name, "op"))
        else:
            breaker.record_success(permit)
        return "reported"

    _report(queue, run)


def watch_until_open(db_name, name, ready, queue, limit) -> None:
    """Call ``acquire`` every 5 ms until it fails fast; report the time it first did."""
    setup_django(db_name)
    from integrations.breaker import get_breaker
    from integrations.exceptions import CircuitOpenError

    def run() -> float | None:
        breaker = get_breaker(name)
        breaker.acquire("op")
        ready.set()
        deadline = time.time() + limit
        while time.time() < deadline:
            try:
                breaker.acquire("op")
            except CircuitOpenError:
                return time.time()
            time.sleep(0.005)
        return None

    _report(queue, run)


# -- database outage scenarios (run as a subprocess with the database at a closed port) ------


def _capture_errors() -> list[str]:
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(f"{record.levelname}:{record.getMessage()}")

    logger = logging.getLogger("integrations.breaker")
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    return messages


def outage(scenario: str, good_port: str) -> dict[str, Any]:
    import django

    django.setup()
    from django.db import connection

    from integrations.breaker import ManualClock, get_breaker
    from integrations.exceptions import CircuitOpenError, IntegrationUnavailable
    from integrations.policies import BreakerPolicy

    errors = _capture_errors()
    clock = ManualClock()
    policy = BreakerPolicy(cache_ttl=1.0, fail_open_on_db_error=scenario != "fail_closed")
    breaker = get_breaker("outage-svc", policy, clock=clock)
    result: dict[str, Any] = {}
    try:
        permit = breaker.acquire("op")
        result["permit"] = permit.state
        result["degraded"] = permit.degraded
        breaker.record_failure(permit, IntegrationUnavailable("outage-svc", "op"))
        breaker.record_success(permit)
        result["recorded"] = True
    except CircuitOpenError as exc:
        result["circuit_open"] = True
        result["retry_after"] = exc.retry_after
    started = time.perf_counter()
    for _ in range(100):  # within the TTL the dead database is not asked again
        with contextlib.suppress(CircuitOpenError):
            breaker.acquire("op")
    result["hundred_calls_seconds"] = time.perf_counter() - started
    result["state"] = breaker.state
    if scenario == "recovers":
        connection.close()
        connection.settings_dict["PORT"] = good_port
        clock.advance(1.0)
        result["state_after_recovery"] = breaker.state
        try:
            result["permit_after_recovery"] = breaker.acquire("op").state
        except CircuitOpenError:
            result["permit_after_recovery"] = "refused"
    result["errors"] = errors
    return result


def outage_mid_way() -> dict[str, Any]:
    """The database is up at first, then goes away (its port closed) while the process runs."""
    import django

    django.setup()
    from django.db import connection

    from integrations.breaker import ManualClock, get_breaker
    from integrations.exceptions import CircuitOpenError, IntegrationUnavailable
    from integrations.policies import BreakerPolicy

    errors = _capture_errors()
    clock = ManualClock()
    result: dict[str, Any] = {}
    healthy = get_breaker("healthy-svc", BreakerPolicy(), clock=clock)
    permit = healthy.acquire("op")
    tripped = get_breaker(
        "tripped-svc", BreakerPolicy(reset_timeout=30.0, cache_ttl=100.0), clock=clock
    )
    try:
        tripped.acquire("op")
    except CircuitOpenError as exc:
        result["open_before"] = exc.retry_after

    connection.close()
    connection.settings_dict["PORT"] = "1"

    # An outcome that cannot be written is logged, never raised into the caller.
    healthy.record_failure(permit, IntegrationUnavailable("healthy-svc", "op"))
    result["recorded_failure"] = True
    # The reset timeout passes: taking the half-open probe needs a write, which fails.
    clock.advance(35)
    probe = tripped.acquire("op")
    result["probe"] = (probe.state, probe.degraded)
    result["state"] = tripped.state
    result["errors"] = errors
    return result


if __name__ == "__main__":
    scenario = sys.argv[1]
    if scenario == "mid_way":
        print(json.dumps(outage_mid_way()))
    else:
        print(json.dumps(outage(scenario, sys.argv[2])))
