"""Real server subprocesses for tests: a free port, the environment a subprocess of the test
run gets, a database of a test's own, and the sandbox under gunicorn (WSGI) or uvicorn (ASGI).

A subprocess runs ``tests.worker_settings`` (the test settings) on the test database
(``TETHER_DB_NAME``) and this run's Redis database (``TETHER_REDIS_DB``). Settings it should use
differently travel by environment variables (``override_settings`` does not reach another
process): ``webhooks={...}`` is merged into its ``WEBHOOKS``, ``broker_url`` replaces its broker.

    with GunicornServer(webhooks={"MAX_BODY_BYTES": 65536}) as server:
        status, body = server.get("/health/")
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Self

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(
    *,
    webhooks: dict[str, Any] | None = None,
    broker_url: str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """This process's environment plus what a sandbox subprocess needs to run on the test
    settings, database and Redis database; ``ROOT`` is added to ``PYTHONPATH`` (not replacing
    it); ``extra`` is applied last."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.worker_settings",
        TETHER_DB_NAME=connection.settings_dict["NAME"],
        TETHER_REDIS_DB=str(settings.REDIS_DB),
        TETHER_WORKER_WEBHOOKS=json.dumps(webhooks or {}),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    if broker_url:
        env["TETHER_WORKER_BROKER_URL"] = broker_url
    env.update(extra or {})
    return env


@contextmanager
def own_database(suffix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the test server, named after this run's test database
    plus ``suffix``; dropped afterwards (its connections too). Yields its name."""
    import psycopg

    db = settings.DATABASES["default"]
    name = f"{db['TEST']['NAME']}_{suffix}"
    admin = psycopg.connect(
        dbname="postgres",
        user=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None,
        port=db.get("PORT") or None,
        autocommit=True,
        connect_timeout=5,
    )
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float,
    interval: float = 0.1,
    message: str = "condition",
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class ManagedProcess:
    """A subprocess of the test run (a server, a worker, a sweeper): started from ``ROOT`` in the
    environment ``env()`` gives, in a process group of its own (so that a signal reaches its
    children), its output in a temporary log that ``log()`` reads.

    ``start()`` (or ``with``) returns once ``ready()`` says so; ``stop()`` sends SIGTERM to the
    group and SIGKILL if it does not exit in time; ``kill()`` sends SIGKILL at once; leaving the
    ``with`` stops it and removes the log. Subclasses give ``command()`` and, if they can tell,
    ``ready()``."""

    #: Its name, in the log file's name and in errors.
    name = "process"

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept open while it runs)
            prefix=f"tether-{self.name}-", suffix=".log", delete=False
        )

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return subprocess_env()

    def ready(self) -> bool:
        """Whether it is ready for the test; raises if it has exited."""
        self.check_running()
        return True

    def check_running(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited early:\n{self.log()}")

    def start(self, timeout: float = 60) -> Self:
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=self.env(),
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(self.ready, timeout=timeout, message=f"{self.name} to start")
        except AssertionError as error:
            log = self.log()
            self.kill()
            raise AssertionError(f"{self.name} did not start ({error}):\n{log}") from None
        return self

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM to the group (a worker finishes its current task), SIGKILL if it has not
        exited after ``timeout`` seconds. Its exit code (None if it never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the whole group (main process and children)."""
        if self.process is None:
            return
        self.signal_group(signal.SIGKILL)
        self.process.wait(10)

    def signal_group(self, sig: signal.Signals) -> None:
        assert self.process is not None
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def log(self, tail: int | None = None) -> str:
        self.log_file.flush()
        text = Path(self.log_file.name).read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def close(self) -> int | None:
        """Stop it and remove its log; its exit code."""
        try:
            return self.stop()
        finally:
            self.log_file.close()
            Path(self.log_file.name).unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class GunicornServer(ManagedProcess):
    """The sandbox's WSGI app under gunicorn, in a process group of its own, on a free port.

    ``start()`` (or ``with``) returns once it accepts connections; ``stop()`` (or leaving the
    ``with``) terminates the whole group (SIGKILL if it does not exit) and removes the log.
    """

    name = "gunicorn"

    def __init__(
        self,
        *,
        webhooks: dict[str, Any] | None = None,
        broker_url: str | None = None,
        env: dict[str, str] | None = None,
        workers: int = 1,
        threads: int = 1,
    ) -> None:
        super().__init__()
        self.port = free_port()
        self.workers = workers
        self.threads = threads
        self.webhooks = webhooks
        self.broker_url = broker_url
        self.extra_env = env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "gunicorn", "sandbox_project.wsgi:application",
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(self.workers), "--threads", str(self.threads),
            "--timeout", "30",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return subprocess_env(
            webhooks=self.webhooks, broker_url=self.broker_url, extra=self.extra_env
        )

    def ready(self) -> bool:
        """Accepting connections (a request waits in the backlog until a worker takes it).
        No request is made, so the server's log holds only what the test causes."""
        self.check_running()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """GET ``path``; (status, decoded JSON body), error statuses included."""
        request = urllib.request.Request(f"{self.url}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self, timeout: float = 15) -> int | None:
        return super().stop(timeout)


class UvicornServer(GunicornServer):
    """The sandbox's ASGI app (``sandbox_project.asgi``) under uvicorn, as ``GunicornServer``
    runs the WSGI one. ``app`` names another application of that module (``django_application``:
    without ``WebhookBodyLimit``)."""

    name = "uvicorn"

    def __init__(self, *, app: str = "application", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", f"sandbox_project.asgi:{self.app}",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers), "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip


class RedisServer:
    """A Redis of the test's own, on a free port, with no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._pong, timeout=10, message="redis-server to start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
