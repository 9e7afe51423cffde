"""The chaos soak's nemesis (Jepsen's word): which faults, when, and injecting them.

``plan_faults`` draws a schedule from a seed (so a run can be repeated): the two broker outages
in separate halves of the fault window, every other fault at a uniformly drawn time, so faults
overlap as they come (a database kill during a broker outage, a worker killed twice in a row).
``Nemesis`` is a thread that injects each fault at its time, each in a thread of its own (an
outage lasts while the next faults strike), through the run's ``Stack``.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

WORKER_CHILD_KILL = "worker_child_kill"
WORKER_KILL = "worker_kill"
GUNICORN_WORKER_KILL = "gunicorn_worker_kill"
BROKER_OUTAGE_KEPT = "broker_outage_kept"
BROKER_OUTAGE_EMPTY = "broker_outage_empty"
DB_TERMINATE = "db_terminate"

#: Every kind, in the order the report lists them, with what it does.
FAULT_KINDS: dict[str, str] = {
    WORKER_CHILD_KILL: "SIGKILL one Celery prefork child (the worker replaces it)",
    WORKER_KILL: "SIGKILL the whole Celery worker, restarted after a pause",
    GUNICORN_WORKER_KILL: "SIGKILL one gunicorn worker (the arbiter replaces it)",
    BROKER_OUTAGE_KEPT: "broker stopped (SHUTDOWN SAVE), restarted with its data",
    BROKER_OUTAGE_EMPTY: "broker SIGKILLed, restarted empty (its data deleted)",
    DB_TERMINATE: "pg_terminate_backend on every backend of the run's database",
}
BROKER_OUTAGES = (BROKER_OUTAGE_KEPT, BROKER_OUTAGE_EMPTY)


@dataclass(frozen=True, order=True)
class Fault:
    at: float  # seconds after the load started
    kind: str
    seconds: float = 0.0  # how long the broker stays down, or the worker dead

    def describe(self) -> str:
        lasting = f" for {self.seconds:g} s" if self.seconds else ""
        return f"t+{self.at:6.1f} s  {self.kind}{lasting}"


def plan_faults(
    counts: Mapping[str, int],
    *,
    window: tuple[float, float],
    outage_seconds: float,
    worker_down_seconds: float,
    seed: int,
) -> list[Fault]:
    """The schedule: ``counts[kind]`` faults of each kind within ``window`` (seconds after the
    load started). Broker outages never overlap each other: with one of each kind (the default),
    one falls in each half of the window, in an order drawn from the seed."""
    rng = random.Random(seed)
    start, end = window
    faults: list[Fault] = []
    outages = [kind for kind in BROKER_OUTAGES for _ in range(counts.get(kind, 0))]
    rng.shuffle(outages)
    if outages:
        slot = (end - start) / len(outages)
        for number, kind in enumerate(outages):
            low = start + number * slot
            high = max(low, low + slot - outage_seconds)
            faults.append(Fault(round(rng.uniform(low, high), 1), kind, outage_seconds))
    for kind in FAULT_KINDS:
        if kind in BROKER_OUTAGES:
            continue
        seconds = worker_down_seconds if kind == WORKER_KILL else 0.0
        for _ in range(counts.get(kind, 0)):
            faults.append(Fault(round(rng.uniform(start, end), 1), kind, seconds))
    return sorted(faults)


class Stack(Protocol):
    """What the nemesis strikes: each method injects one fault, waits out its ``seconds`` and
    recovers (restarts what a real deployment's supervisor would), and says what it did."""

    def kill_worker_child(self) -> str: ...
    def kill_worker(self, seconds: float) -> str: ...
    def kill_gunicorn_worker(self) -> str: ...
    def broker_outage(self, seconds: float, *, keep_data: bool) -> str: ...
    def terminate_db_backends(self) -> str: ...


@dataclass
class Injection:
    fault: Fault
    started: float = 0.0  # time.monotonic()
    ended: float = 0.0
    detail: str = ""
    error: str = ""


class Nemesis(threading.Thread):
    """Injects ``plan``'s faults at their times (``t0``: ``time.monotonic()`` when the load
    started); ``stopping.set()`` stops it before the next fault."""

    def __init__(self, stack: Stack, plan: list[Fault], t0: float) -> None:
        super().__init__(name="nemesis", daemon=True)
        self.stack = stack
        self.plan = plan
        self.t0 = t0
        self.injections: list[Injection] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        strikes = []
        for fault in self.plan:
            if self.stopping.wait(max(0.0, self.t0 + fault.at - time.monotonic())):
                break
            strike = threading.Thread(target=self.inject, args=(fault,), daemon=True)
            strike.start()
            strikes.append(strike)
        for strike in strikes:
            strike.join()

    def inject(self, fault: Fault) -> None:
        injection = Injection(fault, started=time.monotonic())
        try:
            if fault.kind == WORKER_CHILD_KILL:
                injection.detail = self.stack.kill_worker_child()
            elif fault.kind == WORKER_KILL:
                injection.detail = self.stack.kill_worker(fault.seconds)
            elif fault.kind == GUNICORN_WORKER_KILL:
                injection.detail = self.stack.kill_gunicorn_worker()
            elif fault.kind in BROKER_OUTAGES:
                injection.detail = self.stack.broker_outage(
                    fault.seconds, keep_data=fault.kind == BROKER_OUTAGE_KEPT
                )
            elif fault.kind == DB_TERMINATE:
                injection.detail = self.stack.terminate_db_backends()
            else:
                raise ValueError(f"unknown fault kind {fault.kind!r}")
        except Exception as exc:  # reported with the run's verdict; the run goes on
            injection.error = f"{type(exc).__name__}: {exc}"
        injection.ended = time.monotonic()
        with self._lock:
            self.injections.append(injection)
        print(
            f"  fault t+{injection.started - self.t0:6.1f} s {fault.kind}: "
            + (f"NOT injected ({injection.error})" if injection.error else injection.detail),
            flush=True,
        )

    def injected(self) -> Counter[str]:
        """How many faults of each kind were injected (every kind listed, 0 included)."""
        with self._lock:
            done = Counter(i.fault.kind for i in self.injections if not i.error)
        return Counter({kind: done[kind] for kind in FAULT_KINDS})

    def failed(self) -> list[Injection]:
        with self._lock:
            return [i for i in self.injections if i.error]

    def last_fault_ended(self) -> float:
        """``time.monotonic()`` when the last fault ended (its recovery included)."""
        with self._lock:
            return max((i.ended for i in self.injections), default=self.t0)
