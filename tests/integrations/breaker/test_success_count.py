"""Successes are batched per process, yet none is lost: a process that made 8 successful calls
and exited leaves 8 in the row, as another process (the ``circuit_breakers list`` command) sees
it; one that went idle has them written by its timer; a forked child does not write its
parent's batch again."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from integrations.breaker import (
    ManualClock,
    flush_successes,
    get_breaker,
)
from integrations.models import CircuitBreaker
from integrations.policies import BreakerPolicy
from integrations.testing import FakeVendor, Reply

pytestmark = [pytest.mark.multiprocess, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[3]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "TETHER_DB_NAME": connection.settings_dict["NAME"],
    }


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done


def test_a_process_that_exits_leaves_its_successes_visible_to_another():
    with FakeVendor() as vendor:
        vendor.route("GET", "/ok", Reply.json({"ok": 1}))
        made = _run("-m", "tests.integrations.breaker.successes_proc", vendor.url, "8")
        assert made.stdout.strip() == "8"
        assert len(vendor.requests) == 8
    listing = _run("-m", "django", "circuit_breakers", "list").stdout.splitlines()
    header, row = listing[0].split(), next(r for r in listing if r.startswith("counted ")).split()
    assert row[header.index("SUCCESSES")] == "8"
    assert CircuitBreaker.objects.get(name="counted").total_successes == 8


def test_an_idle_process_has_its_successes_written_by_its_timer():
    flush = 3.0  # the process's SUCCESS_FLUSH_INTERVAL (30 s in production)
    with FakeVendor() as vendor:
        vendor.route("GET", "/ok", Reply.json({"ok": 1}))
        idle = subprocess.Popen(
            [sys.executable, "-m", "tests.integrations.breaker.successes_proc", vendor.url, "8",
             str(flush + 60), str(flush)],
            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert idle.stdout is not None
            assert idle.stdout.readline().strip() == "8"
            calls_done = time.monotonic()
            rows = CircuitBreaker.objects.filter(name="counted")
            while time.monotonic() - calls_done < flush + 15:
                if rows.filter(total_successes=8).exists():
                    break
                time.sleep(0.1)
            waited = time.monotonic() - calls_done
            assert rows.get().total_successes == 8
            assert idle.poll() is None  # written while the process still runs, idle
            # Not before the interval (less the time the 8 calls took after the first success).
            assert flush - 1 <= waited <= flush + 15
        finally:
            idle.kill()
            idle.wait(timeout=10)


def test_a_forked_child_does_not_write_its_parents_batch_again():
    clock = ManualClock()
    breaker = get_breaker("forked", BreakerPolicy(), clock=clock)
    for _ in range(5):
        breaker.record_success(breaker.acquire("op"))
    connection.close()  # the child must not share this process's database connection
    pid = os.fork()
    if pid == 0:  # the child: exits through the normal interpreter exit (atexit runs)
        code = 0
        try:
            child = get_breaker("forked", BreakerPolicy(), clock=clock)
            child.record_success(child.acquire("op"))
        except BaseException:
            code = 1
        finally:
            flush_successes()  # what the interpreter's exit does (os._exit skips atexit)
            connection.close()
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert CircuitBreaker.objects.get(name="forked").total_successes == 1  # the child's own
    assert flush_successes() == 5  # the parent's, written once, by the parent
    assert CircuitBreaker.objects.get(name="forked").total_successes == 6
