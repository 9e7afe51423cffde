"""What an ordered handler costs a processing attempt (``webhooks.ordering``), in process.

In a scratch database (``TETHER_BENCH_DB``, default ``bench_ordering``: created, migrated,
dropped at the end unless ``--keep``), each case processes ``--objects`` x ``--versions``
stored events, shuffled, one ``webhooks.processing.process_event`` after another (the claim's
transaction, then one per handler run), with no-op handlers, so that it measures the machinery:

- ``1 handler``: one unordered handler (the baseline);
- ``1 ordered``: one handler ordered by ``data.object.id`` (version: the event's occurred time):
  each run also locks (and for a key's first event creates) its key's row and, when the event is
  newer, updates it; a stale event's run ends ``skipped``;
- ``3 handlers`` and ``3 ordered``: the same with three handlers per event.

The cases alternate in ``--rounds`` rounds, so that the load of a shared machine falls on all
alike; each figure is the median over the rounds of the mean per event. Wall time and this
process's CPU time are reported (the database server's CPU is not in the latter); the ratios
against ``1 handler`` measured in the same run are what to compare across machines.

The last line is one JSON object. About a minute with the defaults on a 2-core machine;
``--smoke`` checks the harness in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TETHER_BENCH_DB", "bench_ordering")

from bench.database import drop_database, recreate_database, setup_django

CASES = ("1 handler", "1 ordered", "3 handlers", "3 ordered")
EVENT_TYPE = "customer.subscription.updated"


def noop_1(event: Any) -> None:
    """A no-op handler (module-level: a stable dotted path, so its ordering rows are its own)."""


def noop_2(event: Any) -> None:
    """A second no-op handler."""


def noop_3(event: Any) -> None:
    """A third no-op handler."""


def register(case: str) -> None:
    """Leave only the case's handlers in the registry."""
    from bench.settings import BENCH_ENDPOINT
    from webhooks.registry import OrderingSpec, registry

    registry.restore([])
    count = 3 if case.startswith("3") else 1
    ordering = OrderingSpec.build("data.object.id") if "ordered" in case else None
    for handler in (noop_1, noop_2, noop_3)[:count]:
        registry.register(BENCH_ENDPOINT, "customer.subscription.*", handler, ordering)


def store_events(objects: int, versions: int) -> list[int]:
    """``objects`` x ``versions`` received events of fresh subscriptions, shuffled; their pks."""
    from bench.settings import BENCH_ENDPOINT
    from webhooks.models import WebhookEvent

    run = uuid.uuid4().hex[:10]
    base = datetime(2026, 12, 1, tzinfo=UTC)
    events = []
    for obj in range(objects):
        for version in range(versions):
            event_id = f"evt_{run}_{obj}_{version}"
            payload = {
                "id": event_id,
                "object": "event",
                "type": EVENT_TYPE,
                "created": int(base.timestamp()) + version,
                "data": {"object": {"id": f"sub_{run}_{obj}", "object": "subscription"}},
            }
            events.append(
                WebhookEvent(
                    endpoint=BENCH_ENDPOINT,
                    event_id=event_id,
                    event_type=EVENT_TYPE,
                    body=json.dumps(payload).encode(),
                    payload=payload,
                    occurred_at=base + timedelta(seconds=version),
                )
            )
    random.shuffle(events)
    stored = WebhookEvent.objects.bulk_create(events, batch_size=1000)
    return [event.pk for event in stored]


def run_case(case: str, objects: int, versions: int) -> dict[str, float]:
    from webhooks import processing

    register(case)
    pks = store_events(objects, versions)
    wall, cpu = time.perf_counter(), time.process_time()
    statuses = [processing.process_event(pk) for pk in pks]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if set(statuses) != {"processed"}:
        raise SystemExit(f"{case}: not every event ended processed: {set(statuses)}")
    return {"wall_ms": wall / len(pks) * 1000, "cpu_ms": cpu / len(pks) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=200, help="objects per case (200)")
    parser.add_argument("--versions", type=int, default=10, help="versions per object (10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all cases (3)")
    parser.add_argument("--smoke", action="store_true", help="20 objects x 5 versions, 1 round")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    if args.smoke:
        args.objects, args.versions, args.rounds = 20, 5, 1

    setup_django()
    import logging

    logging.getLogger("webhooks").setLevel(logging.WARNING)  # not a line per skipped run
    from webhooks.registry import registry

    saved = registry.snapshot()
    name = recreate_database()
    try:
        rounds: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
        for _ in range(args.rounds):
            for case in CASES:
                rounds[case].append(run_case(case, args.objects, args.versions))
    finally:
        registry.restore(saved)
        if not args.keep:
            drop_database()
    result: dict[str, Any] = {
        "benchmark": "ordering",
        "database": name,
        "events_per_case": args.objects * args.versions,
        "objects": args.objects,
        "versions": args.versions,
        "rounds": args.rounds,
        "cases": {},
    }
    baseline = statistics.median(r["wall_ms"] for r in rounds["1 handler"])
    baseline_cpu = statistics.median(r["cpu_ms"] for r in rounds["1 handler"])
    print(f"{'case':<12} {'wall ms/event':>14} {'x 1 handler':>12} {'cpu ms/event':>13} {'x':>6}")
    for case in CASES:
        wall = statistics.median(r["wall_ms"] for r in rounds[case])
        cpu = statistics.median(r["cpu_ms"] for r in rounds[case])
        result["cases"][case] = {
            "wall_ms": round(wall, 3),
            "cpu_ms": round(cpu, 3),
            "wall_ratio": round(wall / baseline, 3),
            "cpu_ratio": round(cpu / baseline_cpu, 3),
        }
        print(
            f"{case:<12} {wall:>14.3f} {wall / baseline:>12.2f} {cpu:>13.3f} "
            f"{cpu / baseline_cpu:>6.2f}"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
