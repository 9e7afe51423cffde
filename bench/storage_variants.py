"""Each hand optimisation of ``webhooks.storage`` on and off, in one process, interleaved.

    python bench/storage_variants.py [--events 300] [--rounds 6]

A diagnostic for issue #10 point 4: on the bench database (created and dropped), each round
runs every variant in turn (the order rotated each round); a variant stores ``--events`` new
events (the receive insert, autocommit), sends each of them again (the duplicate's insert), then
makes one processing attempt of each (``process_event`` with the bench's no-op handler), timing
each call (wall and this thread's CPU). Variants are the code as it is with one optimisation
swapped for its plain form, for the measurement only (this script replaces the storage
functions in its own process):

- ``as is``;
- ``no prepare``: ``WEBHOOKS["PREPARED_STATEMENTS"] = False``;
- ``client binding``: parameters bound in the client (Django's cursor, each field's
  ``get_db_prep_save``), as every other query of the ORM on this database;
- ``durable claim``: the claim without the CTE that relaxes its commit;
- ``ORM lock``: the claimed row loaded with ``select_for_update(skip_locked=True)``.

(A sixth, rows read past Django's cursor wrapper from psycopg's cursor, was measured at commit
704baff and removed from the code: it earned under 5 %.)

Prints per variant the median and mean per call; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

from bench.database import drop_database, recreate_database, setup_django  # noqa: E402

PHASES = ("insert", "duplicate", "process_event")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    setup_django()
    from django.conf import settings
    from django.db import connection
    from django.test import override_settings
    from django.utils import timezone

    import bench.webhooks  # noqa: F401  (the no-op handler)
    from bench.ingest import event_body
    from sandbox_project.celery import app
    from webhooks import dispatch, processing, storage
    from webhooks.models import WebhookEvent
    from webhooks.providers import get_provider

    original_statements = storage.statements

    def durable_statements(conn):
        found = original_statements(conn)
        return dataclasses.replace(found, claim_relaxed=found.claim)

    def orm_lock(event_pk, attempt, started_at):
        return (
            WebhookEvent.objects.select_for_update(skip_locked=True)
            .filter(pk=event_pk, attempts=attempt, last_attempt_at=started_at)
            .first()
        )

    @contextlib.contextmanager
    def variant(name):
        patches = []
        if name == "no prepare":
            webhooks = {**settings.WEBHOOKS, "PREPARED_STATEMENTS": False}
            with override_settings(WEBHOOKS=webhooks):
                yield
            return
        if name == "client binding":
            patches = [(storage, "binds_on_server", lambda conn: False)]
        elif name == "durable claim":
            patches = [(storage, "statements", durable_statements)]
        elif name == "ORM lock":
            patches = [(storage, "lock_claimed", orm_lock)]
        saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
        for obj, attr, value in patches:
            setattr(obj, attr, value)
        try:
            yield
        finally:
            for obj, attr, value in saved:
                setattr(obj, attr, value)
            storage._statements.clear()

    variants = ["as is", "no prepare", "client binding", "durable claim", "ORM lock"]
    times: dict[str, dict[str, list[tuple[float, float]]]] = {
        v: {p: [] for p in PHASES} for v in variants
    }
    provider = get_provider(settings.BENCH_ENDPOINT)
    recreate_database()
    serial = 0
    try:
        app.control.purge()
        WebhookEvent.objects.exists()

        def timed(v, phase, func, *a):
            wall, cpu = time.perf_counter(), time.thread_time()
            result = func(*a)
            times[v][phase].append((time.perf_counter() - wall, time.thread_time() - cpu))
            return result

        for round_ in range(args.rounds + 1):  # round 0 warms up and is not kept
            order = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
            for v in order:
                with variant(v):
                    events = []
                    for _ in range(args.events):
                        serial += 1
                        body = event_body("variant", serial)
                        parsed = provider.parse(body, {})
                        event = WebhookEvent(
                            endpoint=provider.endpoint, event_id=parsed.event_id,
                            event_type=parsed.event_type, body=body, payload=parsed.payload,
                            headers={}, status=WebhookEvent.Status.RECEIVED,
                            received_at=timezone.now(), occurred_at=parsed.occurred_at,
                        )  # fmt: skip
                        inserted, _ = timed(v, "insert", storage.insert_or_compare, event,
                                            "default")  # fmt: skip
                        assert inserted
                        copy = WebhookEvent(**{f.attname: getattr(event, f.attname)
                                               for f in WebhookEvent._meta.concrete_fields
                                               if f.attname != "id"})  # fmt: skip
                        again, same = timed(v, "duplicate", storage.insert_or_compare, copy,
                                            "default")  # fmt: skip
                        assert not again and same
                        events.append(event.pk)
                    for pk in events:
                        status = timed(v, "process_event", processing.process_event, pk)
                        assert status == WebhookEvent.Status.PROCESSED, status
                    if round_ == 0:
                        times[v] = {p: [] for p in PHASES}
                connection.close()  # each variant's round starts on a new connection
        dispatch.dispatcher.flush()
    finally:
        app.control.purge()
        drop_database()

    print(f"\n{args.events} events x {args.rounds} rounds per variant; per call, ms: "
          "wall median (mean) / CPU median (mean)")  # fmt: skip
    summary = {}
    for phase in PHASES:
        print(f"\n{phase}")
        base = statistics.fmean(w for w, _ in times["as is"][phase])
        base_cpu = statistics.fmean(c for _, c in times["as is"][phase])
        for v in variants:
            walls = [1000 * w for w, _ in times[v][phase]]
            cpus = [1000 * c for _, c in times[v][phase]]
            mean, cpu_mean = statistics.fmean(walls), statistics.fmean(cpus)
            print(f"  {v:<16}{statistics.median(walls):8.3f} ({mean:.3f}) / "
                  f"{statistics.median(cpus):.3f} ({cpu_mean:.3f})   wall x{mean / 1000 / base:.3f}"
                  f"  CPU x{cpu_mean / 1000 / base_cpu:.3f}")  # fmt: skip
            summary[f"{phase}/{v}"] = {
                "wall_ms_median": round(statistics.median(walls), 4),
                "wall_ms_mean": round(mean, 4),
                "cpu_ms_median": round(statistics.median(cpus), 4),
                "cpu_ms_mean": round(cpu_mean, 4),
            }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
