"""``make quickstart-check``: follow docs/getting-started.md literally, as a newcomer would.

The snippets come from the page itself (tests/quickstart/snippets.py reads its marked code
blocks; no copy of them lives anywhere else). In a temporary directory, in page order: the
install block creates a fresh virtualenv and pip-installs django-tether from a copy of this
checkout's files (tracked and new, as they are on disk); ``django-admin startproject`` and
``startapp`` run; the settings blocks are appended, the other files written; ``migrate`` and
``check`` run (any system check warning or error fails the run: ``webhooks.W003`` above all);
the dev server and a real Celery worker start as the page says; the test events are signed and
sent; each accepted one must be ``processed`` in the database within ``--timeout`` seconds; the
try-outs run too. The processes are always stopped, the database dropped and the Redis database
emptied, whatever happened.

Only what a shared machine forces is changed, each change checked against the page before
anything runs (the run fails if the page no longer has what it replaces): the checkout's path
for the page's ``path/to/django-tether``; a free port for ``runserver`` and
``send_test_webhook --url``; and the environment the page tells the reader to set for their own
server: ``PGHOST``/``PGPORT``/``PGUSER``/``PGPASSWORD``/``PGDATABASE`` (from ``TETHER_PG_URL``
and ``TETHER_QUICKSTART_DB``) and ``CELERY_BROKER_URL`` (Redis database ``TETHER_REDIS_DB``).

Environment knobs: ``TETHER_PG_URL`` (the server, default ``postgres://postgres@127.0.0.1:5432``),
``TETHER_QUICKSTART_DB`` (the database the page's ``createdb`` creates and the run drops,
default ``quickstart_tether``), ``TETHER_REDIS_DB`` (the broker's database, default 13, emptied
before and after). Exit status: 0 when the quickstart works as written, 1 when it does not
(with the failing block, its output and the processes' logs), 2 when the page's markers are
wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

import psycopg
import redis
from psycopg import sql

from tests.quickstart.snippets import RUN_KINDS, Snippet, SnippetError, read_snippets

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "getting-started.md"
LOG_TAIL_LINES = 60
BLOCK_TIMEOUT = 600.0  # a pip install on a cold cache
STARTUP_TIMEOUT = 60.0

# What the page writes that a shared CI machine must change: (pattern, replacement, why). The
# replacement's fields: {checkout}, {port}, and {env[NAME]} for the run's own servers.
SERVER_VARIABLES = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "CELERY_BROKER_URL")
REWRITES = (
    (re.compile(r"path/to/django-tether"), "{checkout}", "the checkout's directory"),
    (
        re.compile(r"(manage\.py runserver)$", re.MULTILINE),
        r"\1 127.0.0.1:{port}",
        "a free port for the dev server",
    ),
    (
        re.compile(r"(manage\.py send_test_webhook)\b"),
        r"\1 --url http://127.0.0.1:{port}",
        "the dev server's port",
    ),
    (
        re.compile(rf"\b(?P<name>{'|'.join(SERVER_VARIABLES)})=(?:\"[^\"]*\"|'[^']*'|\S+)"),
        "{export}",
        "the run's own database and broker",
    ),
)
# A system check's message, as Django prints it: "?: (webhooks.W003) ...".
CHECK_MESSAGE = re.compile(r"\((?P<id>[\w.]+\.[WE]\d{3})\)")
ENV_DROPPED_PREFIXES = ("PG", "CELERY_", "DJANGO_", "TETHER_", "VIRTUAL_ENV", "PYTHONPATH")


class QuickstartFailure(Exception):
    """The quickstart does not work as written; the message says where."""


@dataclass
class Services:
    """Where the run's own PostgreSQL database and Redis database are."""

    pg_host: str
    pg_port: int
    pg_user: str
    pg_password: str
    database: str
    redis_db: int

    @classmethod
    def from_environment(cls) -> Services:
        url = urlsplit(os.environ.get("TETHER_PG_URL", "postgres://postgres@127.0.0.1:5432"))
        database = os.environ.get("TETHER_QUICKSTART_DB", "quickstart_tether")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", database):
            raise SystemExit(f"TETHER_QUICKSTART_DB={database!r}: use [a-z0-9_], 63 at most")
        redis_db = os.environ.get("TETHER_REDIS_DB", "13")
        if not redis_db.isdigit() or int(redis_db) > 15:
            raise SystemExit(f"TETHER_REDIS_DB={redis_db!r}: a database number, 0 to 15")
        return cls(
            pg_host=url.hostname or "127.0.0.1",
            pg_port=url.port or 5432,
            pg_user=unquote(url.username or "postgres"),
            pg_password=unquote(url.password or ""),
            database=database,
            redis_db=int(redis_db),
        )

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:6379/{self.redis_db}"

    def environment(self) -> dict[str, str]:
        """What the page tells the reader to set for their own servers, set for ours."""
        env = {
            "PGHOST": self.pg_host,
            "PGPORT": str(self.pg_port),
            "PGUSER": self.pg_user,
            "PGDATABASE": self.database,
            "CELERY_BROKER_URL": self.broker_url,
        }
        if self.pg_password:
            env["PGPASSWORD"] = self.pg_password
        return env

    def connect(self, database: str) -> psycopg.Connection:
        return psycopg.connect(
            host=self.pg_host,
            port=self.pg_port,
            user=self.pg_user,
            password=self.pg_password or None,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def reset(self) -> None:
        """Drop the run's database and empty its Redis database (before and after a run)."""
        with self.connect("postgres") as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self.database)
                )
            )
        redis.Redis(host="127.0.0.1", port=6379, db=self.redis_db).flushdb()

    def event_status(self, event_id: str) -> tuple[str, str] | None:
        """The stored event's status and last error, or None if it is not stored."""
        with self.connect(self.database) as connection:
            row = connection.execute(
                "SELECT status, last_error FROM webhooks_webhookevent WHERE event_id = %s",
                (event_id,),
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1] or ""))


