"""Benchmark of the outbound path: what ``ServiceClient`` adds to a healthy call.

    python bench/outbound.py            # full run (about 30 s)
    python bench/outbound.py --smoke    # tiny run that checks the harness (CI)

A fast local HTTP server runs in another process (``bench/fastserver.py``, a fixed small JSON
document over keep-alive connections). In this process, with Django set up on ``bench.settings``
(PostgreSQL database created and migrated by the script, Redis cache), five ways of making the
same GET + JSON parse are timed call by call, in interleaved rounds so that a change in the
machine's load affects all of them alike:

(a) a bare, reused ``httpx.Client`` (the baseline),
(b) ``ServiceClient.get_json`` with its breaker closed (database-backed breaker, retries),
(c) the same call with the breaker held open: it fails fast with ``CircuitOpenError``,
(d) the bare call through ``pybreaker`` with its Redis storage (``CircuitRedisStorage``),
(e) the bare call wrapped by tenacity alone,
(f) (b) with the shared rate limit on (a GCRA in Redis, one ``EVALSHA`` per call; a limit so
    high that no call waits) and the shared cool-down checked in the same round trip,
(g) (f) with every policy of the fleet set (rate limit, cool-down, retry budget, both
    bulkheads, slow-call counting): still one Redis round trip, the admission script taking the
    fleet bulkhead's lease and giving back the previous call's,
(h) the bare call behind the ``limits`` library's Redis limiter (its sliding-window counter, one
    Lua script per call), the peer of (f),
(j) a bare, reused ``httpx.AsyncClient`` on an event loop (the async baseline),
(k) ``AsyncServiceClient.get_json`` with its breaker closed, on the same loop,
(l) the same with the breaker held open: it fails fast with ``CircuitOpenError``.

The async cases are timed call by call inside the loop (each ``await`` between two clock
reads), in the same interleaved rounds as the others.

Prints median, p99 and mean per call, the CPU time per call (``time.process_time`` over each
batch: on a busy machine the steadier figure, since waiting for the CPU does not count), the
ratios to (a), the database queries per call of (b) (counted with ``connection.execute_wrapper``
over the measured calls) and, last, one JSON line with ``b_over_a``, ``open_fail_fast_us``,
``queries_per_call``, ``pybreaker_redis_over_a``, ``rate_limited_over_a``,
``all_policies_over_a``, ``limits_peer_over_a``, ``rate_limit_added_us`` (the median of (f)
minus (b); target: one Redis round trip, 200 µs), ``redis_round_trip_us`` ((i) minus (a)),
``one_round_trip_over_a`` ((i) over (a): the least any policy kept in Redis can cost, the floor
under ``all_policies_over_a``), ``all_policies_over_one_round_trip`` ((g) over (i)),
``async_b_over_a`` ((k) over (j); target 1.10), ``async_open_fail_fast_us`` ((l); target
50 µs) and ``cpu_us`` (CPU time per call of each case).
Exit status: 0 when every case ran, 1 when one failed, 3 when a piece of the app is missing.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # so that `webhooks` is the app, not bench/webhooks.py

from bench.database import (  # noqa: E402
    drop_database,
    recreate_database,
    require_redis,
    setup_django,
)
from bench.loadgen import percentile  # noqa: E402
from bench.processes import (  # noqa: E402
    PYTHON,
    BenchError,
    Child,
    children_stopped_on_exit,
)

PATH = "/v1/rates/usd"
SERVICE = "bench-vendor"
OPEN_SERVICE = "bench-vendor-open"
LIMITED_SERVICE = "bench-vendor-limited"
ALL_POLICIES_SERVICE = "bench-vendor-all"
#: So high that no measured call ever waits: (f) and (g) measure the limiter's cost only.
BENCH_RATE = "1000000/s"
LIMITS_NAMESPACE = "tether-bench-limits"
PYBREAKER_NAMESPACE = "tether-bench"
TARGETS = {
    "b_over_a": 1.10,
    "open_fail_fast_us": 50.0,
    "queries_per_call": 0.05,
    "rate_limit_added_us": 200.0,
    "all_policies_over_a": 1.15,
    "async_b_over_a": 1.10,
    "async_open_fail_fast_us": 50.0,
}
#: Reported next to the targets, without one of their own.
EXTRA_KEYS = [
    "pybreaker_redis_over_a",
    "rate_limited_over_a",
    "limits_peer_over_a",
    "redis_round_trip_us",
    "one_round_trip_over_a",
    "all_policies_over_one_round_trip",
    "cpu_us",
]
CASES = {
    "a": "(a) bare httpx.Client",
    "b": "(b) ServiceClient, breaker closed",
    "c": "(c) ServiceClient, breaker open",
    "d": "(d) pybreaker + Redis storage",
    "e": "(e) tenacity alone",
    "f": "(f) (b) + shared rate limit",
    "g": "(g) (b) + all shared policies",
    "h": "(h) limits (Redis) + bare",
    "i": "(i) one Redis PING + bare",
    "j": "(j) bare httpx.AsyncClient",
    "k": "(k) AsyncServiceClient, closed",
    "l": "(l) AsyncServiceClient, open",
}


class AsyncCase:
    """A case whose call is a coroutine, run on ``loop``: called (warm-up) it runs one call;
    ``timed(n)`` runs ``n`` calls on the loop and returns each one's duration (ns), read inside
    the loop so that the loop's own scheduling of a fresh coroutine is not counted."""

    def __init__(self, loop, make: Callable[[], object]) -> None:
        self.loop = loop
        self.make = make

    def __call__(self) -> object:
        return self.loop.run_until_complete(self.make())

    def timed(self, calls: int) -> list[int]:
        async def run() -> list[int]:
            perf = time.perf_counter_ns
            make = self.make
            out = []
            for _ in range(calls):
                start = perf()
                await make()
                out.append(perf() - start)
            return out

        return self.loop.run_until_complete(run())


