"""A real Django Tasks worker for tests: ``manage.py db_worker`` (django-tasks-db) as a subprocess.

Like ``tests.celery_worker.CeleryWorker``: the worker runs on the test settings and database
(``tests.servers.subprocess_env``; tests that use it need ``transaction=True``), with
``WEBHOOKS["TASK_BACKEND"] = "django"`` and whatever else ``webhooks={...}`` merges in. The
test process enqueues through the same database backend (``TASKS`` of the sandbox's settings),
under ``django_tasks_backend()`` (``override_settings``).

    with DbWorker(webhooks={"RETRY_BASE_DELAY": 0.1}) as worker:
        ...
        worker.kill()          # SIGKILL the worker mid-task
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from tests import handler_runs
from tests.celery_worker import FAST_RETRIES, wait_until
from tests.servers import ROOT, subprocess_env

DJANGO_TASKS = {"TASK_BACKEND": "django"}


def django_tasks_backend(**webhooks: Any) -> override_settings:
    """This test process's ``WEBHOOKS`` with ``TASK_BACKEND = "django"`` (and ``webhooks``)."""
    return override_settings(WEBHOOKS={**settings.WEBHOOKS, **DJANGO_TASKS, **webhooks})


class DbWorker:
    def __init__(self, *, webhooks: dict[str, Any] | None = None, queues: str = "*") -> None:
        self.webhooks = {**DJANGO_TASKS, **(webhooks or {})}
        self.queues = queues
        self.worker_id = f"tether-test-{uuid.uuid4().hex[:8]}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept open while it runs)
            prefix="tether-db-worker-", suffix=".log", delete=False
        )

    def start(self, timeout: float = 60) -> DbWorker:
        command = [
            sys.executable, "manage.py", "db_worker", "--no-reload", "--no-startup-delay",
            "--interval=0.1", f"--queue-name={self.queues}", f"--worker-id={self.worker_id}",
            "--verbosity=2",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=subprocess_env(webhooks=self.webhooks),
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def started() -> bool:
            if self.process is None or self.process.poll() is not None:
                raise AssertionError(f"db_worker exited early:\n{self.log()}")
            return f"Starting worker worker_id={self.worker_id}" in self.log()

        try:
            wait_until(started, timeout=timeout, interval=0.1, message="db_worker to start")
        except AssertionError:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (finish the current task, then exit), SIGKILL if it does not exit."""
        if self.process is None or self.process.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the worker (its task is left ``RUNNING`` in the task table)."""
        if self.process is None:
            return
        self._signal(signal.SIGKILL)
        self.process.wait(10)

    def _signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def log(self) -> str:
        self.log_file.flush()
        return Path(self.log_file.name).read_text(errors="replace")[-6000:]

    def __enter__(self) -> DbWorker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.log_file.close()
        os.unlink(self.log_file.name)


@pytest.fixture
def db_worker_factory(transactional_db):
    """Start ``db_worker`` processes (fast retries unless ``webhooks`` says otherwise), in this
    test's process under ``TASK_BACKEND = "django"``; all stopped after."""
    handler_runs.ensure_table()
    started: list[DbWorker] = []

    def start(**options: Any) -> DbWorker:
        options.setdefault("webhooks", FAST_RETRIES)
        worker = DbWorker(**options)
        started.append(worker)
        return worker.start()

    with django_tasks_backend(**FAST_RETRIES):
        yield start
    for worker in started:
        worker.__exit__(None, None, None)