@dataclass
class Process:
    """A long-running command of the page (the server, the worker), with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    output: BinaryIO

    def tail(self) -> str:
        return _tail(self.log)


@dataclass
class Run:
    """The state a reader's terminal carries from block to block: directory and environment."""

    workdir: Path
    checkout: Path
    port: int
    services: Services
    cwd: Path
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)
    step: int = 0

    def substitute(self, text: str) -> str:
        """The block as this run follows it (see REWRITES)."""
        env = self.services.environment()

        def replace(template: str, match: re.Match[str]) -> str:
            if template == "{export}":
                name = match.group("name")
                return f"{name}={shlex.quote(env.get(name, ''))}"
            return match.expand(template.format(checkout=self.checkout, port=self.port))

        for pattern, template, _why in REWRITES:
            text = pattern.sub(lambda match, template=template: replace(template, match), text)
        return text

    def log_path(self, name: str) -> Path:
        self.step += 1
        return self.workdir / "logs" / f"{self.step:02d}-{name}.log"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--page", type=Path, default=PAGE, help="default: %(default)s")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds for a sent event to be processed (default: %(default)s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    options = parser.parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):  # progress and failure in order in CI's log
        sys.stdout.reconfigure(line_buffering=True)

    started = time.monotonic()
    try:
        snippets = read_snippets(options.page)
        check_rewrites(snippets)
    except SnippetError as exc:
        print(f"quickstart-check: {exc}", file=sys.stderr)
        return 2
    services = Services.from_environment()
    workdir = Path(tempfile.mkdtemp(prefix="tether-quickstart-"))
    (workdir / "logs").mkdir()
    run = Run(
        workdir=workdir,
        checkout=workdir / "django-tether",
        port=free_port(),
        services=services,
        cwd=workdir,
        env=base_environment(services),
    )
    print(
        f"quickstart-check: following {options.page} in {workdir} "
        f"(database {services.database}, Redis database {services.redis_db}, port {run.port})"
    )
    status = 1
    try:
        services.reset()
        copy_checkout(run.checkout)
        for snippet in snippets:
            follow(run, snippet, options.timeout)
        status = 0
    except QuickstartFailure as exc:
        print(f"\nquickstart-check: FAILED: {exc}", file=sys.stderr)
        for process in run.processes:
            print(
                f"\n--- last lines of the {process.name}'s log ---\n{process.tail()}",
                file=sys.stderr,
            )
    finally:
        stop_processes(run.processes)
        try:
            services.reset()
        except Exception as exc:  # a failure to clean up must not hide the run's result
            print(f"quickstart-check: cleaning up failed: {exc}", file=sys.stderr)
            status = 1
        if options.keep:
            print(f"quickstart-check: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    for name, seconds in run.timings:
        print(f"  {seconds:6.1f} s  {name}")
    verdict = "OK: the quickstart works as written" if status == 0 else "FAILED"
    print(f"quickstart-check: {verdict} ({time.monotonic() - started:.1f} s in all)")
    return status


def check_rewrites(snippets: list[Snippet]) -> None:
    """Every substitution the check makes still finds what it replaces on the page."""
    runnable = "\n".join(snippet.text for snippet in snippets if snippet.kind in RUN_KINDS)
    for pattern, _replacement, why in REWRITES:
        if not pattern.search(runnable):
            raise SnippetError(
                f"the page's commands no longer contain {pattern.pattern!r}, which the check "
                f"replaces with {why}: update REWRITES in {Path(__file__).name}"
            )


def follow(run: Run, snippet: Snippet, event_timeout: float) -> None:
    """Do what the page says with one block."""
    label = f"line {snippet.line}: {snippet.kind}" + (f" {snippet.title}" if snippet.title else "")
    started = time.monotonic()
    if snippet.kind == "skip":
        print(f"- {label} (skipped: {snippet.reason})")
        return
    print(f"- {label}: {_first_line(snippet.text)}", flush=True)
    if snippet.kind in ("append", "file"):
        write_file(run, snippet)
    elif snippet.kind == "shell":
        run_shell(run, snippet)
    elif snippet.kind == "send":
        output = run_shell(run, snippet)
        wait_processed(run, snippet, output, event_timeout)
    elif snippet.kind == "server":
        process = start(run, snippet, "server")
        wait_until(process, lambda: _listening(run.port), f"listening on port {run.port}")
    elif snippet.kind == "worker":
        process = start(run, snippet, "worker")
        wait_until(process, lambda: " ready." in process.log.read_text(errors="replace"), "ready")
    run.timings.append((label, time.monotonic() - started))


def write_file(run: Run, snippet: Snippet) -> None:
    target = run.cwd / str(snippet.title)
    if not target.parent.is_dir():
        raise QuickstartFailure(
            f"line {snippet.line}: {snippet.title}: its directory does not exist at this point "
            "of the page"
        )
    if snippet.kind == "append":
        if not target.is_file():
            raise QuickstartFailure(
                f"line {snippet.line}: the page adds to {snippet.title}, which does not exist"
            )
        with target.open("a", encoding="utf-8") as file:
            file.write("\n" + snippet.text)
    else:
        target.write_text(snippet.text, encoding="utf-8")


def run_shell(run: Run, snippet: Snippet) -> str:
    """Run a block as a terminal would; keep its directory and environment for the next."""
    log = run.log_path("shell")
    cwd_file, env_file = log.with_suffix(".cwd"), log.with_suffix(".env")
    script = f"{run.substitute(snippet.text)}\npwd > '{cwd_file}'\nenv -0 > '{env_file}'\n"
    with log.open("wb") as output:
        try:
            completed = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", script],
                cwd=run.cwd,
                env=run.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=BLOCK_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise QuickstartFailure(
                f"line {snippet.line}: still running after {BLOCK_TIMEOUT:.0f} s:\n{_tail(log)}"
            ) from exc
    text = log.read_text(errors="replace")
    if completed.returncode != 0:
        raise QuickstartFailure(
            f"line {snippet.line}: the block exited with status {completed.returncode}:\n"
            f"{_indent(snippet.text)}\noutput:\n{_tail(log)}"
        )
    messages = sorted(set(CHECK_MESSAGE.findall(text)))
    if messages:
        raise QuickstartFailure(
            f"line {snippet.line}: Django's system checks reported {', '.join(messages)}:\n"
            f"{_tail(log)}"
        )
    run.cwd = Path(cwd_file.read_text().strip())
    env = dict(entry.split("=", 1) for entry in env_file.read_text().split("\0") if "=" in entry)
    env.update(run.services.environment())  # the run's own servers, whatever the page exports
    run.env = env
    return text


def start(run: Run, snippet: Snippet, name: str) -> Process:
    log = run.log_path(name)
    output = log.open("wb")
    popen = subprocess.Popen(
        ["bash", "-e", "-c", f"exec {run.substitute(snippet.text).strip()}"],
        cwd=run.cwd,
        env=run.env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped with all its children
    )
    process = Process(name=name, popen=popen, log=log, output=output)
    run.processes.append(process)
    return process


def wait_until(process: Process, ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise QuickstartFailure(
                f"the {process.name} exited with status {process.popen.returncode}"
            )
        if ready():
            return
        time.sleep(0.25)
    raise QuickstartFailure(f"the {process.name} was not {what} after {STARTUP_TIMEOUT:.0f} s")


def wait_processed(run: Run, snippet: Snippet, output: str, timeout: float) -> None:
    """Every event the server accepted in ``output`` ends ``processed`` within ``timeout``."""
    accepted = []
    for line in output.splitlines():
        answer = re.match(r"-> 2\d\d (\{.*\})$", line.strip())
        if answer:
            body = json.loads(answer.group(1))
            if body.get("status") == "accepted":
                accepted.append(str(body["event_id"]))
    if not accepted:
        raise QuickstartFailure(f"line {snippet.line}: no event accepted:\n{output}")
    deadline = time.monotonic() + timeout
    for event_id in accepted:
        while True:
            state = run.services.event_status(event_id)
            status = state[0] if state else "not stored"
            if status == "processed":
                break
            if status in ("failed", "ignored") or time.monotonic() > deadline:
                error = f", last error: {state[1]}" if state and state[1] else ""
                raise QuickstartFailure(
                    f"line {snippet.line}: event {event_id} is {status}{error}, not processed "
                    f"({timeout:.0f} s after it was sent)"
                )
            for process in run.processes:
                if process.popen.poll() is not None:
                    raise QuickstartFailure(
                        f"the {process.name} exited while event {event_id} waited"
                    )
            time.sleep(0.25)
        print(f"  event {event_id}: processed")


def stop_processes(processes: list[Process]) -> None:
    """Stop each process group the run started: SIGTERM, then SIGKILL after 15 s."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait(timeout=5)
        # Children that outlived their leader (the reloader's server, the worker's pool).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGKILL)
        process.output.close()


def copy_checkout(target: Path) -> None:
    """This checkout's files as they are on disk (tracked and new, not ignored), the
    "checkout of django-tether" the page installs from, built away from the real one."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def base_environment(services: Services) -> dict[str, str]:
    """This process's environment without what would leak into a newcomer's terminal: the
    project's virtualenv, Django, Celery, PostgreSQL and the test suite's variables."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(ENV_DROPPED_PREFIXES)
    }
    own_venv = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(
        entry for entry in env.get("PATH", "").split(os.pathsep) if entry and entry != own_venv
    )
    env["PYTHONUNBUFFERED"] = "1"  # the processes' logs are complete when they are shown
    env.update(services.environment())
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


def _first_line(text: str) -> str:
    first = next((line for line in text.splitlines() if line.strip()), "")
    return first if len(first) <= 70 else first[:67] + "..."


if __name__ == "__main__":
    sys.exit(main())
