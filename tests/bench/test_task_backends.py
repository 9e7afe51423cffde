"""``bench/task_backends.py --smoke`` runs end to end (its own bench database, both carriers'
real workers) and prints the ratios it promises, so the harness cannot rot unnoticed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.servers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.worker, pytest.mark.multiprocess]

RATIOS = {
    "enqueue_cpu_django_over_celery",
    "enqueue_wall_django_over_celery",
    "drain_rate_django_over_celery",
    "worker_cpu_django_over_celery",
    "db_cpu_django_over_celery",
}


def test_the_smoke_run_processes_every_event_with_both_carriers():
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["TETHER_BENCH_DB"] = f"{os.environ.get('TETHER_TEST_DB', 'test_tether')}_tasks_bench"
    # Its waits are bounded (60 s each in a smoke run); a run past 240 s is stopped with
    # SIGTERM, on which it stops its workers (never SIGKILL: they would be left running).
    bench = subprocess.Popen(
        [sys.executable, "bench/task_backends.py", "--smoke"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output, _ = bench.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        bench.terminate()
        output, _ = bench.communicate(timeout=40)
        raise AssertionError(f"the smoke run took more than 240 s:\n{output}") from None
    assert bench.returncode == 0, output
    figures = json.loads(output.strip().splitlines()[-1])
    assert set(figures) >= RATIOS
    assert all(figures[name] > 0 for name in RATIOS)
    assert figures["events"] == 100
    for carrier in ("celery", "django"):
        assert figures[carrier]["drain_events_per_s"] > 0
