"""Benchmark of the two carriers of processing: Celery and Django's Tasks (django-tasks-db).

    python bench/task_backends.py                 # 2,000 events per carrier (about a minute)
    python bench/task_backends.py --smoke         # 100 events: checks the harness

On the bench database (``bench.settings``: PostgreSQL, Redis as Celery's broker, the no-op
handler of ``bench/webhooks.py``), for each carrier in turn, in the same run:

1. **enqueue**: N stored events handed to the dispatcher's publisher
   (``webhooks.queueing.publish_process_batch``, ``DISPATCH_BATCH_SIZE`` = 20 keys per call, as
   the web process's dispatcher thread calls it), timed in this process: wall and CPU per event.
   Celery sends one ``webhooks.process_events`` message per 20 events; Django's Tasks insert one
   task row per event.
2. **drain**: one worker started on the full queue (Celery: ``--pool solo``; Django's Tasks:
   ``manage.py db_worker``, both one process taking one task at a time) until every event is
   ``processed``: events per second, and the CPU per event of the worker and of the PostgreSQL
   backends serving the bench database.

Prints the figures and the ratios django/celery, then one JSON line with
``enqueue_cpu_django_over_celery``, ``drain_rate_django_over_celery``,
``worker_cpu_django_over_celery``, ``db_cpu_django_over_celery`` and the raw figures. The
machine may be shared: rely on the same-run ratios and the CPU figures, not on absolute rates.
Exit status: 0 when both carriers processed every event, 1 otherwise, 3 when a piece is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # so that `webhooks` is the app, not bench/webhooks.py

from bench.database import (  # noqa: E402
    backend_pids,
    child_env,
    drop_database,
    recreate_database,
    require_redis,
    setup_django,
)
from bench.processes import (  # noqa: E402
    BenchError,
    Child,
    children_stopped_on_exit,
    cpu_of,
    wait_until,
)

PYTHON = sys.executable
CARRIERS = ("celery", "django")
BATCH = 20  # DISPATCH_BATCH_SIZE's default: what the dispatcher hands its publisher at most


def make_events(count: int, prefix: str) -> list[int]:
    from django.utils import timezone

    from webhooks.models import WebhookEvent

    now = timezone.now()
    events = WebhookEvent.objects.bulk_create(
        WebhookEvent(
            endpoint="bench", event_id=f"{prefix}-{i}", event_type="bench.noop",
            payload={"id": f"{prefix}-{i}"}, body=b"{}", received_at=now,
        )
        for i in range(count)
    )  # fmt: skip
    return [event.pk for event in events]


def enqueue(carrier: str, pks: list[int]) -> dict:
    from django.conf import settings
    from django.test import override_settings

    from webhooks.queueing import publish_process_batch

    with override_settings(WEBHOOKS={**settings.WEBHOOKS, "TASK_BACKEND": carrier}):
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(pks), BATCH):
            if not publish_process_batch(pks[start : start + BATCH]):
                raise BenchError(f"{carrier}: the publisher refused a batch")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"enqueue_wall_us": wall / len(pks) * 1e6, "enqueue_cpu_us": cpu / len(pks) * 1e6}


def start_worker(carrier: str, log_dir: Path) -> Child:
    env = child_env(TETHER_BENCH_TASK_BACKEND=carrier)
    if carrier == "celery":
        argv = [
            PYTHON, "-m", "celery", "-A", "sandbox_project.celery", "worker", "--pool", "solo",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", "WARNING", "--hostname", f"bench-tasks-{time.time_ns()}@%h",
        ]  # fmt: skip
    else:
        argv = [
            PYTHON, "manage.py", "db_worker", "--no-reload", "--no-startup-delay",
            "--interval", "0.05", "--verbosity", "0",
        ]  # fmt: skip
    return Child(f"{carrier} worker", argv, env=env, log=log_dir / f"{carrier}.log",
                 stdout_to_log=True)  # fmt: skip


def drain(
    carrier: str, pks: list[int], log_dir: Path, timeout: float, started: list[Child]
) -> dict:
    from webhooks.models import WebhookEvent

    def processed() -> int:
        return WebhookEvent.objects.filter(pk__in=pks, status="processed").count()

    db_before = {pid: cpu_of([pid]) for pid in backend_pids()}
    worker = start_worker(carrier, log_dir)
    started.append(worker)  # stopped on SIGTERM too (children_stopped_on_exit)
    try:
        # Timed from the first event processed, so that the worker's start-up is not counted.
        wait_until(lambda: processed() > 0 or not worker.alive(), timeout=min(timeout, 120),
                   what=f"the {carrier} worker to start", interval=0.01)  # fmt: skip
        if not worker.alive():
            raise BenchError(f"the {carrier} worker exited:\n{worker.log_tail()}")
        start, first = time.perf_counter(), processed()
        cpu_start = cpu_of([worker.pid])
        wait_until(lambda: processed() == len(pks), timeout=timeout,
                   what=f"{len(pks)} events processed by {carrier}", interval=0.05)  # fmt: skip
        seconds = time.perf_counter() - start
        worker_cpu = cpu_of([worker.pid]) - cpu_start
        db_cpu = sum(cpu_of([pid]) - db_before.get(pid, 0.0) for pid in backend_pids())
    finally:
        worker.stop()
    drained = len(pks) - first
    return {
        "drain_events_per_s": drained / seconds,
        "worker_cpu_us": worker_cpu / drained * 1e6,
        "db_cpu_us": db_cpu / drained * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.events = 100
    setup_django()
    try:
        import django_tasks_db  # noqa: F401

        from webhooks.queueing import publish_process_batch  # noqa: F401
    except ImportError as exc:
        print(f"bench/task_backends.py: missing: {exc} (pip install 'django-tether[tasks]')")
        return 3
    try:
        require_redis()
        recreate_database()
        import redis
        from django.conf import settings

        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("celery")
        results: dict[str, dict] = {}
        timeout = 60 if args.smoke else 600
        with (
            tempfile.TemporaryDirectory(prefix="tether-bench-tasks-") as tmp,
            children_stopped_on_exit() as started,
        ):
            for carrier in CARRIERS:
                pks = make_events(args.events, carrier)
                results[carrier] = enqueue(carrier, pks)
                results[carrier].update(drain(carrier, pks, Path(tmp), timeout, started))
    except BenchError as exc:
        print(f"bench/task_backends.py: {exc}")
        return 1
    finally:
        drop_database()

    print(f"{args.events:,} events per carrier, one worker process each, no-op handler")
    print(f"{'':10} {'enqueue µs/ev':>14} {'(CPU)':>8} {'drain ev/s':>11} "
          f"{'worker CPU µs/ev':>17} {'db CPU µs/ev':>13}")  # fmt: skip
    for carrier, r in results.items():
        print(f"{carrier:10} {r['enqueue_wall_us']:14.1f} {r['enqueue_cpu_us']:8.1f} "
              f"{r['drain_events_per_s']:11.1f} {r['worker_cpu_us']:17.1f} "
              f"{r['db_cpu_us']:13.1f}")  # fmt: skip
    c, d = results["celery"], results["django"]
    ratios = {
        "enqueue_cpu_django_over_celery": d["enqueue_cpu_us"] / c["enqueue_cpu_us"],
        "enqueue_wall_django_over_celery": d["enqueue_wall_us"] / c["enqueue_wall_us"],
        "drain_rate_django_over_celery": d["drain_events_per_s"] / c["drain_events_per_s"],
        "worker_cpu_django_over_celery": d["worker_cpu_us"] / c["worker_cpu_us"],
        "db_cpu_django_over_celery": d["db_cpu_us"] / c["db_cpu_us"],
    }
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    rounded = {k: {m: round(v, 1) for m, v in r.items()} for k, r in results.items()}
    print(json.dumps({**{k: round(v, 3) for k, v in ratios.items()}, "events": args.events,
                      **rounded}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
