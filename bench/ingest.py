"""Benchmark of the inbound path: the webhook view under gunicorn, and end to end through Celery.

    python bench/ingest.py                               # full run (about 4 minutes)
    python bench/ingest.py --smoke                       # tiny run that checks the harness (CI)
    python bench/ingest.py --cases a,e,b --workers 3     # a subset, another set-up
    python bench/ingest.py --asgi                        # also (a), (b), (c), (e) under uvicorn

Starts gunicorn (2 sync workers, the issue's reference set-up for 2 cores; ``--workers`` tries
others) on a free port of 127.0.0.1 with ``bench.settings`` (the sandbox's settings on
PostgreSQL + Redis, DEBUG off), and drives it with Stripe events signed before timing. The HTTP
cases are driven by wrk (``bench/wrk.py``: a native generator, 1 thread, so that it takes as
little of the 2 cores as it can); (d), which posts exactly N events and waits for them to be
processed, by ``bench/loadgen.py``:

(a) a bare JSON view of the same project (the baseline),
(b) new events: ``POST /webhooks/bench/``, verified, stored and enqueued,
(c) duplicates of events stored in (b),
(d) end to end: N events posted until all are ``processed`` by a real Celery worker with a
    no-op handler, against N no-op Celery tasks sent directly and drained by the same worker,
(g) the same as (d) with three no-op handlers per event (``bench.three`` events: each handler
    runs in its own transaction with its run), in the same rounds as (d) and its baseline,
(h) the same as (g) with three handlers ordered by object (``ordering_key``): each round's
    events are N/10 objects x 10 versions, shuffled, posted to ``/webhooks/bench-ordered/``,
(e) the floor, new events: ``POST /bench/floor/``, a view that only reads the body, parses it
    and runs the app's receive statement (``bench/views.py``; a diagnostic, not the product),
(f) the floor, duplicates of events stored in (e).

(e) and (f) are the best any design that stores each event durably before answering could do
on this machine: b/e and c/f tell how close to it the webhook view gets.

Prints throughput and latency per case, the server's, the database's and the generator's CPU
per request, the ratios b/a, c/a and d/celery, then e/a, f/a, b/e and c/f, and, last, one JSON
line with ``b_over_a``, ``c_over_a``, ``b_p99_ms``, ``d_over_celery``, ``e_over_a``,
``f_over_a``, ``b_over_e``, ``c_over_f`` and ``generator``. Every run also writes its settings
and raw figures to ``bench/results/`` (``bench/run_record.py``).
With ``--asgi``, once the gunicorn cases are done, uvicorn (``--workers`` workers) serves the
same project as ASGI (``sandbox_project.asgi``: the async receive view, ``WebhookBodyLimit``;
Django's connection pool, ``TETHER_BENCH_DB_POOL``), and (a), (b), (c) and (e) run again in
rounds of their own against it, (a) and (e) being async views (``bench.views.bare_async``,
``floor_async``); the report puts their ratios beside the sync ones, and the JSON line gains
``asgi_b_over_a``, ``asgi_c_over_a``, ``asgi_b_over_e``, ``asgi_e_over_a`` and
``asgi_b_p99_ms``.
Exit status: 0 when every case ran without errors (targets are reported, not enforced), 1 when
a case failed, 3 when a piece of the app is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shlex
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # so that `webhooks` is the app, not bench/webhooks.py

from bench import run_record, wrk  # noqa: E402
from bench.database import (  # noqa: E402
    backend_pids,
    child_env,
    drop_database,
    recreate_database,
    require_redis,
    setup_django,
)
from bench.processes import (  # noqa: E402
    PYTHON,
    BenchError,
    Child,
    background_cpu_of,
    children_stopped_on_exit,
    cpu_of,
    free_port,
    machine_busy,
    wait_until,
)

ENDPOINT_PATH = "/webhooks/bench/"
ORDERED_PATH = "/webhooks/bench-ordered/"  # case (h)
#: Case (h): versions per object.
VERSIONS_PER_OBJECT = 10
BARE_PATH = "/bench/bare/"
FLOOR_PATH = "/bench/floor/"
#: The async views of (a) and (e) under ASGI (``--asgi``).
BARE_ASYNC_PATH = "/bench/bare-async/"
FLOOR_ASYNC_PATH = "/bench/floor-async/"
#: The cases ``--asgi`` runs under uvicorn, and its target (the sync view's floor ratio, b/e).
ASGI_CASES = "abce"
ASGI_TARGETS = {"asgi_b_over_e": 0.85}
ASGI_KEYS = ("asgi_b_over_a", "asgi_c_over_a", "asgi_b_over_e", "asgi_e_over_a", "asgi_b_p99_ms")
#: Connections of the load generators: wrk's default (``--connections``), and (d)'s.
CONNECTIONS = 16
HTTP_CASES = "abcef"
TARGETS = {"b_over_a": 0.5, "c_over_a": 0.7, "b_p99_ms": 25.0, "d_over_celery": 0.5}
#: The keys of the last line: the targets', then the floor's (reported, no target), then which
#: load generator drove the HTTP cases.
SUMMARY_KEYS = (*TARGETS, "e_over_a", "f_over_a", "b_over_e", "c_over_f", "generator")
GENERATOR = "wrk"
LABEL_WIDTH = 40

# A realistic Stripe event: the envelope of Stripe's API fixtures around a payment intent.
PAYMENT_INTENT = {
    "object": "payment_intent",
    "amount": 1099,
    "amount_capturable": 0,
    "amount_received": 1099,
    "capture_method": "automatic",
    "confirmation_method": "automatic",
    "created": 1732780800,
    "currency": "usd",
    "customer": "cus_QXg1hqf4jFNsqG",
    "description": None,
    "last_payment_error": None,
    "livemode": False,
    "metadata": {"order_id": "0"},
    "payment_method": "pm_1PgafyB7WZ01zgkW3H4r0z1c",
    "payment_method_types": ["card"],
    "receipt_email": "jenny.rosen@example.com",
    "status": "succeeded",
}


# --------------------------------------------------------------------------------------------
# What the benchmark needs from the app


def missing_pieces(cases: str, *, asgi: bool = False) -> list[str]:
    """What the chosen cases need of the app and is not there yet."""
    missing = []
    if asgi:
        import importlib.util

        for module, what in (("uvicorn", "uvicorn"), ("psycopg_pool", "psycopg-pool")):
            if importlib.util.find_spec(module) is None:
                missing.append(f"--asgi needs {what} (the test extra)")
    if not set(cases) & set("bcdgh"):
        return missing
    from django.urls import Resolver404, resolve

    try:
        resolve(ENDPOINT_PATH)
    except Resolver404:
        missing.append(
            "receive view: POST /webhooks/<endpoint>/ is not routed (webhooks/urls.py, "
            "webhooks/views.py)"
        )
    try:
        from webhooks.queueing import enqueue_on_commit  # noqa: F401
    except ImportError as exc:
        missing.append(f"webhooks.queueing.enqueue_on_commit ({exc})")
    try:
        from webhooks import registry

        registry.handlers_for  # noqa: B018
    except AttributeError:
        missing.append("webhooks.registry.handlers_for (the handler registry)")
    import bench.webhooks  # noqa: F401  (registers the no-op handler with @on)
    from sandbox_project.celery import app

    app.loader.import_default_modules()
    if set(cases) & set("dg") and "webhooks.process_event" not in app.tasks:
        missing.append("Celery task 'webhooks.process_event' is not registered (webhooks/tasks.py)")
    return missing


def make_signer():
    """(sign(body) -> headers, description): the app's test helper."""
    from django.conf import settings

    from webhooks.testing import sign_request

    return (lambda body: dict(sign_request(settings.BENCH_ENDPOINT, body))), (
        "webhooks.testing.sign_request"
    )


