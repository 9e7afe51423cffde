"""Chaos soak: "nothing lost" while faults pile up, checked end to end on a real stack.

    python bench/chaos.py            # full: 20,000 events over 5 minutes, ~30 faults
    python bench/chaos.py --smoke    # about a minute: every kind of fault once (CI)
    python bench/chaos.py --seed 7   # repeat a run's fault schedule

The stack, all started here in process groups of their own and always stopped: a
``redis-server`` of the run's own (free port, own directory, so it can be killed and emptied
without touching anyone else's) as the Celery broker; gunicorn (2 sync workers) serving the
sandbox with ``bench.chaos_settings`` on a PostgreSQL database created and dropped by the run;
a Celery worker (prefork, 2 processes); Celery beat running the sweeper
(``webhooks.requeue_stuck``) every few seconds, with short ``REQUEUE_RECEIVED_AFTER`` and
``STUCK_AFTER`` (printed). The endpoint ``chaos`` has one handler (``bench.ledger``): it journals
every invocation in a file nothing rolls back, fails on purpose on the first two attempts of
10 % of the events (decided by the event id), and records its effect in a table with a unique
constraint on the event id, in the attempt's transaction.

A separate vendor process (``bench/chaos_vendor.py``) delivers the events, signed, at an even
pace, re-sends 5 % of them as duplicates, retries a 5xx or a delivery without an answer, and
records every answer per event id. Meanwhile the nemesis (``bench/nemesis.py``) injects faults on
a schedule drawn from ``--seed`` and printed first: SIGKILL of a Celery pool child, of the whole
worker (restarted), of a gunicorn worker; the broker stopped and restarted with its data, and
killed and restarted empty; ``pg_terminate_backend`` on every backend of the run's database.
Then the faults stop and the run waits (bounded) until no event is left ``received`` or
``processing``, with beat still sweeping.

The verdict is a table and, last, one JSON line (``answered_200``, ``stored``, ``effects``,
``lost``, ``double_effects``, ``unexpected_5xx``, ``settle_s``, ``faults``, ...). Exit status 0
when nothing was lost or done twice and nothing answered an unexpected 5xx, 1 when the verdict
failed (or the run did not settle), 2 when the run could not be carried out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # so that `webhooks` is the app, not bench/webhooks.py

from bench import run_record  # noqa: E402
from bench.database import (  # noqa: E402
    backend_pids,
    child_env,
    drop_database,
    recreate_database,
    sessions_on_database,
    setup_django,
)
from bench.nemesis import (  # noqa: E402
    BROKER_OUTAGE_EMPTY,
    BROKER_OUTAGE_KEPT,
    DB_TERMINATE,
    FAULT_KINDS,
    GUNICORN_WORKER_KILL,
    WORKER_CHILD_KILL,
    WORKER_KILL,
    Fault,
    Nemesis,
    plan_faults,
)
from bench.processes import (  # noqa: E402
    PYTHON,
    BenchError,
    Child,
    children_stopped_on_exit,
    free_port,
    wait_until,
)

SETTINGS_MODULE = os.environ.get("TETHER_CHAOS_SETTINGS", "bench.chaos_settings")
#: The answer that is right while the database cannot be reached: the vendor retries.
EXPECTED_5XX = (503, "unavailable")
UNFINISHED = ("received", "processing")


@dataclass(frozen=True)
class Profile:
    """How big a run is: the load, the faults, and the soak's short timings."""

    events: int
    seconds: float  # the vendor's sending window
    faults: Mapping[str, int]
    outage_seconds: float
    worker_down_seconds: float
    settle_timeout: float
    give_up_after: float  # the vendor retries this long past its window
    timings: Mapping[str, float]  # changes to bench.chaos_settings.SOAK_TIMINGS
    fault_window: tuple[float, float] = (0.05, 0.8)  # shares of ``seconds``
    progress_every: float = 15.0


