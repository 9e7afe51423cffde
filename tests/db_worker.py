"""A real Django Tasks worker for tests: ``manage.py db_worker`` (django-tasks-db) as a subprocess.

Like ``tests.celery_worker.CeleryWorker``: the worker runs on the test settings and database
(``tests.servers.subprocess_env``; tests that use it need ``transaction=True``), with
``WEBHOOKS["TASK_BACKEND"] = "django"`` and whatever else ``webhooks={...}`` merges in. The
test process enqueues through the same database backend (``TASKS`` of the sandbox's settings),
under ``django_tasks_backend()`` (``override_settings``).

    with DbWorker(webhooks={"RETRY_BASE_DELAY": 0.1}) as worker:
        ...
        worker.kill()          # SIGKILL the worker mid-task (its task is left RUNNING)
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from tests import handler_runs
from tests.celery_worker import FAST_RETRIES
from tests.servers import ManagedProcess, subprocess_env

DJANGO_TASKS = {"TASK_BACKEND": "django"}


def django_tasks_backend(**webhooks: Any) -> override_settings:
    """This test process's ``WEBHOOKS`` with ``TASK_BACKEND = "django"`` (and ``webhooks``)."""
    return override_settings(WEBHOOKS={**settings.WEBHOOKS, **DJANGO_TASKS, **webhooks})


class DbWorker(ManagedProcess):
    name = "db-worker"

    def __init__(self, *, webhooks: dict[str, Any] | None = None, queues: str = "*") -> None:
        super().__init__()
        self.webhooks = {**DJANGO_TASKS, **(webhooks or {})}
        self.queues = queues
        self.worker_id = f"tether-test-{uuid.uuid4().hex[:8]}"

    def command(self) -> list[str]:
        return [
            sys.executable, "manage.py", "db_worker", "--no-reload", "--no-startup-delay",
            "--interval=0.1", f"--queue-name={self.queues}", f"--worker-id={self.worker_id}",
            "--verbosity=2",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return subprocess_env(webhooks=self.webhooks)

    def ready(self) -> bool:
        self.check_running()
        return f"Starting worker worker_id={self.worker_id}" in self.log()

    def log(self, tail: int | None = 6000) -> str:
        return super().log(tail)


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
        worker.close()