def missing_pieces() -> list[str]:
    missing = []
    try:
        from integrations.client import ServiceClient  # noqa: F401
    except ImportError as exc:
        missing.append(f"integrations.client.ServiceClient ({exc})")
    try:
        from integrations.breaker import get_breaker  # noqa: F401
    except ImportError as exc:
        missing.append(f"integrations.breaker.get_breaker ({exc})")
    try:
        from integrations.breaker import force_open_breaker  # noqa: F401
    except ImportError as exc:
        missing.append(f"integrations.breaker.force_open_breaker ({exc})")
    try:
        import pybreaker

        pybreaker.CircuitRedisStorage  # noqa: B018
    except (ImportError, AttributeError) as exc:
        missing.append(f"pybreaker with CircuitRedisStorage (pip install pybreaker redis): {exc}")
    try:
        from integrations.fleet import FleetGuard  # noqa: F401
    except ImportError as exc:
        missing.append(f"integrations.fleet.FleetGuard ({exc})")
    try:
        import limits.strategies

        limits.strategies.SlidingWindowCounterRateLimiter  # noqa: B018
    except (ImportError, AttributeError) as exc:
        missing.append(f"limits with SlidingWindowCounterRateLimiter (pip install limits): {exc}")
    return missing


def clear_pybreaker_keys(redis_client) -> None:
    for pattern in (
        f"{PYBREAKER_NAMESPACE}:pybreaker:*",
        f"{LIMITS_NAMESPACE}*",
        f"tether:integrations:{LIMITED_SERVICE}:*",
        f"tether:integrations:{ALL_POLICIES_SERVICE}:*",
    ):
        keys = list(redis_client.scan_iter(pattern))
        if keys:
            redis_client.delete(*keys)


