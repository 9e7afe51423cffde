"""Cursors for the hot path's hand-written SQL (receive insert, processing claim, lock, outcome).

On PostgreSQL with psycopg 3, ``statement_cursor`` binds parameters on the server (whatever
``OPTIONS["server_side_binding"]`` says for the ORM): a body goes as binary ``bytea`` instead of
being escaped into the SQL text. With ``WEBHOOKS["PREPARED_STATEMENTS"]`` (the default) each of
these few fixed statements is also prepared once per connection, so PostgreSQL parses and plans
it once instead of on every delivery: planning was most of the database's CPU for an insert
(about 0.13 of 0.30 ms per event here). Set it to False behind a pooler that cannot keep
prepared statements across transactions (PgBouncer before 1.21 in transaction mode, or with
``max_prepared_statements = 0``). Left True there, the first statement that finds its prepared
statement gone is run again unprepared (outside a transaction; inside one the error stands),
one error is logged, and the process stops preparing on that database.

To let psycopg prepare at all, a connection whose ``prepare_threshold`` is None (Django's
default) gets one no statement reaches, so nothing else is prepared. psycopg then also forgets
the connection's prepared statements after a rollback (one ``DEALLOCATE ALL``), and ours are
prepared again on their next use.

Under ``DEBUG`` (or ``CaptureQueriesContext``) nothing is prepared, so that Django's query log
shows each statement. Either way the cursor is Django's ``CursorWrapper`` (execute wrappers,
error wrapping, query logging). Other databases, and psycopg 2, get ``connection.cursor()``.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from django.db import ProgrammingError

logger = logging.getLogger(__name__)

try:
    from django.db.backends.postgresql.psycopg_any import is_psycopg3
except ImportError:  # psycopg not installed: PostgreSQL is not in use
    is_psycopg3 = False

if is_psycopg3:
    import psycopg
    from psycopg.adapt import Dumper
    from psycopg.postgres import types as _postgres_types
    from psycopg.types.json import Jsonb

    class NullTimestamp:
        """A NULL bound as ``timestamptz``. A bare None is bound without a type, and psycopg
        keys its prepared statements on the parameters' types: an event without a timestamp
        would get a second prepared statement."""

    class NullBytea:
        """A NULL bound as ``bytea``, for the same reason (an event without a content digest)."""

    class _TypedNullDumper(Dumper):
        def dump(self, obj: Any) -> None:
            return None  # NULL, of the type in ``oid``

    class _NullTimestampDumper(_TypedNullDumper):
        oid = _postgres_types["timestamptz"].oid

    class _NullByteaDumper(_TypedNullDumper):
        oid = _postgres_types["bytea"].oid

    #: Each typed NULL's class and its dumper, registered on a connection by statement_cursor.
    _TYPED_NULLS: tuple[tuple[type, type[Dumper]], ...] = (
        (NullTimestamp, _NullTimestampDumper),
        (NullBytea, _NullByteaDumper),
    )
    NULL_TIMESTAMP: Any = NullTimestamp()
    NULL_BYTEA: Any = NullBytea()

    class _PreparingCursor(psycopg.Cursor):
        """A server-binding cursor whose statements are prepared on their first execution."""

        prepare = True

        def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                    binary: bool | None = None) -> Any:  # fmt: skip
            return super().execute(query, params, prepare=self.prepare, binary=binary)

    class _UnpreparedCursor(_PreparingCursor):
        """A server-binding cursor that never prepares, nor uses a statement prepared before
        (psycopg would reuse one it remembers unless told ``prepare=False``)."""

        prepare = False

    _LostStatement: type[Exception] = psycopg.errors.InvalidSqlStatementName


else:
    Jsonb = None
    NULL_TIMESTAMP = NULL_BYTEA = None
    _TYPED_NULLS = ()
    _LostStatement = type("_LostStatement", (Exception,), {})

#: Database aliases on which a prepared statement vanished in this process (a pooler that
#: does not keep them): their statements are no longer prepared.
_unprepared_aliases: set[str] = set()

#: Raw connections on which statement_cursor registered the typed NULLs' dumpers.
_ready: weakref.WeakSet[Any] = weakref.WeakSet()


#: The psycopg ``prepare_threshold`` set on a connection that had none (see statement_cursor).
_NEVER_AUTOMATICALLY = 2**62


def timestamp_param(connection: Any, value: Any) -> Any:
    """A datetime parameter for a ``statement_cursor``, adapted as the ORM would; when bound on
    the server, None becomes a NULL typed ``timestamptz``, so that one prepared statement serves
    both."""
    value = connection.ops.adapt_datetimefield_value(value)
    if value is None and binds_on_server(connection):
        return NULL_TIMESTAMP
    return value


def bytes_param(connection: Any, value: bytes | None) -> Any:
    """A ``bytea`` parameter for a ``statement_cursor``; when bound on the server, None becomes a
    NULL typed ``bytea`` (as ``timestamp_param`` does for timestamps)."""
    if value is None and binds_on_server(connection):
        return NULL_BYTEA
    return value


def binds_on_server(connection: Any) -> bool:
    """Whether ``statement_cursor`` binds on the server (PostgreSQL with psycopg 3)."""
    return connection.vendor == "postgresql" and is_psycopg3


def statement_cursor(connection: Any) -> Any:
    """A Django cursor for one of the hot path's statements; see the module docstring."""
    if not binds_on_server(connection):
        return connection.cursor()
    from .conf import webhooks_settings

    connection.ensure_connection()
    connection.validate_thread_sharing()
    raw = connection.connection
    if raw not in _ready:
        for null_class, dumper in _TYPED_NULLS:
            raw.adapters.register_dumper(null_class, dumper)
        _ready.add(raw)
    logged = connection.queries_logged
    # Logged queries (DEBUG, CaptureQueriesContext) stay unprepared: Django's log reads the
    # statement's text, which psycopg does not keep for a prepared execution.
    prepared = webhooks_settings["PREPARED_STATEMENTS"] and not logged
    if prepared and connection.alias not in _unprepared_aliases:
        if raw.prepare_threshold is None:
            # Django's default (None) turns psycopg's preparing off altogether, even for an
            # explicit prepare=True. A threshold no query reaches keeps every other statement
            # unprepared (and the ORM's client-side cursors never prepare) while ours can be.
            # psycopg then also deallocates the connection's prepared statements after a
            # rollback (they are prepared again on next use).
            raw.prepare_threshold = _NEVER_AUTOMATICALLY
        cursor = _PreparingCursor(raw)
    else:
        cursor = _UnpreparedCursor(raw)
    if logged:
        return connection.make_debug_cursor(cursor)
    return connection.make_cursor(cursor)


