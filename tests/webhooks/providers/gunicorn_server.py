"""The sandbox under gunicorn in a subprocess, for tests that need a real server and process:
a database or broker that is genuinely down, raw-socket requests (lying lengths, chunked).

Runs ``tests.worker_settings`` (the test settings; ``TETHER_WORKER_WEBHOOKS`` merges into
``WEBHOOKS``, ``TETHER_WORKER_BROKER_URL`` replaces the broker) on the test database.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from django.db import connection

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GunicornServer:
    def __init__(
        self,
        *,
        webhooks: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        workers: int = 1,
        threads: int = 1,
    ):
        self.port = free_port()
        self.workers = workers
        self.threads = threads
        self.webhooks = webhooks or {}
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="tether-gunicorn-", suffix=".log", delete=False
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> GunicornServer:
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="tests.worker_settings",
            TETHER_DB_NAME=connection.settings_dict["NAME"],
            TETHER_REDIS_DB=os.environ.get("TETHER_REDIS_DB", "0"),
            TETHER_WORKER_WEBHOOKS=json.dumps(self.webhooks),
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )
        env.update(self.extra_env)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "sandbox_project.wsgi:application",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(self.workers),
                "--threads",
                str(self.threads),
                "--timeout",
                "30",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited early:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise AssertionError(f"gunicorn did not start:\n{self.log()}") from None
                time.sleep(0.1)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)

    def log(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")


def raw_request(port: int, data: bytes, *, timeout: float = 15) -> tuple[int, bytes]:
    """Send raw bytes over one connection, read until the server closes; (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body


def http_request(
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes = b"",
    *,
    content_length: int | None,
) -> bytes:
    """An HTTP/1.1 request's bytes with exactly the given headers (no computed length unless
    ``content_length`` is given)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, size: int = 65536) -> bytes:
    """``body`` in HTTP/1.1 chunked transfer coding."""
    out = []
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        out.append(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    return b"".join(out) + b"0\r\n\r\n"
