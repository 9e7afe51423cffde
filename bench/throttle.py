"""Does client-side adaptive throttling help? (issue #13: "Google SRE's client-side adaptive
throttling (K = 2) per process; measure whether it helps".)

    python bench/throttle.py            # full run (under a minute)
    python bench/throttle.py --smoke    # tiny run that checks the harness (CI)

One process: a ``FakeVendor`` (a real HTTP server on 127.0.0.1) and a ``ServiceClient`` making
calls that arrive at a fixed rate in virtual time (``integrations.testing.ManualBackoff``: call
``i`` starts at ``i / RATE`` seconds, its retries after their backoff; the waits are not slept,
so a minute of traffic runs in seconds, and the throttle's window slides on that clock). The
same calls, with the same vendor behaviour, are made with ``ADAPTIVE_THROTTLE`` off (the
baseline) and on, and each run is reported as ratios against the baseline of the same scenario:

- **outage**: the vendor answers 503 to every request from 25 % to 50 % of the run (30 s of the
  default 120 s), then recovers;
- **capacity**: the vendor serves at most ``CAPACITY`` requests per (virtual) second and answers
  503 to the rest of that second's: overload, the case the SRE book designs the throttle for
  (the less we send, the more of it is accepted);
- **fraction**: the vendor answers 503 to 70 % of requests at random (seeded), however few it
  gets: failures that do not depend on load.

Retries as the defaults (3 attempts, here 0.1 s base delay). The circuit breaker is disabled
(as an operator would, ``force_breaker(..., "disabled")``), so that the throttle alone is
measured (in production the breaker would also act in the outage).

Prints, per run: requests that reached the vendor, calls that succeeded, calls rejected locally
(``Throttled``), and the ratios; last, one JSON line. The record of the run is written to
``bench/results/`` (``bench/run_record.py``).
Exit status: 0 when every run ran, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # so that `webhooks` is the app, not bench/webhooks.py

from bench import run_record  # noqa: E402
from bench.database import drop_database, recreate_database, setup_django  # noqa: E402
from bench.processes import BenchError  # noqa: E402

PATH = "/v1/rates/usd"
#: Calls per second of virtual time.
RATE = 10.0
#: Requests per virtual second the vendor of the "capacity" scenario serves.
CAPACITY = 4
SCENARIOS = ("outage", "capacity", "fraction")
#: The variants measured: (name, ADAPTIVE_THROTTLE).
VARIANTS = (
    ("off", None),
    ("K=2 WINDOW=120", {"K": 2.0, "WINDOW": 120}),
    ("K=2 WINDOW=10", {"K": 2.0, "WINDOW": 10}),
)


@dataclass
class Run:
    scenario: str
    variant: str
    calls: int
    vendor_requests: int = 0
    vendor_503: int = 0
    succeeded: int = 0
    throttled: int = 0
    failed: int = 0
    #: Requests that reached the vendor while it was down (outage only).
    requests_during_outage: int = 0
    #: Calls that succeeded among those made after the vendor came back (outage only).
    succeeded_after_recovery: int = 0
    calls_after_recovery: int = 0
    seconds: float = 0.0


def run_one(scenario: str, variant: str, policy: dict | None, calls: int, seed: int) -> Run:
    from django.test.utils import override_settings

    from integrations import ServiceClient
    from integrations.exceptions import IntegrationError, Throttled
    from integrations.resilience import use_backoff_clock
    from integrations.testing import FakeVendor, ManualBackoff, Reply, force_breaker
    from integrations.throttle import use_throttle_random

    run = Run(scenario, variant, calls)
    random.seed(seed)  # the retries' jitter (tenacity draws from the module's generator)
    vendor_random = random.Random(seed)
    lock = threading.Lock()
    down_from, down_until = calls * 0.25, calls * 0.5  # in calls (outage)
    state = {"call": 0}
    served: dict[int, int] = {}  # virtual second -> requests served (capacity)

    def answer(request):  # the vendor's decision, per request
        with lock:
            run.vendor_requests += 1
            if scenario == "outage":
                down = down_from <= state["call"] < down_until
                run.requests_during_outage += down
            elif scenario == "capacity":
                second = int(clock.now)
                down = served.get(second, 0) >= CAPACITY
                if not down:
                    served[second] = served.get(second, 0) + 1
            else:
                down = vendor_random.random() < 0.7
            run.vendor_503 += down
        return Reply.server_error(503) if down else Reply.json({"rate": "1.1"})

    service = f"bench-throttle-{scenario}-{variant.replace(' ', '-').replace('=', '')}"

    class Vendor(ServiceClient):
        pass

    Vendor.service = service
    clock = ManualBackoff(0.0)  # the calls' arrival times; retries' waits move it on
    with FakeVendor() as vendor:
        vendor.route("GET", PATH, answer)
        settings = {
            "SERVICES": {
                service: {
                    "BASE_URL": vendor.url,
                    "RETRY": {"MAX_ATTEMPTS": 3, "BASE_DELAY": 0.1, "MAX_DELAY": 1.0,
                              "DEADLINE": 10.0},
                    "ADAPTIVE_THROTTLE": policy,
                }
            }
        }  # fmt: skip
        draws = random.Random(seed + 1)
        started = time.perf_counter()
        with (
            override_settings(INTEGRATIONS=settings),
            use_backoff_clock(clock),
            use_throttle_random(draws.random),
        ):
            force_breaker(service, "disabled")
            client = Vendor()
            for i in range(calls):
                state["call"] = i
                clock.now = i / RATE
                after_recovery = scenario == "outage" and i >= down_until
                run.calls_after_recovery += after_recovery
                try:
                    client.get_json(PATH, operation="rate")
                except Throttled:
                    run.throttled += 1
                except IntegrationError:
                    run.failed += 1
                else:
                    run.succeeded += 1
                    run.succeeded_after_recovery += after_recovery
        run.seconds = round(time.perf_counter() - started, 2)
    return run


def ratio(value: float, baseline: float) -> float | None:
    return round(value / baseline, 3) if baseline else None


def report(runs: list[Run]) -> dict:
    summary: dict = {}
    by_scenario: dict[str, list[Run]] = {}
    for run in runs:
        by_scenario.setdefault(run.scenario, []).append(run)
    for scenario, group in by_scenario.items():
        base = group[0]
        print(f"\n{scenario}: {base.calls} calls at {RATE:g}/s (virtual time), "
              f"ratios against '{base.variant}' of the same run")  # fmt: skip
        print(f"{'variant':<16} {'to vendor':>9} {'x off':>6} {'succeeded':>9} {'x off':>6} "
              f"{'throttled':>9} {'failed':>6} {'in outage':>9} {'x off':>6} "
              f"{'ok after':>8} {'x off':>6} {'s':>5}")  # fmt: skip
        for run in group:
            figures = {
                "vendor_requests_over_off": ratio(run.vendor_requests, base.vendor_requests),
                "succeeded_over_off": ratio(run.succeeded, base.succeeded),
            }
            if scenario == "outage":
                figures["requests_during_outage_over_off"] = ratio(
                    run.requests_during_outage, base.requests_during_outage
                )
                figures["succeeded_after_recovery_over_off"] = ratio(
                    run.succeeded_after_recovery, base.succeeded_after_recovery
                )
            print(
                f"{run.variant:<16} {run.vendor_requests:>9} "
                f"{figures['vendor_requests_over_off']!s:>6} {run.succeeded:>9} "
                f"{figures['succeeded_over_off']!s:>6} {run.throttled:>9} {run.failed:>6} "
                f"{run.requests_during_outage if scenario == 'outage' else '-':>9} "
                f"{figures.get('requests_during_outage_over_off', '-')!s:>6} "
                f"{run.succeeded_after_recovery if scenario == 'outage' else '-':>8} "
                f"{figures.get('succeeded_after_recovery_over_off', '-')!s:>6} "
                f"{run.seconds:>5}"
            )
            if run is not base:
                summary[f"{scenario} {run.variant}"] = figures
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run, for CI")
    parser.add_argument("--calls", type=int, default=1200, help="calls per run (default 1200)")
    parser.add_argument("--seed", type=int, default=13, help="seed of the vendor's draws")
    args = parser.parse_args(argv)
    if args.smoke:
        args.calls = 60
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = time.time()
    setup_django()
    status, runs, summary = 0, [], {}
    created = False
    try:
        recreate_database()
        created = True
        for scenario in SCENARIOS:
            for variant, policy in VARIANTS:
                runs.append(run_one(scenario, variant, policy, args.calls, args.seed))
        summary = report(runs)
    except (BenchError, Exception) as exc:
        print(f"bench/throttle.py failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 1
    finally:
        from integrations.breaker import flush_successes

        flush_successes()
        if created:
            drop_database()
    path = run_record.write(
        "throttle",
        smoke=args.smoke,
        started_at=started_at,
        settings={"calls": args.calls, "seed": args.seed, "rate": RATE, "capacity": CAPACITY,
                  "variants": dict(VARIANTS)},
        summary=summary,
        results={"runs": [asdict(run) for run in runs]},
        status=status,
    )  # fmt: skip
    print(f"\nrecord: {path.relative_to(ROOT)}")
    print(json.dumps(summary))
    return status


if __name__ == "__main__":
    sys.exit(main())