# --------------------------------------------------------------------------------------------
# Requests, built and signed before any timing


def event_body(
    run_id: str,
    index: int,
    event_type: str = "payment_intent.succeeded",
    *,
    version: tuple[int, int] | None = None,
) -> bytes:
    """Event ``index`` of ``run_id``; with ``version`` (object, version), that version of one
    object (case (h): the ordered handlers read ``data.object.id`` and its metadata's version)."""
    intent = {**PAYMENT_INTENT, "id": f"pi_{run_id}_{index:07d}"}
    intent["metadata"] = {"order_id": str(index)}
    if version is not None:
        intent["id"] = f"pi_{run_id}_obj{version[0]:05d}"
        intent["metadata"]["version"] = version[1]
    event = {
        "id": f"evt_{run_id}_{index:07d}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "data": {"object": intent},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": f"req_{run_id}_{index:07d}", "idempotency_key": None},
        "type": event_type,
    }
    return json.dumps(event, separators=(",", ":")).encode()


def raw_post(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "User-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        "Accept: */*; q=0.5, application/xml",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
    ]
    skip = {"host", "user-agent", "content-type", "content-length", "accept"}
    lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() not in skip]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def write_loadgen_requests(workdir: Path, name: str, requests: list[bytes]) -> Path:
    """The requests file of ``bench/loadgen.py`` (case (d)): a pickled ``list[bytes]``."""
    path = workdir / f"{name}.pkl"
    path.write_bytes(pickle.dumps(requests))
    return path


# --------------------------------------------------------------------------------------------
# Running the load generator and measuring the server


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, started: list[Child]) -> None:
        self.args = args
        self.workdir = workdir
        self.started = started
        self.server: Child | None = None  # gunicorn, then uvicorn with --asgi
        self.bare_path, self.floor_path = BARE_PATH, FLOOR_PATH
        self.port = 0
        self.run_id = f"b{uuid.uuid4().hex[:8]}"
        self.sign, self.signer_name = make_signer()
        # Bodies of the events stored by (b) and by (e), which (c) and (f) deliver again.
        self.stored: dict[str, list[bytes]] = {"b": [], "e": []}
        self.rounds_of_new: dict[str, int] = {"b": 0, "e": 0}

    # -- processes -----------------------------------------------------------------------
    def start(self, name: str, argv: list[str], **env: str) -> Child:
        child = Child(name, argv, env=child_env(**env), log=self.workdir / f"{name}.log")
        self.started.append(child)
        return child

    def start_gunicorn(self) -> None:
        self.port = free_port()
        argv = [
            PYTHON, "-m", "gunicorn", "sandbox_project.wsgi:application",
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(self.args.workers),
            "--worker-class", self.args.worker_class,
            "--threads", str(self.args.threads),
            "--backlog", "2048",
            "--timeout", "60",
            "--log-level", "warning",
        ]  # fmt: skip
        if self.args.profile:
            argv += ["--config", "python:bench.gunicorn_profile"]
        argv += shlex.split(self.args.gunicorn_args)
        self.server = self.start(
            "gunicorn",
            argv,
            BENCH_PROFILE_DIR=str(self.workdir),
            BENCH_PROFILE_CLOCK=self.args.profile or "cpu",
        )
        import httpx

        def ready() -> bool:
            if not self.server.alive():
                raise BenchError(f"gunicorn exited:\n{self.server.log_tail()}")
            try:
                return httpx.post(f"http://127.0.0.1:{self.port}{BARE_PATH}", timeout=2).is_success
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=60, what="gunicorn to answer")
        # Wait for every worker (each answers once it has booted).
        wait_until(
            lambda: len(self.server.children()) >= self.args.workers,
            timeout=30,
            what="gunicorn workers",
        )

    def start_uvicorn(self) -> None:
        """uvicorn with ``--workers`` workers, serving the project as ASGI, for ``--asgi``;
        (a) and (e) then go to the async bare and floor views."""
        self.port = free_port()
        argv = [
            PYTHON, "-m", "uvicorn", "sandbox_project.asgi:application",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.args.workers),
            "--backlog", "2048", "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        self.server = self.start("uvicorn", argv, TETHER_BENCH_DB_POOL="1")
        self.bare_path, self.floor_path = BARE_ASYNC_PATH, FLOOR_ASYNC_PATH
        import httpx

        def ready() -> bool:
            if not self.server.alive():
                raise BenchError(f"uvicorn exited:\n{self.server.log_tail()}")
            try:
                url = f"http://127.0.0.1:{self.port}{self.bare_path}"
                return httpx.post(url, timeout=2).is_success
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=60, what="uvicorn to answer")
        wait_until(
            lambda: len(self.server.children()) >= self.args.workers,
            timeout=30,
            what="uvicorn workers",
        )

    def loadgen(self, port: int, requests: Path, *, count: int, duration: float,
                expect: str = "") -> Child:  # fmt: skip
        """``bench/loadgen.py`` posting ``count`` requests (case (d))."""
        argv = [
            PYTHON, str(ROOT / "bench" / "loadgen.py"),
            "--port", str(port), "--requests", str(requests),
            "--concurrency", str(CONNECTIONS), "--count", str(count),
            "--duration", str(duration), "--timeout", "30",
        ]  # fmt: skip
        if expect:
            argv += ["--expect", expect]
        return self.start(f"loadgen-{len(self.started)}", argv)

    @staticmethod
    def loadgen_result(child: Child, timeout: float) -> dict:
        try:
            child.popen.wait(timeout)
        except Exception as exc:
            raise BenchError(f"the load generator did not finish in {timeout:.0f} s") from exc
        out = child.popen.stdout.read().decode().strip().splitlines()
        if child.popen.returncode != 0 or not out:
            raise BenchError(f"the load generator failed:\n{child.log_tail()}")
        child.stop()  # now, while its process group id cannot be another process's yet
        return json.loads(out[-1])

    def run_wrk(self, port: int, name: str, requests: list[bytes], *, seconds: int, expect: str,
                cycle: bool = False, snapshot=None) -> dict:  # fmt: skip
        """One wrk run of ``requests`` (each sent once, or round and round with ``cycle``)."""
        return wrk.run(
            self.start,
            port,
            wrk.write_requests(self.workdir / f"{name}.req", requests),
            seconds=seconds,
            connections=self.args.connections,
            threads=self.args.wrk_threads,
            expect=expect,
            cycle=cycle,
            snapshot=snapshot,
        )

    def drive(self, name: str, requests: list[bytes], *, seconds: int, expect: str,
              cycle: bool = False) -> dict:  # fmt: skip
        """One measured case against gunicorn, with the server's and the database's CPU and the
        machine's over the time wrk was sending."""
        workers = self.server.children()
        backends = backend_pids()

        def snapshot() -> tuple:
            # Backends that started during the case count from 0 (persistent connections: rare).
            pids = backends + [pid for pid in backend_pids() if pid not in backends]
            return cpu_of(workers), cpu_of(pids), machine_busy(), background_cpu_of(workers)

        result = self.run_wrk(self.port, name, requests, seconds=seconds, expect=expect,
                              cycle=cycle, snapshot=snapshot)  # fmt: skip
        before, after = result.pop("window")
        busy = after[2][0] - before[2][0]
        total = after[2][1] - before[2][1]
        result["server_cpu_s"] = after[0] - before[0]
        result["server_bg_cpu_s"] = max(0.0, after[3] - before[3])
        result["db_cpu_s"] = after[1] - before[1]
        result["machine_busy_s"], result["machine_total_s"] = busy, total
        return result

    # -- cases ---------------------------------------------------------------------------
    def case_bare(self, seconds: int, *, warmup: int = 0) -> dict:
        bodies = [event_body(self.run_id + "a", i) for i in range(64)]
        requests = [raw_post(self.port, self.bare_path, b, self.sign(b)) for b in bodies]
        if warmup:
            self.drive("bare", requests, seconds=warmup, cycle=True, expect='"ok"')
        return self.drive("bare", requests, seconds=seconds, cycle=True, expect='"ok"')

    def new_event_requests(
        self, prefix: str, count: int, path: str = ENDPOINT_PATH, **event: str
    ) -> tuple[list[bytes], list[bytes]]:
        """(requests, bodies): ``count`` new events posted to ``path``, signed (the floor view
        ignores the signature, but its requests are then the same bytes as the webhook view's)."""
        bodies = [event_body(self.run_id + prefix, i, **event) for i in range(count)]
        return [raw_post(self.port, path, b, self.sign(b)) for b in bodies], bodies

    def ordered_event_requests(self, prefix: str, count: int) -> list[bytes]:
        """Case (h): ``count`` events, ``count // 10`` objects x 10 versions, in a shuffled order
        (seeded by the prefix, so the same in every run), posted to the ordered endpoint."""
        objects = max(1, count // VERSIONS_PER_OBJECT)
        versions = [(i % objects, 1 + i // objects) for i in range(count)]
        random.Random(prefix).shuffle(versions)
        bodies = [
            event_body(self.run_id + prefix, i, version=version)
            for i, version in enumerate(versions)
        ]
        return [raw_post(self.port, ORDERED_PATH, b, self.sign(b)) for b in bodies]

    def stored_bodies(self, prefix: str, bodies: list[bytes]) -> list[bytes]:
        """Those of ``bodies`` (events ``prefix``) that the database holds: the ones (c) and (f)
        can deliver again (wrk does not wait for the answers still in flight when it stops)."""
        from webhooks.models import WebhookEvent

        marker = f"evt_{self.run_id}{prefix}_"
        stored = WebhookEvent.objects.filter(event_id__startswith=marker)
        indexes = sorted(int(i[len(marker) :]) for i in stored.values_list("event_id", flat=True))
        return [bodies[i] for i in indexes]

    def post_new(self, case: str, seconds: int, path: str) -> dict:
        """New events, signed just now (enough for ``seconds`` at --max-rate req/s), to ``path``
        for ``seconds``; those stored are kept for the duplicates of ``case``."""
        self.rounds_of_new[case] += 1
        prefix = f"{case}{self.rounds_of_new[case]}"
        requests, bodies = self.new_event_requests(prefix, int(seconds * self.args.max_rate), path)
        result = self.drive(f"new-{case}", requests, seconds=seconds, expect='"accepted"')
        self.stored[case] += self.stored_bodies(prefix, bodies)
        return result

    def case_new(
        self, seconds: int, *, warmup: int = 0, case: str = "b", path: str = ENDPOINT_PATH
    ) -> dict:
        """New events to the webhook view (b) or, as ``case_floor_new`` calls it, to the floor
        view (e)."""
        if warmup:
            self.post_new(case, warmup, path)
        return self.post_new(case, seconds, path)

    def case_duplicates(
        self, seconds: int, *, warmup: int = 0, of: str = "b", path: str = ENDPOINT_PATH
    ) -> dict:
        """Deliveries of events stored by case ``of`` ((b), or (e) for ``case_floor_duplicates``),
        re-signed now as a vendor's retry would be."""
        if not self.stored[of]:
            raise BenchError(f"duplicates need events stored by ({of})")
        requests = [raw_post(self.port, path, b, self.sign(b)) for b in self.stored[of]]
        name = f"duplicates-{of}"
        if warmup:
            self.drive(name, requests, seconds=warmup, cycle=True, expect='"duplicate"')
        return self.drive(name, requests, seconds=seconds, cycle=True, expect='"duplicate"')

    def case_floor_new(self, seconds: int, *, warmup: int = 0) -> dict:
        """(e): new events to the floor view (``bench.views.floor``), as (b) posts them."""
        return self.case_new(seconds, warmup=warmup, case="e", path=self.floor_path)

    def case_floor_duplicates(self, seconds: int, *, warmup: int = 0) -> dict:
        """(f): events stored by (e), delivered to the floor view again."""
        return self.case_duplicates(seconds, warmup=warmup, of="e", path=self.floor_path)

    # -- end to end ----------------------------------------------------------------------
    def start_worker(self) -> Child:
        argv = [
            PYTHON, "-m", "celery", "-A", "sandbox_project.celery", "worker",
            "--pool", "prefork", "--concurrency", str(self.args.celery_concurrency),
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", "WARNING", "--hostname", f"bench-{self.run_id}@%h",
        ]  # fmt: skip
        return self.start("celery", argv)

    def drain_noop_tasks(self, count: int, timeout: float) -> tuple[float, float]:
        """Send ``count`` no-op tasks and wait until all ran: (start, end) wall-clock times."""
        from bench.tasks import DONE_KEY, _redis, noop

        _redis().delete(DONE_KEY)
        start = time.time()
        for _ in range(count):
            noop.apply_async()
        wait_until(
            lambda: int(_redis().get(DONE_KEY) or 0) >= count,
            timeout=timeout,
            what=f"{count} no-op Celery tasks to run",
            interval=0.02,
        )
        return start, time.time()

    def post_until_processed(
        self, prefix: str, count: int, timeout: float, *, ordered: bool = False, **event: str
    ) -> tuple[dict, float]:
        """Post ``count`` new events and wait until all are processed: (loadgen result, end)."""
        from django.db.models import Count

        from webhooks.models import WebhookEvent

        if ordered:
            requests = self.ordered_event_requests(prefix, count)
        else:
            requests, _ = self.new_event_requests(prefix, count, **event)
        path = write_loadgen_requests(self.workdir, f"new-{prefix}", requests)
        child = self.loadgen(self.port, path, count=count, duration=timeout, expect='"accepted"')
        events = WebhookEvent.objects.filter(event_id__startswith=f"evt_{self.run_id}{prefix}_")
        states: dict[str, int] = {}

        def all_processed() -> bool:
            nonlocal states
            states = dict(events.values_list("status").annotate(n=Count("id")))
            if states.get("failed") or states.get("ignored"):
                raise BenchError(f"events did not end processed: {states}")
            if child.popen.poll() not in (None, 0):
                raise BenchError(f"the load generator failed:\n{child.log_tail()}")
            return states.get("processed", 0) >= count

        try:
            wait_until(all_processed, timeout=timeout, what=f"{count} events", interval=0.02)
        except BenchError as exc:
            raise BenchError(f"{exc} (by status: {states})") from exc
        end = time.time()
        return self.loadgen_result(child, 60), end

    def case_end_to_end(self) -> dict[str, dict]:
        from sandbox_project.celery import app

        # Tasks enqueued by (b) and (c) had no worker: drop them, so the worker starts idle.
        app.control.purge()
        n = self.args.e2e_events
        timeout = 120 + n / 20
        worker = self.start_worker()
        try:
            self.drain_noop_tasks(4, timeout=60)  # the worker is up and warm
        except BenchError as exc:
            raise BenchError(f"{exc}: is the Celery worker running?\n{worker.log_tail()}") from exc
        self.post_until_processed("w", 8, timeout=60)  # warm the processing path too
        from bench.webhooks import THREE_HANDLERS_TYPE

        three = {"event_type": THREE_HANDLERS_TYPE}
        if "g" in self.args.cases:
            self.post_until_processed("wg", 8, timeout=60, **three)
        if "h" in self.args.cases:
            self.post_until_processed("wh", 20, timeout=60, ordered=True)

        # (d), (g) and their baseline alternate in rounds (N split between them, order rotated
        # each round), so that a change in the machine's load hits them alike.
        rounds = max(1, min(self.args.e2e_rounds, n))
        celery = {"n": 0, "wall_s": 0.0}
        measured = [key for key in "dgh" if key in self.args.cases]
        e2e = {key: {"n": 0, "wall_s": 0.0, "post_ok": 0, "post_wall_s": 0.0,
                     "post_p99_ms": 0.0, "errors": {}} for key in measured}  # fmt: skip
        for number in range(rounds):
            size = n // rounds + (1 if number < n % rounds else 0)
            order = ["celery", *measured]
            shift = number % len(order)
            for which in order[shift:] + order[:shift]:
                if which == "celery":
                    start, end = self.drain_noop_tasks(size, timeout)
                    celery["n"] += size
                    celery["wall_s"] += end - start
                    continue
                posted, end = self.post_until_processed(
                    f"{which}{number}", size, timeout, ordered=which == "h",
                    **(three if which == "g" else {}),
                )  # fmt: skip
                case = e2e[which]
                case["n"] += size
                case["wall_s"] += end - posted["started_at"]
                case["post_ok"] += posted["ok"]
                case["post_wall_s"] += posted["wall_s"]
                case["post_p99_ms"] = max(case["post_p99_ms"], posted["p99_ms"])
                for kind, count in posted["errors"].items():
                    case["errors"][kind] = case["errors"].get(kind, 0) + count
        celery["throughput"] = celery["n"] / celery["wall_s"]
        for case in e2e.values():
            case["throughput"] = case["n"] / case["wall_s"]
            case["post_throughput"] = case["post_ok"] / case["post_wall_s"]
        results = {**e2e, "celery": celery}
        # Diagnosis, not part of the ratio: the worker's drain rate alone, with the queue filled
        # first (consumer paused), for webhooks and for no-op tasks alike.
        try:
            results.update(self.drain_alone(app, n, timeout))
        except BenchError as exc:
            print(f"(drain-only measurement skipped: {exc})", file=sys.stderr)
        worker.stop()
        from bench.tasks import DONE_KEY, _redis

        _redis().delete(DONE_KEY)
        return results

    def drain_alone(self, app, n: int, timeout: float) -> dict[str, dict]:
        from bench.tasks import DONE_KEY, _redis, noop
        from webhooks.models import WebhookEvent

        queue = app.conf.task_default_queue
        destination = [f"bench-{self.run_id}@{socket.gethostname()}"]

        def pause() -> None:
            if not app.control.cancel_consumer(queue, destination=destination, reply=True):
                raise BenchError("the worker did not answer cancel_consumer")

        def resume() -> float:
            if not app.control.add_consumer(queue, destination=destination, reply=True):
                raise BenchError("the worker did not answer add_consumer")
            return time.time()

        pause()
        _redis().delete(DONE_KEY)
        for _ in range(n):
            noop.apply_async()
        start = resume()
        wait_until(lambda: int(_redis().get(DONE_KEY) or 0) >= n, timeout=timeout,
                   what="queued no-op tasks", interval=0.02)  # fmt: skip
        noop_rate = n / (time.time() - start)

        pause()
        requests, _ = self.new_event_requests("q", n)
        path = write_loadgen_requests(self.workdir, "new-q", requests)
        self.loadgen_result(self.loadgen(self.port, path, count=n, duration=timeout,
                                         expect='"accepted"'), timeout)  # fmt: skip
        events = WebhookEvent.objects.filter(
            event_id__startswith=f"evt_{self.run_id}q_", status="processed"
        )
        start = resume()
        wait_until(lambda: events.count() >= n, timeout=timeout, what="queued events",
                   interval=0.02)  # fmt: skip
        return {
            "celery_drain": {"n": n, "throughput": noop_rate},
            "d_drain": {"n": n, "throughput": n / (time.time() - start)},
        }


def combine(rounds: list[dict]) -> dict:
    """One case's figures over all its rounds: totals, and percentiles of all its latencies
    (wrk's histograms of every round merged)."""
    wall = sum(r["wall_s"] for r in rounds)
    ok = sum(r["ok"] for r in rounds)
    answered = sum(r["answered"] for r in rounds)
    cpu = sum(r["cpu_s"] for r in rounds)
    histogram = wrk.merge([r["histogram"] for r in rounds])
    corrected = wrk.merge([r["histogram_corrected"] for r in rounds])
    errors: dict[str, int] = {}
    for r in rounds:
        for kind, n in r["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    total = sum(r["machine_total_s"] for r in rounds)
    busy = sum(r["machine_busy_s"] for r in rounds)
    server = sum(r["server_cpu_s"] for r in rounds)
    background = sum(r["server_bg_cpu_s"] for r in rounds)
    db = sum(r["db_cpu_s"] for r in rounds)
    return {
        "rounds": len(rounds),
        "ok": ok,
        "answered": answered,
        "wall_s": wall,
        "throughput": ok / wall if wall else 0.0,
        "p50_ms": wrk.percentile(histogram, 50) / 1000,
        "p90_ms": wrk.percentile(histogram, 90) / 1000,
        "p99_ms": wrk.percentile(histogram, 99) / 1000,
        "p999_ms": wrk.percentile(histogram, 99.9) / 1000,
        "p99_corrected_ms": wrk.percentile(corrected, 99) / 1000,
        "max_ms": max(histogram, default=0) / 1000,
        "errors": errors,
        "first_error": next((r["first_error"] for r in rounds if r["first_error"]), ""),
        "kept_alive": sum(r["kept_alive"] for r in rounds),
        "cpu_s": cpu,
        "cpu_share": cpu / wall if wall else 0.0,
        "gen_cpu_ms_per_req": 1000 * cpu / max(answered, 1),
        "server_cpu_ms_per_req": 1000 * server / max(ok, 1),
        "server_bg_ms_per_req": 1000 * background / max(ok, 1),
        "db_cpu_ms_per_req": 1000 * db / max(ok, 1),
        "machine_busy": busy / total if total else 0.0,
        # The machine's CPU not used by gunicorn, PostgreSQL or wrk (Redis, kernel work not
        # charged to them, other processes): small on a quiet machine.
        "others_share": max(0.0, busy - server - db - cpu) / total if total else 0.0,
        "per_round": [round(r["throughput"]) for r in rounds],
        "raw_rounds": [
            {k: v for k, v in r.items() if not k.startswith("histogram")} for r in rounds
        ],
    }


# --------------------------------------------------------------------------------------------
# Report


def run_asgi_rounds(bench: Bench) -> dict[str, dict]:
    """``--asgi``: gunicorn stopped, uvicorn started, (a), (b), (c), (e) (those of ``--cases``)
    in rounds of their own; the results keyed ``asgi_a`` ..."""
    cases = "".join(key for key in ASGI_CASES if key in bench.args.cases)
    if not cases:
        return {}
    bench.server.stop()
    print("--asgi: starting uvicorn ...", flush=True)
    bench.start_uvicorn()
    # Events of their own (the sync cases' are stored already), duplicates of their own.
    bench.run_id += "x"
    bench.stored, bench.rounds_of_new = {"b": [], "e": []}, {"b": 0, "e": 0}
    return {f"asgi_{key}": value for key, value in run_rounds(bench, cases).items()}


def ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 3) if x and y else None


def summarize(results: dict, *, asgi: bool = False) -> dict:
    """The last line's figures (with ``asgi``, the ASGI ones after them)."""

    def rate(key: str) -> float | None:
        return results[key]["throughput"] if results.get(key) else None

    b = results.get("b")
    asgi_b = results.get("asgi_b")
    asgi_figures = {
        "asgi_b_over_a": ratio(rate("asgi_b"), rate("asgi_a")),
        "asgi_c_over_a": ratio(rate("asgi_c"), rate("asgi_a")),
        "asgi_b_over_e": ratio(rate("asgi_b"), rate("asgi_e")),
        "asgi_e_over_a": ratio(rate("asgi_e"), rate("asgi_a")),
        "asgi_b_p99_ms": round(asgi_b["p99_ms"], 2) if asgi_b else None,
    }
    return {
        "b_over_a": ratio(rate("b"), rate("a")),
        "c_over_a": ratio(rate("c"), rate("a")),
        "b_p99_ms": round(b["p99_ms"], 2) if b else None,
        "d_over_celery": ratio(rate("d"), rate("celery")),
        "g_over_celery": ratio(rate("g"), rate("celery")),
        "g_over_d": ratio(rate("g"), rate("d")),
        "h_over_celery": ratio(rate("h"), rate("celery")),
        "h_over_d": ratio(rate("h"), rate("d")),
        "e_over_a": ratio(rate("e"), rate("a")),
        "f_over_a": ratio(rate("f"), rate("a")),
        "b_over_e": ratio(rate("b"), rate("e")),
        "c_over_f": ratio(rate("c"), rate("f")),
        "generator": GENERATOR,
        **(asgi_figures if asgi else {}),
    }


def print_report(bench: Bench, results: dict) -> dict:
    a, b = results.get("a"), results.get("b")
    d, celery = results.get("d"), results.get("celery")
    args = bench.args
    summary = summarize(results, asgi=args.asgi)
    if not any(results.get(key) for key in "abcdefgh"):
        return summary
    print()
    print(
        f"gunicorn: {args.workers} {args.worker_class} worker(s)"
        + (f" x {args.threads} threads" if args.worker_class == "gthread" else "")
        + f"; wrk: {args.wrk_threads} thread(s), {args.connections} connections"
        + f"; {args.round_seconds} s per case and round, {args.rounds} round(s)"
        + f"; signing: {bench.signer_name}"
    )
    header = (
        f"{'case':<{LABEL_WIDTH}}{'ok':>8}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'err':>5}"
        f"{'srv ms/req':>11}{'(bg)':>6}{'db ms/req':>10}{'gen ms/req':>11}{'busy':>6}"
        f"{'other':>6}"
    )
    print(header)
    print("-" * len(header))
    rows = [
        ("(a) bare JSON view (baseline)", a),
        ("(b) new events", b),
        ("(c) duplicates", results.get("c")),
        ("(e) floor: bare view + the insert, new", results.get("e")),
        ("(f) floor: duplicates", results.get("f")),
        ("ASGI (a) async bare view (baseline)", results.get("asgi_a")),
        ("ASGI (b) new events, async view", results.get("asgi_b")),
        ("ASGI (c) duplicates, async view", results.get("asgi_c")),
        ("ASGI (e) floor: async bare + insert", results.get("asgi_e")),
    ]
    for label, r in rows:
        if not r:
            continue
        errors = sum(r["errors"].values())
        print(
            f"{label:<{LABEL_WIDTH}}{r['ok']:>8}{r['throughput']:>9.0f}"
            f"{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}{errors:>5}"
            f"{r['server_cpu_ms_per_req']:>11.2f}{r['server_bg_ms_per_req']:>6.2f}"
            f"{r['db_cpu_ms_per_req']:>10.2f}{r['gen_cpu_ms_per_req']:>11.3f}"
            f"{r['machine_busy']:>6.0%}{r['others_share']:>6.0%}"
        )
    if d and celery:
        print(
            f"{'(d) end to end, events processed':<{LABEL_WIDTH}}{d['n']:>8}{d['throughput']:>9.0f}"
            f"   (posting alone {d['post_throughput']:.0f} req/s, worst round's p99 "
            f"{d['post_p99_ms']:.1f} ms)"
        )
        if g := results.get("g"):
            print(
                f"{'(g) the same, 3 handlers per event':<{LABEL_WIDTH}}{g['n']:>8}"
                f"{g['throughput']:>9.0f}   (posting alone {g['post_throughput']:.0f} req/s)"
            )
        if h := results.get("h"):
            print(
                f"{'(h) the same, 3 ordered handlers':<{LABEL_WIDTH}}{h['n']:>8}"
                f"{h['throughput']:>9.0f}   (posting alone {h['post_throughput']:.0f} req/s)"
            )
        label = "    bare Celery no-op tasks"
        print(f"{label:<{LABEL_WIDTH}}{celery['n']:>8}{celery['throughput']:>9.0f}")
    drained, noop_drained = results.get("d_drain"), results.get("celery_drain")
    if drained and noop_drained:
        print(
            f"processing alone (queue filled first, then drained by the same worker): "
            f"{drained['throughput']:.0f} events/s, no-op tasks {noop_drained['throughput']:.0f}/s"
        )
    measured = {label.split(" ", 2)[0] if label[0] == "(" else " ".join(label.split()[:2]): r
                for label, r in rows if r}  # fmt: skip
    if measured:
        print("req/s per round: " + ", ".join(f"{k} {r['per_round']}" for k, r in measured.items()))
        print(
            "p99 with wrk's coordinated-omission samples (ms): "
            + ", ".join(f"{k} {r['p99_corrected_ms']:.2f}" for k, r in measured.items())
        )
        kept_alive = {k: r["kept_alive"] for k, r in measured.items()}
        if any(kept_alive.values()):
            print(
                f"WARNING: answers that kept their connection open, by case: {kept_alive} (the "
                "cases do not all pay a new connection per request alike)"
            )
    for label, r in rows:
        if r and r["errors"]:
            print(f"  {label}: errors {r['errors']}; first: {r['first_error']}")
    checks = []
    for key, target in TARGETS.items():
        value = summary[key]
        if value is None:
            continue
        met = value <= target if key == "b_p99_ms" else value >= target
        sign = "<=" if key == "b_p99_ms" else ">="
        checks.append(f"{key} = {value} (target {sign} {target}: {'met' if met else 'NOT met'})")
    if checks:
        print("ratios: " + "; ".join(checks))
    # The floor: what storing each event before answering costs at the least (no target).
    floor = [f"{key[0]}/a = {summary[key]}" for key in ("e_over_a", "f_over_a") if summary[key]]
    for key in ("b_over_e", "c_over_f"):
        if summary[key] is not None:
            floor.append(f"{key[0]} reaches {summary[key]} of the floor ({key[0]}/{key[-1]})")
    if floor:
        print("floor: " + "; ".join(floor))
    if args.asgi and any(results.get(f"asgi_{key}") for key in ASGI_CASES):
        beside = [
            ("b/a", "asgi_b_over_a", "b_over_a"),
            ("c/a", "asgi_c_over_a", "c_over_a"),
            ("b/e", "asgi_b_over_e", "b_over_e"),
            ("e/a", "asgi_e_over_a", "e_over_a"),
            ("b p99 ms", "asgi_b_p99_ms", "b_p99_ms"),
        ]
        print(
            f"ASGI (uvicorn, {args.workers} workers) beside sync (gunicorn): "
            + "; ".join(
                f"{name} {summary[key]} (sync {summary[sync]})" for name, key, sync in beside
            )
        )
        for key, target in ASGI_TARGETS.items():
            value = summary[key]
            if value is not None:
                met = "met" if value >= target else "NOT met"
                print(f"ratios: {key} = {value} (target >= {target}: {met})")
    return summary


# --------------------------------------------------------------------------------------------


def clean_up(keep_db: bool) -> None:
    """Drop the database and the tasks of (b) that no worker ran; warn, never raise."""
    from sandbox_project.celery import app

    steps = [("purge the Celery queue", app.control.purge)]
    if not keep_db:
        steps.insert(0, ("drop the database", drop_database))
    for what, step in steps:
        try:
            step()
        except Exception as exc:
            print(f"bench/ingest.py: could not {what}: {exc}", file=sys.stderr)


def run_rounds(bench: Bench, cases: str | None = None) -> dict[str, dict]:
    """(a), (b), (c), (e) and (f) in interleaved rounds (order rotated each round), so that a
    change in the machine's load while the benchmark runs affects each case alike."""
    args = bench.args
    runners = {
        "a": bench.case_bare,
        "b": bench.case_new,
        "c": bench.case_duplicates,
        "e": bench.case_floor_new,
        "f": bench.case_floor_duplicates,
    }
    chosen = [key for key in runners if key in (args.cases if cases is None else cases)]
    for duplicates, new in (("c", "b"), ("f", "e")):  # duplicates need stored events
        if duplicates in chosen and new not in chosen:
            chosen.insert(chosen.index(duplicates), new)
    if not chosen:
        return {}
    seconds = args.round_seconds
    rounds: dict[str, list[dict]] = {key: [] for key in chosen}
    print(f"warming up {', '.join(chosen)} ...", flush=True)
    for key in chosen:  # warm-up and a first short round, in order (c, f need b's, e's events)
        rounds[key].append(runners[key](seconds, warmup=args.warmup))
    for number in range(1, args.rounds):
        order = chosen[number % len(chosen) :] + chosen[: number % len(chosen)]
        print(f"round {number + 1}/{args.rounds}: {' '.join(order)}", flush=True)
        for key in order:
            rounds[key].append(runners[key](seconds))
    return {key: combine(values) for key, values in rounds.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run, for CI")
    parser.add_argument(
        "--seconds",
        type=int,
        default=20,
        help="measured seconds of each of (a), (b), (c), (e), (f), over all rounds (each round "
        "gets a whole number of seconds, at least 1: wrk's -d)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of a, b, c, e, f")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="unmeasured seconds of each case before its first round",
    )
    parser.add_argument("--e2e-events", type=int, default=2000, help="N for (d)")
    parser.add_argument(
        "--e2e-rounds", type=int, default=4, help="alternations of (d) and its baseline"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="gunicorn workers (2: the issue's reference set-up)"
    )
    parser.add_argument("--worker-class", default="sync", help="gunicorn worker class")
    parser.add_argument("--threads", type=int, default=1, help="threads per gthread worker")
    parser.add_argument("--gunicorn-args", default="", help="more gunicorn options, quoted")
    parser.add_argument("--celery-concurrency", type=int, default=2, help="Celery processes")
    parser.add_argument(
        "--connections", type=int, default=CONNECTIONS, help="wrk's connections (-c)"
    )
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk's threads (-t)")
    parser.add_argument("--max-rate", type=float, default=4000.0, help="new events signed per s")
    parser.add_argument(
        "--cases", default="abcdefgh", help="the cases to run, e.g. ab or a,e,b (default all)"
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="cpu",
        choices=["cpu", "wall"],
        help="run (b) (or (a) or (e), given by --cases) with the gunicorn workers under "
        "cProfile, by CPU (default) or wall time",
    )
    parser.add_argument(
        "--profile-save",
        type=Path,
        help="with --profile, also write the workers' merged profile there (pstats format)",
    )
    parser.add_argument(
        "--asgi",
        action="store_true",
        help="also run (a), (b), (c), (e) under uvicorn (--workers workers) against async views",
    )
    parser.add_argument("--keep-db", action="store_true", help="leave the database behind")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=run_record.RESULTS_DIR,
        help="where the run's JSON record goes (default bench/results/)",
    )
    args = parser.parse_args(argv)
    args.cases = args.cases.replace(",", "").replace(" ", "")
    if not args.cases or set(args.cases) - set("abcdefgh"):
        parser.error(f"--cases: letters among a, b, c, d, e, f, g, h, not {args.cases!r}")
    if args.profile:
        # The profile covers one HTTP case, after each worker's first requests: (b) unless
        # --cases names a or e (the floor, to compare with it). Not c or f: their duplicates
        # are events that b or e stores first, in the same workers.
        given = args.cases if parser.get_default("cases") != args.cases else "b"
        if len(given) != 1 or given not in "abe":
            parser.error("--profile covers one of the cases a, b, e (--cases)")
        args.cases = given
    if args.smoke:
        args.seconds, args.warmup, args.e2e_events, args.rounds = 1, 1, 30, 1
        args.e2e_rounds = 2
    args.round_seconds = max(1, round(args.seconds / args.rounds))
    if args.wrk_threads < 1 or args.connections < args.wrk_threads:
        parser.error("--connections must be at least --wrk-threads, which must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at, machine = time.time(), run_record.machine_state()
    setup_django()
    missing = missing_pieces(args.cases, asgi=args.asgi)
    if missing:
        print("bench/ingest.py cannot run: these parts of the app are missing:")
        for item in missing:
            print(f"  - {item}")
        print(json.dumps({**summarize({}, asgi=args.asgi), "missing": missing}))
        return 3
    results: dict[str, dict] = {}
    status = 0
    with (
        tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp,
        children_stopped_on_exit() as started,
    ):
        workdir = Path(tmp)
        bench = Bench(args, workdir, started)
        created = False
        try:
            http = bool(set(args.cases) & set(HTTP_CASES))
            if http:
                wrk.require_wrk()
            require_redis()
            db_name = recreate_database()
            created = True
            print(f"database {db_name}; starting gunicorn ...", flush=True)
            bench.start_gunicorn()
            results.update(run_rounds(bench))
            if args.profile:
                bench.gunicorn.stop()  # workers write their profiles on exit
                from bench.gunicorn_profile import print_profile

                os.environ["BENCH_PROFILE_CLOCK"] = args.profile

                print("(profiling slows the workers: the figures above are not the benchmark's)")
                print_profile(workdir, save=args.profile_save)
            if set(args.cases) & set("dgh"):
                print(f"end to end ({args.cases}), {args.e2e_events} events each ...", flush=True)
                results.update(bench.case_end_to_end())
            if args.asgi and not args.profile:
                results.update(run_asgi_rounds(bench))
        except BenchError as exc:
            print(f"bench/ingest.py failed: {exc}", file=sys.stderr)
            status = 1
        finally:
            for child in started:
                child.stop()
            clean_up(args.keep_db or not created)
        if any(r.get("errors") for r in results.values()):
            status = 1
        summary = print_report(bench, results)
    if not args.profile:
        record = run_record.write(
            "ingest",
            directory=args.results_dir,
            smoke=args.smoke,
            started_at=started_at,
            settings=run_settings(args),
            summary=summary,
            results=results,
            status=status,
            machine=machine,
        )
        print(f"run recorded in {record}")
    print(json.dumps(summary))
    return status


def run_settings(args: argparse.Namespace) -> dict:
    """What a run's record says about how it was made."""
    settings = {
        key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
    }
    settings["generator"] = GENERATOR
    settings["wrk"] = wrk.wrk_version() if shutil.which("wrk") else None
    settings["loadgen_connections_d"] = CONNECTIONS
    settings["bench_settings_module"] = os.environ.get("DJANGO_SETTINGS_MODULE", "")
    return settings


if __name__ == "__main__":
    sys.exit(main())