def build_cases(base_url: str) -> dict[str, Callable[[], object]]:
    """One zero-argument callable per case, each making the same GET + JSON parse."""
    import httpx
    import pybreaker
    import redis
    import tenacity
    from django.conf import settings

    from integrations.breaker import force_open_breaker
    from integrations.client import ServiceClient
    from integrations.exceptions import CircuitOpenError

    def bare_with(client: httpx.Client) -> Callable[[], object]:
        def call() -> object:
            response = client.get(PATH)
            response.raise_for_status()
            return response.json()

        return call

    timeout = httpx.Timeout(10.0, connect=3.05)
    bare = bare_with(httpx.Client(base_url=base_url, timeout=timeout))

    closed = type("BenchVendor", (ServiceClient,), {"service": SERVICE, "base_url": base_url})()
    opened = type(
        "BenchVendorOpen", (ServiceClient,), {"service": OPEN_SERVICE, "base_url": base_url}
    )()
    force_open_breaker(OPEN_SERVICE, actor="bench", reason="bench: fail-fast case", create=True)

    def service_closed() -> object:
        return closed.get_json(PATH, operation="rate")

    def service_open() -> object:
        try:
            opened.get_json(PATH, operation="rate")
        except CircuitOpenError:
            return None
        raise BenchError("the open breaker let a call through")

    redis_client = redis.Redis.from_url(settings.REDIS_URL)
    clear_pybreaker_keys(redis_client)
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, redis_client, namespace=PYBREAKER_NAMESPACE
    )
    py_breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, state_storage=storage)
    pyb_bare = bare_with(httpx.Client(base_url=base_url, timeout=timeout))

    def with_pybreaker() -> object:
        return py_breaker.call(pyb_bare)

    ten_bare = bare_with(httpx.Client(base_url=base_url, timeout=timeout))

    # (f), (g): the shared policies, on the settings as an application would set them.
    from django.test import override_settings

    from tether.conf import deep_merge

    override_settings(
        INTEGRATIONS=deep_merge(
            getattr(settings, "INTEGRATIONS", {}),
            {
                "REDIS_URL": settings.REDIS_URL,
                "SERVICES": {
                    LIMITED_SERVICE: {"RATE_LIMIT": BENCH_RATE},
                    ALL_POLICIES_SERVICE: {
                        "RATE_LIMIT": {"RATE": BENCH_RATE, "BURST": 100},
                        "SHARED_COOLDOWN": True,
                        "RETRY_BUDGET": {"RATIO": 0.2},
                        "MAX_CONCURRENCY": 64,
                        "CLUSTER_MAX_CONCURRENCY": 64,
                        "BREAKER": {"SLOW_CALL_THRESHOLD": 5.0},
                    },
                },
            },
        )
    ).enable()  # for the rest of the run
    limited = type(
        "BenchVendorLimited", (ServiceClient,), {"service": LIMITED_SERVICE, "base_url": base_url}
    )()
    all_policies = type(
        "BenchVendorAll", (ServiceClient,), {"service": ALL_POLICIES_SERVICE, "base_url": base_url}
    )()

    def service_limited() -> object:
        return limited.get_json(PATH, operation="rate")

    def service_all_policies() -> object:
        return all_policies.get_json(PATH, operation="rate")

    # (h): the limits library, the same limit, in front of the bare call.
    import limits
    import limits.storage
    import limits.strategies

    limits_storage = limits.storage.RedisStorage(settings.REDIS_URL)
    limiter = limits.strategies.SlidingWindowCounterRateLimiter(limits_storage)
    limit_item = limits.parse("1000000/second")  # BENCH_RATE, in its syntax
    limits_bare = bare_with(httpx.Client(base_url=base_url, timeout=timeout))

    def with_limits() -> object:
        if not limiter.hit(limit_item, LIMITS_NAMESPACE):
            raise BenchError("the limits library refused a call under a limit never reached")
        return limits_bare()

    # (i): the physical floor of "one Redis round trip": a PING on the same server, then the bare
    # call. What (f) adds to (b) beyond what (i) adds to (a) is the script's own work.
    ping_client = redis.Redis.from_url(settings.REDIS_URL)
    ping_bare = bare_with(httpx.Client(base_url=base_url, timeout=timeout))

    def with_ping() -> object:
        ping_client.ping()
        return ping_bare()

    @tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=8.0),
        retry=tenacity.retry_if_exception_type((httpx.TransportError, httpx.HTTPStatusError)),
        reraise=True,
    )
    def with_tenacity() -> object:
        return ten_bare()

    # (j), (k), (l): the async client and its bare peer, on one event loop.
    import asyncio

    from integrations.async_client import AsyncServiceClient

    loop = asyncio.new_event_loop()
    async_bare_client = httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def async_bare() -> object:
        response = await async_bare_client.get(PATH)
        response.raise_for_status()
        return response.json()

    async_closed = type(
        "AsyncBenchVendor", (AsyncServiceClient,), {"service": SERVICE, "base_url": base_url}
    )()
    async_opened = type(
        "AsyncBenchVendorOpen",
        (AsyncServiceClient,),
        {"service": OPEN_SERVICE, "base_url": base_url},
    )()

    async def async_service_closed() -> object:
        return await async_closed.get_json(PATH, operation="rate")

    async def async_service_open() -> object:
        try:
            await async_opened.get_json(PATH, operation="rate")
        except CircuitOpenError:
            return None
        raise BenchError("the open breaker let an async call through")

    return {
        "j": AsyncCase(loop, async_bare),
        "k": AsyncCase(loop, async_service_closed),
        "l": AsyncCase(loop, async_service_open),
        "a": bare,
        "b": service_closed,
        "c": service_open,
        "d": with_pybreaker,
        "e": with_tenacity,
        "f": service_limited,
        "g": service_all_policies,
        "h": with_limits,
        "i": with_ping,
    }


