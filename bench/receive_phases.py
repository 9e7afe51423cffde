"""Where the time of one webhook delivery goes: the receive path's phases timed in-process.

    python bench/receive_phases.py [--events 2000] [--smoke]

A diagnostic companion to ``bench/ingest.py`` case (b): it runs the same steps as
``webhooks.receiving.receive_webhook`` one by one, on the bench database and broker (no HTTP, no
gunicorn), and prints the wall and CPU time of each per event: provider lookup and header check,
body read, signature verification (the stripe SDK), JSON parse, the insert (autocommit: it
includes the commit's WAL flush), and the enqueue as the request makes it; then the duplicate
path, one processing attempt per event as the Celery worker makes it (``process_event`` with the
no-op handler), and, for comparison, one Celery message per event, the dispatcher's batched
messages and a bare Redis ``LPUSH``.
Published tasks are purged at the end (no worker runs). It uses the receive module's internal
steps, so it names what it cannot find if they change.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # so that `webhooks` is the app, not bench/webhooks.py

from bench.database import drop_database, recreate_database, setup_django  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.events = 50
    setup_django()
    try:
        from webhooks import dispatch, receiving, storage
        from webhooks.processing import process_event
        from webhooks.providers import get_provider
        from webhooks.queueing import enqueue_on_commit, publish_process_batch, publish_process_task
        from webhooks.receiving import read_body
    except ImportError as exc:
        print(f"bench/receive_phases.py: a step of the receive path is missing: {exc}")
        return 3
    import redis
    from django.conf import settings
    from django.utils import timezone

    from bench.ingest import event_body, make_signer
    from sandbox_project.celery import app
    from webhooks.models import WebhookEvent

    def insert(event):
        return storage.insert_or_compare(event, "default").inserted

    def duplicate(event):
        inserted, same_body = storage.insert_or_compare(event, "default")
        if not inserted:
            receiving._note_duplicate(event, "default", same_body=same_body)
        return inserted

    recreate_database()
    sign, _ = make_signer()
    bodies = [event_body("phase", i) for i in range(args.events)]
    headers = [{**sign(b), "Content-Type": "application/json"} for b in bodies]
    phases: dict[str, list[tuple[float, float]]] = {}

    def timed(name: str, func, *a, **kw):
        wall, cpu = time.perf_counter(), time.thread_time()
        result = func(*a, **kw)
        phases.setdefault(name, []).append((time.perf_counter() - wall, time.thread_time() - cpu))
        return result

    try:
        # Warm up connections (database, broker) before timing.
        app.control.purge()
        publish_process_task(0)
        WebhookEvent.objects.exists()
        events = []
        for body, header in zip(bodies, headers, strict=True):
            provider = timed("1 provider + header check", _checked_provider, get_provider, header)
            raw = timed("2 read body", read_body, io.BytesIO(body), provider.max_body_bytes)
            timed("3 verify signature", provider.verify, raw, header)
            parsed = timed("4 parse JSON", provider.parse, raw, header)
            event = WebhookEvent(
                endpoint=provider.endpoint,
                event_id=parsed.event_id,
                event_type=parsed.event_type,
                body=raw,
                payload=parsed.payload,
                headers=provider.stored_headers(header),
                status=WebhookEvent.Status.RECEIVED,
                received_at=timezone.now(),
                occurred_at=parsed.occurred_at,
            )
            if not timed("5 insert (autocommit)", insert, event):
                raise RuntimeError("an event meant to be new was a duplicate")
            timed("6 enqueue, as the request does", enqueue_on_commit, event)
            events.append(event)
        dispatch.dispatcher.flush()  # the dispatcher's thread publishes what the requests handed it
        for event in events:
            timed("12 compare: one Celery message", publish_process_task, event.pk)
        for start in range(0, len(events), 20):  # the dispatcher's way: many events per message
            pks = [e.pk for e in events[start : start + 20]]
            wall, cpu = time.perf_counter(), time.thread_time()
            publish_process_batch(pks)
            per = (
                (time.perf_counter() - wall) / len(pks),
                (time.thread_time() - cpu) / len(pks),
            )
            phases.setdefault("13 compare: 20 per message", []).extend([per] * len(pks))
        for event in events:
            fields = [f.attname for f in WebhookEvent._meta.concrete_fields if f.attname != "id"]
            copy = WebhookEvent(**{name: getattr(event, name) for name in fields})
            if timed("7 duplicate: insert + compare", duplicate, copy):
                raise RuntimeError("a duplicate was inserted")
        # What the worker does per event (the no-op handler of bench/webhooks.py runs).
        import bench.webhooks  # noqa: F401  (registers the no-op handler)

        for event in events:
            status = timed("10 worker: process_event", process_event, event.pk)
            if status != WebhookEvent.Status.PROCESSED:
                raise RuntimeError(f"event ended {status!r}, not processed")
        client = redis.Redis.from_url(settings.REDIS_URL)
        message = b"x" * 1200  # about the size of a Celery message for one event pk
        for _ in range(args.events):
            timed("14 compare: a Redis LPUSH", client.lpush, "tether-bench:lpush", message)
        client.delete("tether-bench:lpush")
    finally:
        app.control.purge()
        drop_database()

    print(f"\n{args.events} events; per event, median (mean) in ms")
    print(f"{'phase':<34}{'wall':>16}{'CPU':>16}")
    for name, values in phases.items():
        walls = [1000 * w for w, _ in values]
        cpus = [1000 * c for _, c in values]
        print(
            f"{name:<34}{statistics.median(walls):>8.3f} ({statistics.fmean(walls):.3f})"
            f"{statistics.median(cpus):>8.3f} ({statistics.fmean(cpus):.3f})"
        )
    new = [k for k in phases if int(k.split()[0]) <= 6]
    total_wall = sum(statistics.fmean(w for w, _ in phases[k]) for k in new) * 1000
    total_cpu = sum(statistics.fmean(c for _, c in phases[k]) for k in new) * 1000
    print(f"{'new event in the request, 1-6':<34}{total_wall:>16.3f}{total_cpu:>16.3f}")
    return 0


def _checked_provider(get_provider, headers):
    provider = get_provider("bench")
    provider.check_headers(headers)
    return provider


if __name__ == "__main__":
    sys.exit(main())
