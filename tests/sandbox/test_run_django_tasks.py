"""``make run TASKS=django``: the sandbox on Django's Tasks, zero setup (SQLite): the web server,
django-tasks-db's worker (``manage.py db_worker``) and the sweeper (``requeue_stuck_webhooks
--every 30``), all writing to one SQLite file. Deliveries end processed, Ctrl-C stops every
process, and an unknown value is refused before anything starts."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.conf import settings

from tests.sandbox.sandbox_run import BANNER, SandboxRun
from tests.servers import ROOT
from webhooks.testing import build_request, send_request

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.worker]

DELIVERIES = 20
AT_A_TIME = 4
PROCESSED_WITHIN = 30  # well below the sweeper's REQUEUE_RECEIVED_AFTER (60 s)


def rows(database, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as connection:
        return connection.execute(sql).fetchall()


def test_deliveries_are_processed_by_the_db_worker_on_sqlite_and_ctrl_c_stops_it(tmp_path):
    secret = settings.WEBHOOKS["ENDPOINTS"]["github"]["SECRETS"][0]
    state_dir = tmp_path / "state"
    database = state_dir / "sandbox.sqlite3"
    env = {"SANDBOX_TASK_BACKEND": "django", "GITHUB_WEBHOOK_SECRET": secret}
    with SandboxRun(state_dir, env=env) as run:
        banner = run.log().split(BANNER, 1)[1]
        assert "Processing: Django's Tasks on the database (TASKS=django)" in banner
        commands = run.processes(settle=0)
        assert any("db_worker" in command for command in commands), commands
        assert any("requeue_stuck_webhooks --every 30" in command for command in commands)
        assert not any("celery" in command for command in commands), commands

        requests = [build_request("github", event_type="push") for _ in range(DELIVERIES)]
        with (
            httpx.Client(base_url=run.url, timeout=30, trust_env=False) as client,
            ThreadPoolExecutor(AT_A_TIME) as pool,
        ):
            answers = list(pool.map(lambda request: send_request(client, request), requests))
        for answer in answers:
            assert (answer.status_code, answer.json()["status"]) == (200, "accepted"), answer.text

        sent = {request.event_id for request in requests}
        deadline = time.monotonic() + PROCESSED_WITHIN
        while True:
            found = dict(rows(database, "SELECT event_id, status FROM webhooks_webhookevent"))
            if set(found) == sent and set(found.values()) == {"processed"}:
                break
            assert time.monotonic() < deadline, (
                f"not all processed within {PROCESSED_WITHIN}s: {found}\n{run.log()[-5000:]}"
            )
            time.sleep(0.25)
        # Each through one Django Task in the same file, run to success by db_worker.
        tasks = rows(database, "SELECT task_path, status FROM django_tasks_database_dbtaskresult")
        assert tasks == [("webhooks.djtasks.process_event", "SUCCESSFUL")] * DELIVERIES
    assert run.process.returncode == 0, run.log()
    assert not run.processes(), "a process was left behind after Ctrl-C"
    log = run.log()
    assert "database is locked" not in log, log[-5000:]
    assert "OperationalError" not in log, log[-5000:]


def test_an_unknown_task_backend_is_refused_before_anything_starts(tmp_path):
    run = SandboxRun(tmp_path / "state", env={"SANDBOX_TASK_BACKEND": "rq; rm -rf /"}).start()
    try:
        assert run.wait(timeout=30) != 0
    finally:
        run.kill()
    assert (
        "make run: TASKS='rq; rm -rf /' is not a task backend: use TASKS=celery (the default) "
        "or TASKS=django."
    ) in run.log()
    assert not (tmp_path / "state").exists()
    assert not run.processes(settle=0)


@pytest.mark.parametrize(("make_args", "expected"), [([], "celery"), (["TASKS=django"], "django")])
def test_make_run_passes_tasks_to_the_script(make_args, expected):
    """``make run`` with Celery by default, ``make run TASKS=django`` on Django's Tasks (what
    make would run, printed by ``make -n``)."""
    result = subprocess.run(
        ["make", "-n", "run", "VENV=.venv", *make_args],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert f"SANDBOX_TASK_BACKEND={expected} ./sandbox_project/run.sh" in result.stdout
