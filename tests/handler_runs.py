"""A plain table that test handlers write to, so tests count side effects in the database.

It is not a Django model (the worker and the test process share it without migrations): the
fixture ``runs`` in ``tests/webhooks/conftest.py`` creates and empties it.
"""

from __future__ import annotations

import os

from django.db import connection

TABLE = "tether_handler_runs"


def ensure_table() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} ("
            "id serial PRIMARY KEY, event_id text NOT NULL, attempt integer NOT NULL, "
            "pid integer NOT NULL)"
        )


def clear() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE}")  # TRUNCATE is not in SQLite


def record_run(event) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (event_id, attempt, pid) VALUES (%s, %s, %s)",
            [event.event_id, event.attempts, os.getpid()],
        )


def runs(event_id: str | None = None) -> list[tuple[str, int, int]]:
    with connection.cursor() as cursor:
        if event_id is None:
            cursor.execute(f"SELECT event_id, attempt, pid FROM {TABLE} ORDER BY id")
        else:
            cursor.execute(
                f"SELECT event_id, attempt, pid FROM {TABLE} WHERE event_id = %s ORDER BY id",
                [event_id],
            )
        return list(cursor.fetchall())


def record_run_as(event, label: str) -> None:
    """``record_run`` under ``<event id>/<label>``: to count the runs of one of several handlers
    of an event (``runs_as``)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (event_id, attempt, pid) VALUES (%s, %s, %s)",
            [f"{event.event_id}/{label}", event.attempts, os.getpid()],
        )


def runs_as(event_id: str, label: str) -> list[int]:
    """The attempts in which the handler recording as ``label`` ran for the event, in order."""
    return [attempt for _, attempt, _ in runs(f"{event_id}/{label}")]