FULL = Profile(
    events=20_000,
    seconds=300.0,
    faults={
        WORKER_CHILD_KILL: 8,
        WORKER_KILL: 3,
        GUNICORN_WORKER_KILL: 8,
        BROKER_OUTAGE_KEPT: 1,
        BROKER_OUTAGE_EMPTY: 1,
        DB_TERMINATE: 8,
    },
    outage_seconds=30.0,
    worker_down_seconds=5.0,
    settle_timeout=480.0,
    give_up_after=180.0,
    timings={},  # bench.chaos_settings.SOAK_TIMINGS
)
SMOKE = Profile(
    events=1_500,
    seconds=30.0,
    faults=dict.fromkeys(FAULT_KINDS, 1),
    outage_seconds=4.0,
    worker_down_seconds=2.0,
    settle_timeout=120.0,
    give_up_after=60.0,
    timings={
        "REQUEUE_RECEIVED_AFTER": 8,
        "STUCK_AFTER": 15,
        "SWEEP_EVERY": 3,
        "RETRY_BASE_DELAY": 0.5,
        "RETRY_MAX_DELAY": 2,
    },
    fault_window=(0.1, 0.8),
    progress_every=5.0,
)


# --------------------------------------------------------------------------------------------
# The stack: broker, gunicorn, Celery worker and beat, and what the nemesis does to them


