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
    result = subprocess.run(
        [sys.executable, "bench/task_backends.py", "--smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures) >= RATIOS
    assert all(figures[name] > 0 for name in RATIOS)
    assert figures["events"] == 100
    for carrier in ("celery", "django"):
        assert figures[carrier]["drain_events_per_s"] > 0
