"""What the ordered test handler (``tests.worker_app``'s ``ordered``) leaves: the state of each
object (a plain table, written in the handler's transaction) and the span of every run (a file,
appended before the handler returns or raises, so failed runs are there too).

Like ``tests.handler_runs``, the table is not a Django model: the worker and the test process
share it without migrations.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple

from django.db import connection

TABLE = "tether_ordered_objects"


class Span(NamedTuple):
    key: str
    version: int
    event_id: str
    started: int  # time.monotonic_ns(): one clock for every process of the machine
    ended: int
    pid: int
    failed: bool


def ensure_table() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} ("
            "key text PRIMARY KEY, version integer NOT NULL, event_id text NOT NULL)"
        )


def apply(key: str, version: int, event_id: str) -> None:
    """Set the object's state to this version, unconditionally: ordering is not its job."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (key, version, event_id) VALUES (%s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET version = EXCLUDED.version, "
            "event_id = EXCLUDED.event_id",
            [key, version, event_id],
        )


def states(keys: list[str]) -> dict[str, tuple[int, str]]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key, version, event_id FROM {TABLE} WHERE key = ANY(%s)", [keys])
        return {key: (version, event_id) for key, version, event_id in cursor.fetchall()}


def record_span(path: str, span: Span) -> None:
    line = "\t".join(str(value) for value in span) + "\n"
    # One short write with O_APPEND: lines of concurrent processes do not interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def spans(path: str | Path) -> list[Span]:
    if not Path(path).exists():
        return []
    found = []
    for line in Path(path).read_text().splitlines():
        key, version, event_id, started, ended, pid, failed = line.split("\t")
        found.append(
            Span(key, int(version), event_id, int(started), int(ended), int(pid), failed == "True")
        )
    return found


def now_ns() -> int:
    return time.monotonic_ns()
