"""A real Celery worker for tests: ``celery -A sandbox_project worker`` as a subprocess.

The worker runs in the environment of ``tests.servers.subprocess_env``: the test settings, on the
test database, so it sees what the test commits (tests that use it need
``@pytest.mark.django_db(transaction=True)``), and the same Redis database (``TETHER_REDIS_DB``).
Settings the worker should use differently travel by environment variables (``override_settings``
does not reach another process): ``webhooks={...}`` is merged into its ``WEBHOOKS``.

    with CeleryWorker(webhooks={"RETRY_BASE_DELAY": 0.1}) as worker:
        ...
        worker.kill()          # SIGKILL the whole worker (main process and pool children)
        worker.kill_child()    # SIGKILL one prefork pool process (the main one survives)
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any, Self

import pytest
import redis

from tests import handler_runs
from tests.servers import ManagedProcess, subprocess_env


class CeleryWorker(ManagedProcess):
    name = "celery-worker"

    def __init__(
        self,
        *,
        pool: str = "solo",
        concurrency: int = 1,
        webhooks: dict[str, Any] | None = None,
        queues: str | None = None,
        broker_url: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.concurrency = concurrency
        self.webhooks = webhooks or {}
        self.queues = queues
        self.broker_url = broker_url
        self.extra_env = extra_env or {}
        self.nodename = f"tether-test-{uuid.uuid4().hex[:8]}@localhost"

    def command(self) -> list[str]:
        command = [
            sys.executable, "-m", "celery", "-A", "sandbox_project", "worker",
            f"--pool={self.pool}", f"--concurrency={self.concurrency}",
            f"--hostname={self.nodename}", "--loglevel=INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--prefetch-multiplier=1",
        ]  # fmt: skip
        if self.queues:
            command.append(f"--queues={self.queues}")
        return command

    def env(self) -> dict[str, str]:
        return subprocess_env(
            webhooks=self.webhooks, broker_url=self.broker_url, extra=self.extra_env
        )

    def start(self, timeout: float = 90) -> Self:
        return super().start(timeout)

    def ready(self) -> bool:
        """It has logged ``<nodename> ready.``: Celery's ``worker_ready``, once its consumer is
        up (it answers a ping from then on; polling with pings found it a second later)."""
        self.check_running()
        return f"{self.nodename} ready." in self.log(None)

    def kill_child(self) -> int:
        """SIGKILL one prefork pool process; the main process stays up. Returns its pid."""
        children = self.child_pids()
        if not children:
            raise AssertionError("the worker has no pool process (use pool='prefork')")
        os.kill(children[0], signal.SIGKILL)
        return children[0]

    def child_pids(self) -> list[int]:
        assert self.process is not None
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def log(self, tail: int | None = 6000) -> str:
        return super().log(tail)


# Worker settings for fast retries; the worker is another process, so they travel by env vars.
FAST_RETRIES = {"MAX_ATTEMPTS": 3, "RETRY_BASE_DELAY": 0.2, "RETRY_MAX_DELAY": 0.5}


@pytest.fixture
def celery_worker(transactional_db):
    """A real Celery worker (solo pool) on the test database, fast retries; killed after.

    Use it from any test package's conftest: ``from tests.celery_worker import celery_worker``.
    """
    handler_runs.ensure_table()
    purge_broker()
    worker = CeleryWorker(webhooks=FAST_RETRIES).start()
    yield worker
    discard(worker)


@pytest.fixture
def worker_factory(transactional_db):
    """Start workers with given options (``worker_factory(pool="prefork", concurrency=2)``)."""
    handler_runs.ensure_table()
    purge_broker()
    started: list[CeleryWorker] = []

    def start(**options: Any) -> CeleryWorker:
        options.setdefault("webhooks", FAST_RETRIES)
        worker = CeleryWorker(**options)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        discard(worker)


def discard(worker: CeleryWorker) -> None:
    """A fixture's worker after its test: SIGKILLed (a warm shutdown waits about 1.5 s for its
    broker connection, for nothing the test checks; the next one purges the broker and starts
    on a flushed database), and its log removed."""
    worker.kill()
    worker.close()


def broker() -> redis.Redis:
    """A client of this test run's broker, the Redis database ``TETHER_REDIS_DB``."""
    from django.conf import settings

    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


def queue_length(queue: str = "celery") -> int:
    """How many messages wait in ``queue`` on this test run's broker."""
    with broker() as client:
        return client.llen(queue)


def queued_messages(queue: str = "celery") -> list[tuple[str, list]]:
    """(task name, args) of each message waiting in ``queue`` on this test run's broker, oldest
    first."""
    with broker() as client:
        raw_messages = client.lrange(queue, 0, -1)
    messages = []
    for raw in reversed(raw_messages):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        messages.append((message["headers"]["task"], args))
    return messages


def purge_broker() -> None:
    """Drop every message left in this test run's broker."""
    with broker() as client:
        client.flushdb()