class Stack:
    """The run's processes. The nemesis's methods (see ``bench.nemesis.Stack``) are called from
    its threads; replacing the worker or the broker happens under a lock."""

    def __init__(self, args: argparse.Namespace, workdir: Path, started: list[Child]) -> None:
        self.args = args
        self.workdir = workdir
        self.started = started
        self.run_id = f"c{uuid.uuid4().hex[:6]}"
        self.worker_node = f"chaos-{self.run_id}@{socket.gethostname()}"
        self.broker_port = free_port()
        self.broker_url = f"redis://127.0.0.1:{self.broker_port}/0"
        self.broker_dir = workdir / "redis"
        self.broker_dir.mkdir()
        self.journal_dir = workdir / "journal"
        self.journal_dir.mkdir()
        self.port = 0
        self.db_name = ""
        self.gunicorn: Child | None = None
        self.worker: Child | None = None
        self.beat: Child | None = None
        self.broker: Child | None = None
        self.worker_down = threading.Event()  # set while the nemesis holds the worker dead
        self.broker_down = threading.Event()
        self._lock = threading.Lock()
        # Faults of one kind that fall together strike one after the other.
        self._serial = {kind: threading.Lock() for kind in FAULT_KINDS}
        self._generation: Counter[str] = Counter()
        self.restarts: Counter[str] = Counter()
        self.rng = random.Random(args.seed)

    def env(self) -> dict[str, str]:
        return {
            "TETHER_CHAOS_BROKER_URL": self.broker_url,
            "TETHER_CHAOS_JOURNAL": str(self.journal_dir),
            "TETHER_CHAOS_TIMINGS": json.dumps(dict(self.args.profile.timings)),
        }

    def start(self, name: str, argv: list[str]) -> Child:
        self._generation[name] += 1
        label = name if self._generation[name] == 1 else f"{name}-{self._generation[name]}"
        child = Child(label, argv, env=child_env(**self.env()),
                      log=self.workdir / f"{label}.log", stdout_to_log=True)  # fmt: skip
        self.started.append(child)
        return child

    # -- starting ----------------------------------------------------------------------------
    def start_broker(self) -> None:
        argv = [
            "redis-server", "--port", str(self.broker_port), "--bind", "127.0.0.1",
            "--dir", str(self.broker_dir), "--dbfilename", "dump.rdb",
            "--save", "", "--appendonly", "no", "--daemonize", "no",
        ]  # fmt: skip
        self.broker = self.start("redis", argv)
        import redis

        def answers() -> bool:
            if not self.broker.alive():
                raise BenchError(f"redis-server exited:\n{self.broker.log_tail()}")
            try:
                return bool(redis.Redis.from_url(self.broker_url, socket_timeout=1).ping())
            except redis.RedisError:
                return False

        wait_until(answers, timeout=30, what="the run's redis-server")

    def start_gunicorn(self) -> None:
        self.port = free_port()
        argv = [
            PYTHON, "-m", "gunicorn", "sandbox_project.wsgi:application",
            "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.args.gunicorn_workers),
            "--timeout", "30", "--graceful-timeout", "10", "--log-level", "warning",
        ]  # fmt: skip
        self.gunicorn = self.start("gunicorn", argv)

        def answers() -> bool:
            if not self.gunicorn.alive():
                raise BenchError(f"gunicorn exited:\n{self.gunicorn.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                return False
            return len(self.gunicorn.children()) >= self.args.gunicorn_workers

        wait_until(answers, timeout=60, what="gunicorn and its workers")

    def start_worker(self) -> Child:
        argv = [
            PYTHON, "-m", "celery", "-A", "sandbox_project.celery", "worker",
            "--pool", "prefork", "--concurrency", str(self.args.celery_concurrency),
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--prefetch-multiplier", "1", "--loglevel", "WARNING",
            "--hostname", self.worker_node,
        ]  # fmt: skip
        self.worker = self.start("celery", argv)
        return self.worker

    def wait_worker_ready(self) -> None:
        from sandbox_project.celery import app

        def answers() -> bool:
            if not self.worker.alive():
                raise BenchError(f"the Celery worker exited:\n{self.worker.log_tail()}")
            if len(self.worker.children()) < self.args.celery_concurrency:
                return False
            return bool(app.control.ping(destination=[self.worker_node], timeout=1))

        wait_until(answers, timeout=90, what="the Celery worker", interval=0.5)

    def start_beat(self) -> Child:
        argv = [
            PYTHON, "-m", "celery", "-A", "sandbox_project.celery", "beat",
            "--schedule", str(self.workdir / "beat-schedule"),
            "--pidfile", str(self.workdir / "beat.pid"), "--loglevel", "WARNING",
        ]  # fmt: skip
        self.beat = self.start("beat", argv)
        return self.beat

    def supervise(self) -> None:
        """What a deployment's supervisor (systemd, Kubernetes) does: restart the Celery worker or
        beat if it exited when no fault was holding it down (counted in ``restarts``, and
        reported). gunicorn's arbiter or the broker exiting on their own ends the run."""
        with self._lock:
            watched = [("gunicorn", self.gunicorn)]
            if not self.broker_down.is_set():
                watched.append(("redis-server", self.broker))
            for name, child, restart in (
                ("celery worker", self.worker, self.start_worker),
                ("celery beat", self.beat, self.start_beat),
            ):
                if name == "celery worker" and self.worker_down.is_set():
                    continue
                if child is not None and not child.alive():
                    last = child.log_tail(1)
                    child.stop()
                    restart()
                    self.restarts[name] += 1
                    print(f"  supervisor: {name} exited on its own ({last}); restarted", flush=True)
        for name, child in watched:
            if child is not None and not child.alive():
                raise BenchError(f"{name} exited on its own:\n{child.log_tail()}")

    # -- faults (bench.nemesis.Stack) ----------------------------------------------------------
    def kill_worker_child(self) -> str:
        """SIGKILL a pool process of a running worker (one that answers a ping: a worker that
        loses a pool process before it first connects to the broker exits, see bench/README)."""
        from sandbox_project.celery import app

        def running_children() -> list[int]:
            with self._lock:
                worker = None if self.worker_down.is_set() else self.worker
            if worker is None or not worker.alive():
                return []
            try:
                if not app.control.ping(destination=[self.worker_node], timeout=1):
                    return []
            except Exception:  # the broker is down: the worker cannot be running either
                return []
            return worker.children()

        with self._serial[WORKER_CHILD_KILL]:
            pid = self._sigkill_one(running_children, "a pool process of a running worker")
        return f"SIGKILL Celery pool process {pid}"

    def kill_worker(self, seconds: float) -> str:
        with self._serial[WORKER_KILL]:  # a second kill waits for the restart, then strikes it
            with self._lock:
                self.worker_down.set()
                worker = self.worker
            with contextlib.suppress(ProcessLookupError):  # it may have just exited by itself
                os.killpg(worker.pid, signal.SIGKILL)
            worker.stop()  # reaps it (and anything left in its group)
            time.sleep(seconds)
            with self._lock:
                self.start_worker()
                self.worker_down.clear()
        return f"SIGKILL Celery worker {worker.pid} and its pool, restarted after {seconds:g} s"

    def kill_gunicorn_worker(self) -> str:
        with self._serial[GUNICORN_WORKER_KILL]:
            pid = self._sigkill_one(self.gunicorn.children, "a gunicorn worker")
        return f"SIGKILL gunicorn worker {pid}"

    def _sigkill_one(self, candidates: Callable[[], list[int]], what: str) -> int:
        """SIGKILL one of ``candidates()`` (drawn from the seed), then wait until its parent has
        reaped it, so that the next fault of the kind strikes another process."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pids = candidates()
            if not pids:
                time.sleep(0.2)
                continue
            pid = self.rng.choice(pids)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # it exited between the listing and the kill
                continue
            with contextlib.suppress(BenchError):
                wait_until(lambda killed=pid: killed not in candidates(), timeout=15, what="")
            return pid
        raise BenchError(f"found no {what} to kill in 60 s")

    def broker_outage(self, seconds: float, *, keep_data: bool) -> str:
        import redis

        with self._lock:
            self.broker_down.set()
            broker = self.broker
        if keep_data:
            with contextlib.suppress(redis.RedisError):  # the connection drops as it exits
                redis.Redis.from_url(self.broker_url, socket_timeout=10).shutdown(save=True)
            broker.popen.wait(30)
            kept = redis_keys_in(self.broker_dir / "dump.rdb")
            how = f"stopped with SHUTDOWN SAVE ({kept})"
        else:
            os.killpg(broker.pid, signal.SIGKILL)
            broker.popen.wait(30)
            (self.broker_dir / "dump.rdb").unlink(missing_ok=True)
            how = "SIGKILLed, its data deleted"
        broker.stop()
        time.sleep(seconds)
        with self._lock:
            self.start_broker()
            self.broker_down.clear()
        return f"broker {how}, restarted after {seconds:g} s"

    def terminate_db_backends(self) -> str:
        from django.db import connection

        try:
            pids = backend_pids()
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM "
                    "unnest(%s::int[]) AS pid",
                    [pids],
                )
                (count,) = cursor.fetchone()
        finally:
            connection.close()
        return f"pg_terminate_backend on {count} of {len(pids)} backends"

    # -- reading the broker --------------------------------------------------------------------
    def broker_messages(self) -> dict[str, int]:
        """Messages left in the broker: queued on the default queue, and delivered but not
        acknowledged (Redis keeps those until its visibility timeout)."""
        import redis

        client = redis.Redis.from_url(self.broker_url, socket_timeout=5)
        return {"queued": client.llen("celery"), "unacked": client.hlen("unacked")}


REQUEUED_LINE = re.compile(rb"webhooks: requeued (\d+) stuck event")


def sweeper_requeues(workdir: Path) -> int:
    """Messages the sweeper published, from the workers' logs ("requeued N stuck event(s)")."""
    return sum(
        int(found.group(1))
        for log in workdir.glob("celery*.log")
        for found in REQUEUED_LINE.finditer(log.read_bytes())
    )


def redis_keys_in(dump: Path) -> str:
    return f"{dump.stat().st_size} bytes on disk" if dump.exists() else "nothing on disk"


# --------------------------------------------------------------------------------------------
# Reading the database, robust to the nemesis terminating this process's connection too


def retrying(read: Callable[[], Any], attempts: int = 5) -> Any:
    from django.db import InterfaceError, OperationalError, connection

    for attempt in range(attempts):
        try:
            return read()
        except (OperationalError, InterfaceError):
            connection.close()
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    return None


def status_counts() -> dict[str, int]:
    from django.db.models import Count

    from bench.ledger import ENDPOINT
    from webhooks.models import WebhookEvent

    events = WebhookEvent.objects.filter(endpoint=ENDPOINT)
    return retrying(lambda: dict(events.values_list("status").annotate(Count("id")).order_by()))


# --------------------------------------------------------------------------------------------
# The verdict


@dataclass
class Observed:
    """What the run saw: the vendor's answers, the database at the end, the journal."""

    answers: dict[str, list[list]]  # event id -> [[status, kind], ...]
    statuses: dict[str, str]  # event id -> status, of the stored events
    effects: Counter[str]  # event id -> effect rows (the unique constraint keeps it <= 1)
    invocations: dict[str, list[int]]  # event id -> the attempt of each handler invocation
    doubles: Counter[str]  # event id -> refused second effects
    planned: Callable[[str], int]  # event id -> planned failing attempts
    duplicates_sent: int = 0


def judge(seen: Observed) -> dict[str, Any]:
    """Every figure of the verdict from what was observed; ``failures`` lists what failed."""
    answered_200 = {e for e, answers in seen.answers.items() if any(a[0] == 200 for a in answers)}
    lost = sorted(e for e in answered_200 if seen.effects.get(e, 0) != 1)
    five_xx: Counter[str] = Counter()
    no_answer: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    accepted_twice = []
    for event_id, answers in seen.answers.items():
        for status, kind in answers:
            if status == 0:
                no_answer[kind] += 1
            elif status >= 500:
                five_xx[f"{status} {kind}"] += 1
            elif status != 200:
                refused[f"{status} {kind}"] += 1
        if sum(1 for status, kind in answers if status == 200 and kind == "accepted") > 1:
            accepted_twice.append(event_id)
    wrong = sorted(e for e, answers in seen.answers.items() if any(
        a[0] == 200 and a[1] not in ("accepted", "duplicate") for a in answers))  # fmt: skip
    expected_503 = five_xx.pop(f"{EXPECTED_5XX[0]} {EXPECTED_5XX[1]}", 0)
    invoked = sum(len(attempts) for attempts in seen.invocations.values())
    planned = sum(  # invocations in an attempt the handler fails on purpose
        sum(1 for attempt in attempts if attempt <= seen.planned(e))
        for e, attempts in seen.invocations.items()
    )
    beyond_one = invoked - len(seen.invocations)
    unanswered = sorted(set(seen.answers) - answered_200)
    figures = {
        "events_sent": len(seen.answers),
        "deliveries": sum(len(a) for a in seen.answers.values()),
        "duplicates_sent": seen.duplicates_sent,
        "answered_200": len(answered_200),
        "unanswered": len(unanswered),
        "stored": len(seen.statuses),
        "stored_of_answered_200": len(answered_200 & set(seen.statuses)),
        "effects": sum(seen.effects.values()),
        "lost": len(lost),
        "double_effects": len(seen.doubles),
        "by_status": dict(Counter(seen.statuses.values()).most_common()),
        "invocations": invoked,
        "invocations_beyond_one": beyond_one,
        "planned_retries": planned,
        "unplanned_retries": beyond_one - planned,
        "expected_503": expected_503,
        "unexpected_5xx": sum(five_xx.values()),
        "unexpected_5xx_by_kind": dict(five_xx),
        "no_answer": dict(no_answer),
        "refused_4xx": dict(refused),
        "accepted_twice": len(accepted_twice),
        "wrong_answers": len(wrong),
        "samples": {
            "lost": lost[:10],
            "double": sorted(seen.doubles)[:10],
            "unanswered": unanswered[:10],
            "accepted_twice": accepted_twice[:10],
            "wrong": wrong[:10],
        },
    }
    failures = []
    for key in ("lost", "double_effects", "unexpected_5xx", "unanswered", "accepted_twice",
                "wrong_answers"):  # fmt: skip
        if figures[key]:
            failures.append(f"{key} = {figures[key]}")
    if figures["refused_4xx"]:
        failures.append(f"4xx answers: {figures['refused_4xx']}")
    figures["failures"] = failures
    return figures


def observe(stack: Stack, vendor: dict, answers: dict) -> Observed:
    from bench.ledger import ENDPOINT, journal
    from bench.ledger.models import Effect
    from bench.ledger.webhooks import planned_failures
    from webhooks.models import WebhookEvent

    events = WebhookEvent.objects.filter(endpoint=ENDPOINT)
    statuses = retrying(lambda: dict(events.values_list("event_id", "status")))
    effects = Counter(retrying(lambda: list(Effect.objects.values_list("event_id", flat=True))))
    written = journal.read(stack.journal_dir)
    return Observed(
        answers=answers,
        statuses=statuses,
        effects=effects,
        invocations=written.invocations,
        doubles=written.doubles,
        planned=planned_failures,
        duplicates_sent=vendor.get("duplicates_sent", 0),
    )


def explain(figures: dict, answers: dict) -> None:
    """For each kind of failure, what is known about its first events (for the report)."""
    from bench.ledger import ENDPOINT
    from webhooks.models import WebhookEvent

    for kind in ("lost", "double", "unanswered", "accepted_twice", "wrong"):
        for event_id in figures["samples"][kind][:5]:
            row = retrying(lambda event_id=event_id: WebhookEvent.objects.filter(
                endpoint=ENDPOINT, event_id=event_id).values(
                "pk", "status", "attempts", "last_error", "received_at", "last_attempt_at",
                "processed_at").first())  # fmt: skip
            print(f"  {kind} {event_id}: answers {answers.get(event_id)}; row {row}")


# --------------------------------------------------------------------------------------------
# The report


def print_report(profile: Profile, figures: dict, run: dict) -> None:
    rows = [
        ("events sent (distinct)", figures["events_sent"], ""),
        ("deliveries (retries and duplicates included)", figures["deliveries"], ""),
        ("  of which duplicates re-sent", figures["duplicates_sent"], "~5 % of events"),
        ("events answered 200", figures["answered_200"], "= events sent"),
        ("events stored", figures["stored"], ">= answered 200"),
        ("effects recorded", figures["effects"], "= answered 200"),
        ("lost (answered 200, not exactly one effect)", figures["lost"], "0"),
        ("double effects (second effect attempted)", figures["double_effects"], "0"),
        ("handler invocations", figures["invocations"], ""),
        ("  beyond one per event", figures["invocations_beyond_one"], "at-least-once: allowed"),
        ("    planned failures", figures["planned_retries"], ""),
        ("    caused by faults", figures["unplanned_retries"], ""),
        ("events by status", _inline(figures["by_status"]), "all processed"),
        ("503 unavailable (database unreachable)", figures["expected_503"], "allowed"),
        ("unexpected 5xx", figures["unexpected_5xx"], "0"),
        ("  by kind", _inline(figures["unexpected_5xx_by_kind"]) or "-", ""),
        ("deliveries without an answer", _inline(figures["no_answer"]) or "0", "retried"),
        ("4xx answers", _inline(figures["refused_4xx"]) or "0", "0"),
        ("events accepted twice", figures["accepted_twice"], "0"),
        ("events never answered 200", figures["unanswered"], "0"),
        ("settle after the last fault", _seconds(run["settle_s"]),
         f"< {profile.settle_timeout:g} s"),
        ("  after the vendor's last delivery", _seconds(run["settle_after_load_s"]), ""),
        ("messages left in the broker", _inline(run["broker_messages"]), "reported"),
        ("messages published by the sweeper", run["sweeper_requeues"], "reported"),
        ("faults injected", _inline(run["faults"]), ""),
        ("exits restarted by the supervisor", _inline(run["restarts"]) or "0", "reported"),
    ]  # fmt: skip
    width = max(len(label) for label, _, _ in rows) + 2
    print()
    print(f"{'figure':<{width}}{'expected':<24}value")
    print("-" * (width + 24 + 40))
    for label, value, expected in rows:
        print(f"{label:<{width}}{expected:<24}{value}")


def _inline(mapping: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in mapping.items())


def _seconds(value: float | None) -> str:
    return "did not settle" if value is None else f"{value:.1f} s"


# --------------------------------------------------------------------------------------------
# The run


def start_vendor(stack: Stack, profile: Profile) -> Child:
    argv = [
        PYTHON, str(ROOT / "bench" / "chaos_vendor.py"), "--port", str(stack.port),
        "--events", str(profile.events), "--seconds", str(profile.seconds),
        "--out", str(stack.workdir), "--run-id", stack.run_id, "--seed", str(stack.args.seed),
        "--give-up-after", str(profile.give_up_after),
    ]  # fmt: skip
    vendor = Child("vendor", argv, env=child_env(**stack.env()), log=stack.workdir / "vendor.log")
    stack.started.append(vendor)
    return vendor


def vendor_progress(stack: Stack) -> dict:
    try:
        return json.loads((stack.workdir / "progress.json").read_text())
    except (OSError, ValueError):
        return {}


def print_progress(stack: Stack, t0: float, nemesis: Nemesis | None) -> None:
    sent = vendor_progress(stack)
    counts = status_counts()
    faults = sum(nemesis.injected().values()) if nemesis else 0
    print(
        f"t+{time.monotonic() - t0:6.1f} s  vendor: sent {sent.get('sent', 0)}, answered 200 "
        f"{sent.get('answered_200', 0)}, retries {sent.get('retries', 0)}; events: "
        f"{_inline(counts) or 'none yet'}; faults so far {faults}",
        flush=True,
    )


def run_load(stack: Stack, profile: Profile, plan: list[Fault]) -> tuple[dict, dict, Nemesis]:
    """Start the vendor and the nemesis; when both are done, return the vendor's totals, its
    answers per event id, and the nemesis (what it injected)."""
    vendor = start_vendor(stack, profile)
    t0 = time.monotonic()
    nemesis = Nemesis(stack, plan, t0)
    nemesis.start()
    next_report = t0 + profile.progress_every
    limit = profile.seconds + profile.give_up_after + 120
    try:
        while vendor.alive() or nemesis.is_alive():
            if time.monotonic() - t0 > limit:
                raise BenchError(f"the vendor did not finish within {limit:.0f} s")
            stack.supervise()
            if time.monotonic() >= next_report:
                print_progress(stack, t0, nemesis)
                next_report += profile.progress_every
            time.sleep(0.5)
    finally:
        nemesis.stopping.set()
    if vendor.popen.returncode != 0:
        raise BenchError(f"the vendor failed:\n{vendor.log_tail()}")
    out = vendor.popen.stdout.read().decode().strip().splitlines()
    totals = json.loads(out[-1])
    answers = json.loads((stack.workdir / "answers.json").read_text())
    return totals, answers, nemesis


def settle(stack: Stack, profile: Profile, nemesis: Nemesis, vendor: dict) -> dict:
    """Wait until no event is left ``received`` or ``processing`` (the sweeper still running),
    at most ``settle_timeout`` after the last fault."""
    last_fault = nemesis.last_fault_ended()
    t0 = nemesis.t0
    deadline = max(last_fault + profile.settle_timeout, time.monotonic() + 30)
    next_report = time.monotonic() + profile.progress_every
    settled_at = settled_wall = None
    while time.monotonic() < deadline:
        stack.supervise()
        counts = status_counts()
        if not any(counts.get(status) for status in UNFINISHED):
            settled_at, settled_wall = time.monotonic(), time.time()
            break
        if time.monotonic() >= next_report:
            print_progress(stack, t0, None)
            next_report += profile.progress_every
        time.sleep(0.5)
    vendor_done = vendor.get("last_answer_200_at", 0.0)
    return {
        "settle_s": None if settled_at is None else round(settled_at - last_fault, 1),
        "settle_after_load_s": (
            round(settled_wall - vendor_done, 1) if settled_wall and vendor_done else None
        ),
        "last_fault_t": round(last_fault - t0, 1),
    }


def describe_setup(stack: Stack, profile: Profile, plan: list[Fault]) -> None:
    from django.conf import settings

    from webhooks.conf import processing_setting

    timings = settings.SOAK_TIMINGS
    print(
        f"chaos soak: {profile.events} events over {profile.seconds:g} s, ~5 % re-sent as "
        f"duplicates, 10 % of handlers failing their first 2 attempts; seed {stack.args.seed}"
    )
    print(
        f"stack: gunicorn {stack.args.gunicorn_workers} sync workers on :{stack.port}; Celery "
        f"prefork x{stack.args.celery_concurrency}; beat; redis-server :{stack.broker_port} "
        f"(the run's own); database {stack.db_name}"
    )
    print(
        f"sweeper: webhooks.requeue_stuck every {timings['SWEEP_EVERY']:g} s, "
        f"REQUEUE_RECEIVED_AFTER {timings['REQUEUE_RECEIVED_AFTER']:g} s, STUCK_AFTER "
        f"{timings['STUCK_AFTER']:g} s; retries: RETRY_BASE_DELAY {timings['RETRY_BASE_DELAY']:g}"
        f" s, RETRY_MAX_DELAY {timings['RETRY_MAX_DELAY']:g} s, MAX_ATTEMPTS "
        f"{processing_setting('MAX_ATTEMPTS')}"
    )
    print(f"fault schedule ({len(plan)} faults, seed {stack.args.seed}):")
    for fault in plan:
        print(f"  {fault.describe()}")
    print(flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="about a minute, every fault once")
    parser.add_argument("--seed", type=int, help="the fault schedule's seed (default: random)")
    parser.add_argument("--events", type=int, help="distinct events (default 20000; smoke 1500)")
    parser.add_argument("--seconds", type=float, help="sending window (default 300; smoke 30)")
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument("--celery-concurrency", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=run_record.RESULTS_DIR,
        help="where the run's record is written (default bench/results/)",
    )
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(10**6)
    profile = SMOKE if args.smoke else FULL
    changes = {k: v for k, v in (("events", args.events), ("seconds", args.seconds)) if v}
    args.profile = Profile(**{**profile.__dict__, **changes}) if changes else profile
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = args.profile
    started_at, machine = time.time(), run_record.machine_state()
    workdir = Path(tempfile.mkdtemp(prefix="tether-chaos-"))
    status = 2
    summary: dict[str, Any] = {"seed": args.seed}
    results: dict[str, Any] = {}
    with children_stopped_on_exit() as started:
        stack = Stack(args, workdir, started)
        os.environ.update(stack.env())  # this process's settings use the run's broker too
        setup_django(SETTINGS_MODULE)
        from django.conf import settings

        created = False
        try:
            stack.start_broker()
            if sessions_on_database():
                raise BenchError(
                    f"the database {settings.DATABASES['default']['NAME']} is in use (another "
                    "soak?): set TETHER_CHAOS_DB to another name"
                )
            stack.db_name = recreate_database()
            created = True
            stack.start_gunicorn()
            stack.start_worker()
            stack.wait_worker_ready()
            stack.start_beat()
            length = profile.seconds
            plan = plan_faults(
                profile.faults,
                window=(profile.fault_window[0] * length, profile.fault_window[1] * length),
                outage_seconds=profile.outage_seconds,
                worker_down_seconds=profile.worker_down_seconds,
                seed=args.seed,
            )
            describe_setup(stack, profile, plan)
            vendor, answers, nemesis = run_load(stack, profile, plan)
            print(f"load done: {json.dumps(vendor)}; waiting for the events to settle ...")
            run = settle(stack, profile, nemesis, vendor)
            run["broker_messages"] = stack.broker_messages()
            run["sweeper_requeues"] = sweeper_requeues(workdir)
            run["faults"] = dict(nemesis.injected())
            run["restarts"] = dict(stack.restarts)
            figures = judge(observe(stack, vendor, answers))
            print_report(profile, figures, run)
            failures = list(figures["failures"])
            if run["settle_s"] is None:
                failures.append(f"did not settle within {profile.settle_timeout:g} s")
            for injection in nemesis.failed():
                failures.append(f"fault not injected: {injection.fault.describe()}: "
                                f"{injection.error}")  # fmt: skip
            missing = [kind for kind, n in run["faults"].items() if profile.faults.get(kind)
                       and not n]  # fmt: skip
            if missing:
                failures.append(f"no fault of kind {', '.join(missing)} was injected")
            if failures:
                print("\nFAILED: " + "; ".join(failures))
                explain(figures, answers)
            else:
                print("\nnothing lost, nothing done twice, no unexpected 5xx")
            status = 1 if failures else 0
            summary.update({key: value for key, value in figures.items() if key != "samples"})
            summary.update(run)
            summary["failures"] = failures
            summary["timings"] = dict(settings.SOAK_TIMINGS)
            results = {
                "vendor": vendor,
                "samples": figures["samples"],
                "plan": [vars(fault) for fault in plan],
                "injections": [
                    {
                        "kind": i.fault.kind,
                        "at": round(i.started - nemesis.t0, 1),
                        "ended": round(i.ended - nemesis.t0, 1),
                        "detail": i.detail,
                        "error": i.error,
                    }
                    for i in sorted(nemesis.injections, key=lambda i: i.started)
                ],
            }
        except BenchError as exc:
            print(f"bench/chaos.py could not run: {exc}", file=sys.stderr)
            summary["error"] = str(exc)
        finally:
            for child in reversed(started):
                child.stop()
            if created and not args.keep:
                try:
                    drop_database()
                except Exception as exc:
                    print(f"bench/chaos.py: could not drop the database: {exc}", file=sys.stderr)
    if status == 0 and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs kept in {workdir}")
    record = run_record.write(
        "chaos",
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
    """What a run's record says about how it was made: the options, the profile (load, faults,
    their durations, the settle timeout) and the soak's timings."""
    from django.conf import settings

    options = {key: value for key, value in vars(args).items() if key != "profile"}
    options["results_dir"] = str(args.results_dir)
    return {
        **options,
        "profile": {
            key: (dict(v) if isinstance(v, Mapping) else v) for key, v in vars(args.profile).items()
        },
        "timings": dict(settings.SOAK_TIMINGS),
    }


if __name__ == "__main__":
    sys.exit(main())