class QueryCounter:
    """Counts the queries run through Django's connection while installed."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        self.count += 1
        return execute(sql, params, many, context)


def measure(cases: dict[str, Callable[[], object]], rounds: int, per_round: int) -> tuple:
    from django.db import connection

    samples: dict[str, list[float]] = {key: [] for key in cases}
    cpu = dict.fromkeys(cases, 0.0)
    queries = {key: QueryCounter() for key in cases}
    keys = list(cases)
    perf = time.perf_counter_ns
    for round_number in range(rounds):
        order = keys[round_number % len(keys) :] + keys[: round_number % len(keys)]
        for key in order:
            call = cases[key]
            out = samples[key]
            gc.collect()
            with connection.execute_wrapper(queries[key]):
                cpu_started = time.process_time()
                if isinstance(call, AsyncCase):
                    out.extend(call.timed(per_round))
                    cpu[key] += time.process_time() - cpu_started
                    continue
                for _ in range(per_round):
                    start = perf()
                    call()
                    out.append(perf() - start)
                cpu[key] += time.process_time() - cpu_started
    counts = {key: counter.count for key, counter in queries.items()}
    return samples, counts, {key: cpu[key] / len(samples[key]) * 1e6 for key in cases}


def report(
    samples: dict[str, list[float]], queries: dict[str, int], cpu_us: dict[str, float]
) -> dict:
    stats = {}
    for key, values in samples.items():
        ordered = sorted(values)
        stats[key] = {
            "calls": len(values),
            "median_us": statistics.median(ordered) / 1000,
            "p99_us": percentile(ordered, 99) / 1000,
            "mean_us": statistics.fmean(ordered) / 1000,
            "queries_per_call": queries[key] / len(values),
            "cpu_us": cpu_us[key],
        }
    a = stats["a"]["median_us"]
    print()
    print(f"{'case':<36}{'calls':>7}{'median µs':>11}{'p99 µs':>9}{'mean µs':>9}{'x (a)':>7}"
          f"{'cpu µs':>8}{'x (a)':>7}{'queries/call':>14}")  # fmt: skip
    a_cpu = stats["a"]["cpu_us"]
    for key, label in CASES.items():
        s = stats[key]
        print(
            f"{label:<36}{s['calls']:>7}{s['median_us']:>11.1f}{s['p99_us']:>9.1f}"
            f"{s['mean_us']:>9.1f}{s['median_us'] / a:>7.2f}{s['cpu_us']:>8.1f}"
            f"{s['cpu_us'] / a_cpu:>7.2f}{s['queries_per_call']:>14.4f}"
        )
    summary = {
        "b_over_a": round(stats["b"]["median_us"] / a, 3),
        "open_fail_fast_us": round(stats["c"]["median_us"], 1),
        "queries_per_call": round(stats["b"]["queries_per_call"], 4),
        "pybreaker_redis_over_a": round(stats["d"]["median_us"] / a, 3),
        "rate_limited_over_a": round(stats["f"]["median_us"] / a, 3),
        "all_policies_over_a": round(stats["g"]["median_us"] / a, 3),
        "limits_peer_over_a": round(stats["h"]["median_us"] / a, 3),
        "rate_limit_added_us": round(stats["f"]["median_us"] - stats["b"]["median_us"], 1),
        "redis_round_trip_us": round(stats["i"]["median_us"] - a, 1),
        "one_round_trip_over_a": round(stats["i"]["median_us"] / a, 3),
        "all_policies_over_one_round_trip": round(
            stats["g"]["median_us"] / stats["i"]["median_us"], 3
        ),
        "cpu_us": {key: round(s["cpu_us"], 1) for key, s in stats.items()},
        "async_b_over_a": round(stats["k"]["median_us"] / stats["j"]["median_us"], 3),
        "async_open_fail_fast_us": round(stats["l"]["median_us"], 1),
    }
    checks = []
    at_most = ("b_over_a", "rate_limit_added_us", "all_policies_over_a", "async_b_over_a")
    for key, target in TARGETS.items():
        sign = "<=" if key in at_most else "<"
        met = summary[key] <= target if key in at_most else summary[key] < target
        checks.append(f"{key} = {summary[key]} (target {sign} {target}: "
                      f"{'met' if met else 'NOT met'})")  # fmt: skip
    print(f"tenacity alone: {stats['e']['median_us'] / a:.2f}x (a) on the median")
    print(
        f"shared rate limit: ours adds {stats['f']['median_us'] - stats['b']['median_us']:.1f} µs "
        f"to (b); the limits library adds {stats['h']['median_us'] - a:.1f} µs to (a); "
        f"one Redis PING adds {stats['i']['median_us'] - a:.1f} µs to (a)"
    )
    print(
        f"every fleet policy: {summary['all_policies_over_a']}x (a), against "
        f"{summary['one_round_trip_over_a']}x (a) for one Redis PING (the floor of any policy "
        f"kept in Redis): {summary['all_policies_over_one_round_trip']}x that floor"
    )
    print("ratios: " + "; ".join(checks))
    return summary


def clean_up(keep_db: bool) -> None:
    """Drop the database and pybreaker's keys; warn, never raise."""
    import redis
    from django.conf import settings

    steps = [("delete pybreaker's, limits' and the shared policies' keys",
              lambda: clear_pybreaker_keys(redis.Redis.from_url(settings.REDIS_URL)))]  # fmt: skip
    if not keep_db:
        steps.insert(0, ("drop the database", drop_database))
    # The breakers' batched successes are written before the database goes, not at exit into a
    # database that no longer exists.
    from integrations.breaker import flush_successes

    steps.insert(0, ("write the breakers' batched successes", flush_successes))
    for what, step in steps:
        try:
            step()
        except Exception as exc:
            print(f"bench/outbound.py: could not {what}: {exc}", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run, for CI")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    parser.add_argument("--per-round", type=int, default=500, help="calls per case per round")
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured calls per case")
    parser.add_argument("--keep-db", action="store_true", help="leave the database behind")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.per_round, args.warmup = 2, 50, 20
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_django()
    missing = missing_pieces()
    if missing:
        print("bench/outbound.py cannot run: these parts of the app are missing:")
        for item in missing:
            print(f"  - {item}")
        print(json.dumps({**dict.fromkeys([*TARGETS, *EXTRA_KEYS]), "missing": missing}))
        return 3
    import tempfile

    summary = dict.fromkeys([*TARGETS, *EXTRA_KEYS])
    status = 0
    with (
        tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp,
        children_stopped_on_exit() as started,
    ):
        created = False
        try:
            require_redis()
            db_name = recreate_database()
            created = True
            server = Child(
                "fastserver",
                [PYTHON, str(ROOT / "bench" / "fastserver.py"), "--max-seconds", "900"],
                env=None,
                log=Path(tmp) / "fastserver.log",
            )
            started.append(server)
            line = server.read_line(30)
            if not line.startswith("READY "):
                raise BenchError(f"fastserver did not start: {line!r}\n{server.log_tail()}")
            base_url = f"http://127.0.0.1:{line.split()[1]}"
            print(
                f"database {db_name}; vendor stand-in at {base_url}; "
                f"{args.rounds} rounds x {args.per_round} calls per case",
                flush=True,
            )
            cases = build_cases(base_url)
            for call in cases.values():
                for _ in range(args.warmup):
                    call()
            samples, queries, cpu_us = measure(cases, args.rounds, args.per_round)
            summary = report(samples, queries, cpu_us)
        except BenchError as exc:
            print(f"bench/outbound.py failed: {exc}", file=sys.stderr)
            status = 1
        finally:
            for child in started:
                child.stop()
            clean_up(args.keep_db or not created)
    print(json.dumps(summary))
    return status


if __name__ == "__main__":
    sys.exit(main())