def fetch_one(connection: Any, sql: str, params: Any) -> tuple[Any, ...] | None:
    """Run one hot-path statement through ``statement_cursor``; its first row, or None when it
    returns none (or no result at all, e.g. an UPDATE without RETURNING).

    ``execute`` goes through Django's wrapper (database errors become ``django.db`` errors, and
    the query is logged when queries are logged). With psycopg 3 the result has fully arrived by
    then, so the row is read from psycopg's cursor directly and the cursor closed the same way:
    through the wrapper each of those calls would build an error-wrapping function (about 8 µs a
    statement). Other drivers read through the wrapper (SQLite can fail while stepping a row).
    """
    try:
        return _fetch_one(connection, sql, params)
    except ProgrammingError as exc:
        if not isinstance(exc.__cause__, _LostStatement):
            raise
        # "prepared statement ... does not exist": something between us and PostgreSQL (a
        # pooler in transaction mode) does not keep prepared statements. Stop preparing on this
        # alias, and run the statement again unless a transaction was aborted by the error.
        if connection.alias not in _unprepared_aliases:
            _unprepared_aliases.add(connection.alias)
            logger.error(
                "webhooks: a prepared statement vanished on database %r (a connection pooler in "
                "transaction mode?); statements are no longer prepared in this process. Set "
                'WEBHOOKS["PREPARED_STATEMENTS"] = False to stop preparing them at all.',
                connection.alias,
            )
        if connection.in_atomic_block:
            raise
        return _fetch_one(connection, sql, params)


def _fetch_one(connection: Any, sql: str, params: Any) -> tuple[Any, ...] | None:
    cursor = statement_cursor(connection)
    if not binds_on_server(connection):
        with cursor:
            cursor.execute(sql, params)
            return cursor.fetchone() if cursor.description is not None else None
    raw = cursor.cursor
    try:
        cursor.execute(sql, params)
        return raw.fetchone() if raw.description is not None else None
    finally:
        raw.close()
