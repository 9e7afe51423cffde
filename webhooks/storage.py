"""Where webhook events meet the database: every hand-written statement and the cursors they run
on. Receiving and processing call these operations with plain values, and build no SQL and
touch no cursor themselves.

- ``insert_or_compare(event, alias)``: store a new event unless ``(endpoint, event_id)`` or, for
  schemes whose id is not signed, ``(endpoint, content_digest)`` is taken; for a duplicate of
  the same id, whether the stored body is the same (``insert_once`` without the comparison;
  ``insert_once_with_savepoint``, the portable form).
- ``stored_conflict(event, alias)``: which stored event a duplicate conflicts with.
- ``claim(event_pk, ...)``: lock a due event with an attempt left, count the attempt and commit
  at once.
- ``end_lost(event_pk, ...)``: end ``failed`` a due event whose every attempt is used up (the
  last one's worker died), inside the caller's transaction (a rare path: the ORM).
- ``lock_claimed(event_pk, attempt, started_at)``: the event, locked, if that claim still holds.
- ``save_outcome(event_pk, ...)``: an attempt's outcome columns and its ``ProcessingAttempt``
  row, and, given a ``RunOutcome``, the handler's ``HandlerRun`` (on PostgreSQL one statement:
  the INSERT and the run's upsert are data-modifying CTEs of the UPDATE).
- ``save_run(run)``: a handler's run alone (an attempt's handlers before its last).

The operator actions (``webhooks.services``) and the reads (``webhooks.selectors``) use the ORM:
they are not on a hot path.

Hand optimisations of the hot path, each kept because ``bench/storage_variants.py`` (each one
on and off in one run) shows it earns at least 5 % on the figure it targets (the figures are in
``bench/README.md``); each is kept apart so that it can be dropped on its own:

- **One statement per operation**: the insert compares a duplicate's body in the same statement
  (PostgreSQL), and the claim is one ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP
  LOCKED) RETURNING`` (``CLAIM_SQL``) instead of the ORM's five round trips
  (``_claim_with_orm``, which other databases use).
- **The relaxed-commit claim** (``RELAX_COMMIT``): the claim's own commit does not wait for its
  WAL flush (``claim``'s ``relax``).
- **Server-side binding** (``binds_on_server``): psycopg 3 binds the parameters on the server,
  the body as binary ``bytea``, the JSON as ``Jsonb``, NULLs typed (``timestamp_param``,
  ``bytes_param``), without the fields' ``get_db_prep_save``.
- **Prepared statements** (``statement_cursor``, ``WEBHOOKS["PREPARED_STATEMENTS"]``): each of
  these few statements is parsed and planned once per connection, with a fall-back for poolers
  that lose them (``fetch_one``).
- **Rows loaded by hand** (``lock_claimed``): one plain ``SELECT``, its values converted as the
  ORM would (``Model.from_db`` and each field's database converters), without building a query.

Statements are built once per database alias (their text depends on the backend: quoting,
``SKIP LOCKED``, named parameters) and forgotten when ``webhooks_settings`` reloads, as on a
change of ``DATABASES``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from django.db import IntegrityError, ProgrammingError, connections, transaction
from django.db.models import Q

from .conf import webhooks_settings
from .models import HandlerRun, ProcessingAttempt, WebhookEvent

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.utils import CursorWrapper

logger = logging.getLogger(__name__)

Status = WebhookEvent.Status

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

    class _PreparingCursor(psycopg.Cursor[Any]):
        """A server-binding cursor whose statements are prepared on their first execution."""

        prepare = True

        def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                    binary: bool | None = None) -> Self:  # fmt: skip
            return super().execute(query, params, prepare=self.prepare, binary=binary)

    class _UnpreparedCursor(_PreparingCursor):
        """A server-binding cursor that never prepares, nor uses a statement prepared before
        (psycopg would reuse one it remembers unless told ``prepare=False``)."""

        prepare = False

    _LostStatement: type[Exception] = psycopg.errors.InvalidSqlStatementName

else:
    _TYPED_NULLS = ()
    _LostStatement = type("_LostStatement", (Exception,), {})


# -- cursors -------------------------------------------------------------------------------------

#: Database aliases on which a prepared statement vanished in this process (a pooler that
#: does not keep them): their statements are no longer prepared.
_unprepared_aliases: set[str] = set()


def prepare_again() -> None:
    """Prepare statements again on every database where one vanished (see ``fetch_one``): for
    a process whose connection pooler now keeps them, and between tests (django-tether's pytest
    plugin, ``tether.pytest_plugin``, calls it around each test)."""
    _unprepared_aliases.clear()


#: Raw connections on which statement_cursor registered the typed NULLs' dumpers.
_ready: weakref.WeakSet[Any] = weakref.WeakSet()

#: The psycopg ``prepare_threshold`` set on a connection that had none (see statement_cursor).
_NEVER_AUTOMATICALLY = 2**62


def binds_on_server(connection: BaseDatabaseWrapper) -> bool:
    """Whether ``statement_cursor`` binds on the server (PostgreSQL with psycopg 3)."""
    return connection.vendor == "postgresql" and is_psycopg3


def timestamp_param(connection: BaseDatabaseWrapper, value: datetime | None) -> Any:
    """A datetime parameter for a ``statement_cursor``, adapted as the ORM would; when bound on
    the server, None becomes a NULL typed ``timestamptz``, so that one prepared statement serves
    both."""
    adapted = connection.ops.adapt_datetimefield_value(value)
    if adapted is None and binds_on_server(connection):
        return NULL_TIMESTAMP
    return adapted


def bytes_param(connection: BaseDatabaseWrapper, value: bytes | None) -> Any:
    """A ``bytea`` parameter for a ``statement_cursor``; when bound on the server, None becomes a
    NULL typed ``bytea`` (as ``timestamp_param`` does for timestamps)."""
    if value is None and binds_on_server(connection):
        return NULL_BYTEA
    return value


def statement_cursor(connection: BaseDatabaseWrapper) -> CursorWrapper:
    """A Django cursor for one of the hot path's statements.

    On PostgreSQL with psycopg 3 it binds parameters on the server (whatever
    ``OPTIONS["server_side_binding"]`` says for the ORM): a body goes as binary ``bytea``
    instead of being escaped into the SQL text. With ``WEBHOOKS["PREPARED_STATEMENTS"]`` (the
    default) each statement is also prepared once per connection, so PostgreSQL parses and
    plans it once instead of on every delivery. Set it to False behind a pooler that cannot
    keep prepared statements across transactions (PgBouncer before 1.21 in transaction mode,
    or with ``max_prepared_statements = 0``); left True there, ``fetch_one`` copes.

    To let psycopg prepare at all, a connection whose ``prepare_threshold`` is None (Django's
    default) gets one no statement reaches, so nothing else is prepared. psycopg then also
    forgets the connection's prepared statements after a rollback (one ``DEALLOCATE ALL``), and
    ours are prepared again on their next use. Under ``DEBUG`` (or ``CaptureQueriesContext``)
    nothing is prepared, so that Django's query log shows each statement. Either way the cursor
    is Django's ``CursorWrapper`` (execute wrappers, error wrapping, query logging). Other
    databases, and psycopg 2, get ``connection.cursor()``.
    """
    if not binds_on_server(connection):
        return connection.cursor()
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
    cursor: _PreparingCursor
    if prepared and connection.alias not in _unprepared_aliases:
        if raw.prepare_threshold is None:
            # Django's default (None) turns psycopg's preparing off altogether, even for an
            # explicit prepare=True. A threshold no query reaches keeps every other statement
            # unprepared (and the ORM's client-side cursors never prepare) while ours can be.
            raw.prepare_threshold = _NEVER_AUTOMATICALLY
        cursor = _PreparingCursor(raw)
    else:
        cursor = _UnpreparedCursor(raw)
    # django-stubs types make_cursor's and make_debug_cursor's argument as a CursorWrapper; it is
    # the driver's cursor, which they wrap (django.db.backends.base.base).
    if logged:
        return connection.make_debug_cursor(cursor)  # type: ignore[arg-type]
    return connection.make_cursor(cursor)  # type: ignore[arg-type]


def fetch_one(connection: BaseDatabaseWrapper, sql: str, params: Any) -> tuple[Any, ...] | None:
    """Run one hot-path statement through ``statement_cursor``; its first row, or None when it
    returns none (or no result at all, e.g. an UPDATE without RETURNING).

    ``execute`` goes through Django's wrapper: database errors become ``django.db`` errors, and
    the query is logged when queries are logged. A prepared statement that vanished ("prepared
    statement ... does not exist": a pooler in transaction mode between us and PostgreSQL) is
    run again unprepared outside a transaction (inside one the error stands), one error is
    logged, and the process stops preparing on that database.
    """
    try:
        return _fetch_one(connection, sql, params)
    except ProgrammingError as exc:
        if not isinstance(exc.__cause__, _LostStatement):
            raise
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


def _fetch_one(connection: BaseDatabaseWrapper, sql: str, params: Any) -> tuple[Any, ...] | None:
    with statement_cursor(connection) as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone() if cursor.description is not None else None


# -- the statements ------------------------------------------------------------------------------

#: Columns written by the insert; the others keep their database defaults (NULL).
INSERT_FIELDS = (
    "endpoint",
    "event_id",
    "event_type",
    "body",
    "payload",
    "headers",
    "status",
    "attempts",
    "last_error",
    "received_at",
    "occurred_at",
    "content_digest",
    "source",
)
#: Columns of a run's upsert, in ``RunOutcome``'s order (``attempts`` is 1 or one more).
RUN_COLUMNS = ("event_id", "handler", "status", "attempts", "last_error", "next_attempt_at",
               "started_at", "finished_at")  # fmt: skip
#: Columns of an attempt's row, in ``save_outcome``'s parameter order.
ATTEMPT_FIELDS = ("event", "number", "started_at", "finished_at", "outcome", "error")
JSON_FIELDS = ("payload", "headers")
DATETIME_FIELDS = ("received_at", "occurred_at")
BYTES_FIELDS = ("content_digest",)

#: The claim in one statement (PostgreSQL): lock the row if it is free, due and has an attempt
#: left, and count the attempt. ``{also}`` is where ``RELAX_COMMIT`` adds its condition.
CLAIM_SQL = """
UPDATE {table} SET
  attempts = attempts + 1,
  last_attempt_at = %(now)s,
  status = %(processing)s,
  next_attempt_at = NULL
WHERE id = (
  SELECT id FROM {table}
  WHERE id = %(pk)s AND status IN (%(received)s, %(processing)s) AND attempts < %(max)s
    AND (next_attempt_at IS NULL OR next_attempt_at <= %(now)s)
  FOR UPDATE SKIP LOCKED
){also}
RETURNING attempts, endpoint, event_type,
  (SELECT COUNT(*) FROM {runs} WHERE {runs}.event_id = {table}.id)
"""

#: The claim's relaxed commit: in autocommit the claim is its own transaction, and this CTE lets
#: that commit return before its WAL is flushed (``is_local``: this commit only). Losing a claim
#: in a database crash only loses one count of ``attempts``, and the run's own (durable) COMMIT
#: flushes the claim's WAL record with it; it saves one disk flush per event. Never used inside
#: a caller's transaction (an eager task, a test), whose commit it would relax.
RELAX_COMMIT = "WITH relax AS (SELECT set_config('synchronous_commit', 'off', true) AS setting)"
RELAX_CONDITION = " AND EXISTS (SELECT 1 FROM relax)"

Converters = list[tuple[int, Any, list[Callable[..., Any]]]]


@dataclass(frozen=True)
class Statements:
    """One database's statements, with the event table's and columns' quoted names."""

    insert: str
    stored_conflict: str
    claim: str | None  # PostgreSQL only; other databases claim with the ORM
    claim_relaxed: str | None
    lock: str
    save_outcome: str
    #: The attempt's INSERT on its own, for databases where ``save_outcome`` does not include it.
    record_attempt: str | None
    #: ``save_outcome`` with the run's upsert (PostgreSQL only; elsewhere the ORM writes runs).
    save_outcome_with_run: str | None
    #: The run's upsert on its own (PostgreSQL only).
    save_run: str | None
    #: The event's concrete fields' attribute names, in the lock's column order.
    attnames: list[str]
    #: (column index, Col, converters) of the event's fields that have any, for the lock's row.
    converters: Converters


#: database alias -> its statements, emptied when the settings reload (and on DATABASES).
_statements: dict[str, Statements] = {}
webhooks_settings.register_cache(_statements.clear, also_on=("DATABASES",))


def statements(connection: BaseDatabaseWrapper) -> Statements:
    """The statements for ``connection``'s database, built once per alias: the same text each
    time, so each is prepared once."""
    found = _statements.get(connection.alias)
    if found is None:
        found = _statements[connection.alias] = _build_statements(connection)
    return found


def _build_statements(connection: BaseDatabaseWrapper) -> Statements:
    meta = WebhookEvent._meta
    quote = connection.ops.quote_name
    fields = meta.concrete_fields
    # Every concrete field has a column (the stubs allow None).
    n = {field.name: quote(field.column) for field in fields if field.column}
    table = quote(meta.db_table)
    postgresql = connection.vendor == "postgresql"
    attempts_table = quote(ProcessingAttempt._meta.db_table)
    attempt_columns = ", ".join(
        quote(field.column)
        for field in ProcessingAttempt._meta.concrete_fields
        if field.column and field.name in ATTEMPT_FIELDS
    )
    record_attempt = (
        f"INSERT INTO {attempts_table} ({attempt_columns}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(ATTEMPT_FIELDS))})"
    )
    save_outcome = (
        f"UPDATE {table} SET {n['status']} = %s, {n['next_attempt_at']} = %s, "  # noqa: S608
        f"{n['processed_at']} = %s, {n['last_error']} = %s WHERE {n['id']} = %s"
    )
    lock = (
        f"SELECT {', '.join(n[field.name] for field in fields)} FROM {table} "  # noqa: S608
        f"WHERE {n['id']} = %s AND {n['attempts']} = %s AND {n['last_attempt_at']} = %s"
    )
    if connection.features.has_select_for_update_skip_locked:
        lock += " " + connection.ops.for_update_sql(skip_locked=True)
    runs_table = quote(HandlerRun._meta.db_table)
    run_columns = ", ".join(quote(name) for name in RUN_COLUMNS)
    # The run's first outcome inserts it; a later one (a retry, a replay) updates it and counts
    # one more attempt. A processed run keeps the error of its earlier failure, as the event does.
    upsert_run = (
        f"INSERT INTO {runs_table} AS run ({run_columns}) "  # noqa: S608
        f"VALUES (%s, %s, %s, 1, %s, %s, %s, %s) "
        f"ON CONFLICT (event_id, handler) DO UPDATE SET status = EXCLUDED.status, "
        f"attempts = run.attempts + 1, last_error = CASE WHEN EXCLUDED.status = "
        f"'{HandlerRun.Status.PROCESSED.value}' THEN run.last_error ELSE EXCLUDED.last_error END, "
        f"next_attempt_at = EXCLUDED.next_attempt_at, started_at = EXCLUDED.started_at, "
        f"finished_at = EXCLUDED.finished_at RETURNING id, attempts"
    )
    converters: Converters = []
    for index, field in enumerate(fields):
        col = field.get_col(meta.db_table)
        found = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        if found:
            converters.append((index, col, found))
    return Statements(
        insert=_insert_sql(connection, n, table, compare=postgresql),
        stored_conflict=(
            f"SELECT 0, NULL, {n['body']} = %s FROM {table} "  # noqa: S608
            f"WHERE {n['endpoint']} = %s AND {n['event_id']} = %s "
            f"UNION ALL SELECT 1, {n['event_id']}, NULL FROM {table} "
            f"WHERE {n['endpoint']} = %s AND {n['content_digest']} = %s "
            "ORDER BY 1 LIMIT 1"
        ),
        claim=CLAIM_SQL.format(table=table, runs=runs_table, also="") if postgresql else None,
        claim_relaxed=(
            RELAX_COMMIT + CLAIM_SQL.format(table=table, runs=runs_table, also=RELAX_CONDITION)
            if postgresql
            else None
        ),
        lock=lock,
        save_outcome=(
            f"WITH attempt AS ({record_attempt}) {save_outcome}" if postgresql else save_outcome
        ),
        record_attempt=None if postgresql else record_attempt,
        save_outcome_with_run=(
            f"WITH attempt AS ({record_attempt}), run AS ({upsert_run}) {save_outcome} "  # noqa: S608
            "RETURNING (SELECT id FROM run), (SELECT attempts FROM run)"
            if postgresql
            else None
        ),
        save_run=upsert_run if postgresql else None,
        attnames=[field.attname for field in fields],
        converters=converters,
    )


def _insert_sql(
    connection: BaseDatabaseWrapper, n: dict[str, str], table: str, *, compare: bool
) -> str:
    """The insert (and, with ``compare``, on PostgreSQL, compare) statement: named parameters
    there, so that a value used twice (body, endpoint, event id) is sent once; ``%s`` elsewhere.

    ``ON CONFLICT DO NOTHING`` names no conflict target, so that both unique constraints
    arbitrate (only one target can be named). An event without a digest is skipped by the
    partial one on its predicate (no index entry, no lookup); with no target, PostgreSQL also
    pre-checks the primary key's index. The duplicate's lookup stays the one through the unique
    ``(endpoint, event_id)`` index."""
    columns = ", ".join(n[name] for name in INSERT_FIELDS)
    if compare:
        placeholders = [f"%({name})s" for name in INSERT_FIELDS]
    else:
        placeholders = ["%s"] * len(INSERT_FIELDS)
    pk = n["id"]
    insert = (
        f"INSERT INTO {table} ({columns}) VALUES ({', '.join(placeholders)}) "  # noqa: S608
        f"ON CONFLICT DO NOTHING RETURNING {pk}"
    )
    if not compare:
        return insert
    return (
        f"WITH inserted AS ({insert}) "  # noqa: S608 (names from _meta; values are parameters)
        f"SELECT {pk}, NULL FROM inserted UNION ALL "
        f"SELECT NULL, {n['body']} = %(body)s FROM {table} "
        f"WHERE {n['endpoint']} = %(endpoint)s AND {n['event_id']} = %(event_id)s "
        "AND NOT EXISTS (SELECT 1 FROM inserted)"
    )


# -- receiving: store once ------------------------------------------------------------------------


class Inserted(NamedTuple):
    """The outcome of an insert: whether the event was stored and, for a duplicate of the same
    id whose body the statement compared, whether the stored body is the same (else None)."""

    inserted: bool
    same_body: bool | None


class StoredConflict(NamedTuple):
    """The stored event a duplicate conflicts with: the same id (``same_body`` says whether the
    stored body is the same), or the same signed content under another id (a replay:
    ``replay_of`` is the stored event's id)."""

    same_body: bool | None
    replay_of: str | None


def insert_once(event: WebhookEvent, alias: str) -> bool:
    """Insert ``event`` unless its ``(endpoint, event_id)`` (or its ``content_digest``) is taken;
    True if inserted (and then ``event.pk`` is set). Race-safe: the unique constraints decide,
    never a prior SELECT."""
    return insert_or_compare(event, alias).inserted


def insert_or_compare(event: WebhookEvent, alias: str) -> Inserted:
    """``insert_once``, plus, for a duplicate of the same id, whether the stored body equals this
    one when the database can tell in the same statement (PostgreSQL), else ``same_body`` None
    (``stored_conflict`` tells then). A ``DataError`` (a value the database refuses) and
    connection errors propagate as Django's."""
    connection = connections[alias]
    if connection.vendor not in ("postgresql", "sqlite"):
        return _insert_with_savepoint(event, alias)
    if not connection.in_atomic_block:
        return _insert_on_conflict(event, connection)
    # Inside a transaction (e.g. ATOMIC_REQUESTS): a savepoint keeps a DataError from
    # poisoning the caller's transaction.
    with transaction.atomic(using=alias):
        return _insert_on_conflict(event, connection)


def _insert_on_conflict(event: WebhookEvent, connection: BaseDatabaseWrapper) -> Inserted:
    """One ``INSERT ... ON CONFLICT DO NOTHING``, arbitrated by both unique constraints. On
    PostgreSQL the same statement also compares the stored body of a duplicate of the same id
    (a data-modifying CTE), so such a duplicate costs one round trip. A conflicting row
    committed while the insert waited for it is invisible to that comparison (the statement's
    snapshot predates it), and so is a conflict on the content digest alone (a replay under
    another id: no row of this id): then no row comes back, and the body was not compared."""
    params: Any
    if binds_on_server(connection):
        # The values as psycopg 3 takes them, without a trip through each field's
        # get_db_prep_save.
        params = {name: getattr(event, name) for name in INSERT_FIELDS}
        for name in JSON_FIELDS:
            if params[name] is not None:
                params[name] = Jsonb(params[name])
        for name in DATETIME_FIELDS:
            params[name] = timestamp_param(connection, params[name])
        for name in BYTES_FIELDS:
            params[name] = bytes_param(connection, params[name])
    else:
        by_name = {field.name: field for field in WebhookEvent._meta.concrete_fields}
        values = [
            by_name[name].get_db_prep_save(getattr(event, by_name[name].attname), connection)
            for name in INSERT_FIELDS
        ]
        compare = connection.vendor == "postgresql"
        params = dict(zip(INSERT_FIELDS, values, strict=True)) if compare else values
    row = fetch_one(connection, statements(connection).insert, params)
    if row is None:
        return Inserted(False, None)
    if row[0] is None:
        return Inserted(False, bool(row[1]))
    event.pk = row[0]
    event._state.adding = False
    event._state.db = connection.alias
    return Inserted(True, None)


def insert_once_with_savepoint(event: WebhookEvent, alias: str) -> bool:
    """The portable form of ``insert_once`` for databases without ``ON CONFLICT``: insert in a
    savepoint and treat a unique violation as "already stored"."""
    return _insert_with_savepoint(event, alias).inserted


def _insert_with_savepoint(event: WebhookEvent, alias: str) -> Inserted:
    try:
        with transaction.atomic(using=alias):
            event.save(using=alias, force_insert=True)
    except IntegrityError:
        conflict = stored_conflict(event, alias)
        if conflict is None:
            raise  # not one of our unique constraints
        event.pk = None
        return Inserted(False, conflict.same_body)
    return Inserted(True, None)


def stored_conflict(event: WebhookEvent, alias: str) -> StoredConflict | None:
    """The stored event ``event`` conflicts with, in one indexed query (the stored body is not
    sent back): the same id (with whether its body is the same), else the same content digest
    (a replay: ``replay_of`` its id). None if neither is stored."""
    connection = connections[alias]
    prepare = WebhookEvent._meta.get_field("body").get_db_prep_save
    params = [
        prepare(event.body, connection),
        event.endpoint,
        event.event_id,
        event.endpoint,
        prepare(event.content_digest, connection),
    ]
    with connection.cursor() as cursor:
        cursor.execute(statements(connection).stored_conflict, params)
        row = cursor.fetchone()
    if row is None:
        return None
    if row[0] == 0:
        return StoredConflict(same_body=bool(row[2]), replay_of=None)
    return StoredConflict(same_body=None, replay_of=row[1])


# -- processing: claim, lock, outcome --------------------------------------------------------------


class Claim(NamedTuple):
    """What a claim wrote, the attempt's number, and what the attempt needs to know before it
    locks the row again: the event's endpoint and type (which handlers match) and how many
    ``HandlerRun`` rows it has (none: no need to read them)."""

    attempts: int
    endpoint: str
    event_type: str
    runs: int


def claim(event_pk: int, *, max_attempts: int, now: datetime) -> Claim | None:
    """Lock the event unless an attempt holds it, and, if it is due (``received`` or
    ``processing``, ``next_attempt_at`` empty or reached) and fewer than ``max_attempts`` are
    counted, count an attempt started at ``now`` (status ``processing``, ``next_attempt_at``
    cleared). None if it is missing, locked, finished, not due or out of attempts (``end_lost``).

    Committed at once, unless called inside a transaction (then it is part of it)."""
    connection = transaction.get_connection()
    found = statements(connection)
    if found.claim is None or found.claim_relaxed is None:
        return _claim_with_orm(event_pk, max_attempts=max_attempts, now=now)
    relax = not connection.in_atomic_block
    params = {
        "pk": event_pk,
        "max": max_attempts,
        "now": now,
        "received": Status.RECEIVED,
        "processing": Status.PROCESSING,
    }
    row = fetch_one(connection, found.claim_relaxed if relax else found.claim, params)
    return None if row is None else Claim(*row)


def _due(now: datetime) -> Q:
    """A claimable event's condition, less its attempts (the ORM's form of ``CLAIM_SQL``'s)."""
    return (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)) & Q(
        status__in=(Status.RECEIVED, Status.PROCESSING)
    )


def _claim_with_orm(event_pk: int, *, max_attempts: int, now: datetime) -> Claim | None:
    """``claim`` in the ORM's words, for databases other than PostgreSQL."""
    with transaction.atomic():
        event = (
            WebhookEvent.objects.select_for_update(skip_locked=True)
            .only("id", "attempts", "endpoint", "event_type")
            .filter(_due(now), pk=event_pk, attempts__lt=max_attempts)
            .first()
        )
        if event is None:
            return None
        event.attempts += 1
        event.last_attempt_at = now
        event.status = Status.PROCESSING
        event.next_attempt_at = None
        event.save(update_fields=["attempts", "last_attempt_at", "status", "next_attempt_at"])
        runs = HandlerRun.objects.filter(event_id=event_pk).count()
        return Claim(event.attempts, event.endpoint, event.event_type, runs)


class Lost(NamedTuple):
    """What ``end_lost`` wrote: the lost attempt's number and start, and its error."""

    attempt: int
    started_at: datetime | None
    error: str


def end_lost(
    event_pk: int, *, max_attempts: int, now: datetime, max_error_chars: int
) -> Lost | None:
    """Lock the event (``skip_locked``) if it is due and every one of its ``max_attempts`` is
    counted (the last never recorded an outcome: its worker died mid-handler), and end it
    ``failed``, a ``WorkerLost`` error before the previous one in ``last_error`` (at most
    ``max_error_chars``). None if it is missing, locked, finished, not due or has attempts left.

    Must run inside a transaction: the caller records the lost attempt in the same one, so that
    no reader sees the event ``failed`` without it."""
    if not transaction.get_connection().in_atomic_block:
        raise transaction.TransactionManagementError("end_lost runs inside a transaction.")
    event = (
        WebhookEvent.objects.select_for_update(skip_locked=True)
        .only("id", "attempts", "last_attempt_at", "last_error")
        .filter(_due(now), pk=event_pk, attempts__gte=max_attempts)
        .first()
    )
    if event is None:
        return None
    lost = f"WorkerLost: attempt {event.attempts} of {max_attempts} did not finish"
    event.status = Status.FAILED
    event.next_attempt_at = None
    event.last_error = (f"{lost}; {event.last_error}" if event.last_error else lost)[
        :max_error_chars
    ]
    event.save(update_fields=["status", "next_attempt_at", "last_error"])
    return Lost(event.attempts, event.last_attempt_at, lost)


def lock_claimed(event_pk: int, attempt: int, started_at: datetime) -> WebhookEvent | None:
    """The event row, locked (``skip_locked``), if the claim of attempt ``attempt`` started at
    ``started_at`` still holds (same ``attempts`` and ``last_attempt_at``); else None."""
    connection = transaction.get_connection()
    found = statements(connection)
    params = [event_pk, attempt, timestamp_param(connection, started_at)]
    row = fetch_one(connection, found.lock, params)
    if row is None:
        return None
    values = list(row)
    for index, col, converters in found.converters:
        for converter in converters:
            values[index] = converter(values[index], col, connection)
    return WebhookEvent.from_db(connection.alias, found.attnames, values)


class RunOutcome(NamedTuple):
    """A handler run's outcome, as ``save_outcome`` and ``save_run`` write it (``attempts`` is
    counted by the write: 1 for a new run, one more for an existing one)."""

    event_id: int
    handler: str
    status: str
    last_error: str
    next_attempt_at: datetime | None
    started_at: datetime
    finished_at: datetime


class SavedRun(NamedTuple):
    """The written run's primary key and attempt count."""

    pk: int
    attempts: int


def _run_params(connection: BaseDatabaseWrapper, run: RunOutcome) -> list[Any]:
    return [run.event_id, run.handler, run.status, run.last_error,
            timestamp_param(connection, run.next_attempt_at),
            timestamp_param(connection, run.started_at),
            timestamp_param(connection, run.finished_at)]  # fmt: skip


def _save_run_with_orm(run: RunOutcome) -> SavedRun:
    """``save_run`` in the ORM's words (databases other than PostgreSQL): lock, then update or
    insert, inside the caller's transaction (the event row's lock serialises writers)."""
    found = (
        HandlerRun.objects.select_for_update()
        .filter(event_id=run.event_id, handler=run.handler)
        .first()
    )
    if found is None:
        found = HandlerRun(event_id=run.event_id, handler=run.handler, attempts=0)
    found.status = run.status
    found.attempts += 1
    if run.status != HandlerRun.Status.PROCESSED:
        found.last_error = run.last_error
    found.next_attempt_at = run.next_attempt_at
    found.started_at = run.started_at
    found.finished_at = run.finished_at
    found.save()
    return SavedRun(found.pk, found.attempts)


def save_run(run: RunOutcome) -> SavedRun:
    """A handler run's outcome alone, inside the caller's transaction (the handler's)."""
    connection = transaction.get_connection()
    found = statements(connection)
    if found.save_run is None:
        return _save_run_with_orm(run)
    row = fetch_one(connection, found.save_run, _run_params(connection, run))
    assert row is not None  # an upsert with RETURNING returns its row
    return SavedRun(row[0], row[1])


def save_outcome(
    event_pk: int,
    *,
    status: str,
    next_attempt_at: datetime | None,
    processed_at: datetime | None,
    last_error: str,
    attempt: int,
    started_at: datetime,
    finished_at: datetime,
    outcome: str,
    error: str,
    run: RunOutcome | None = None,
) -> SavedRun | None:
    """An attempt's outcome columns, its ``ProcessingAttempt`` row and, given ``run``, that
    handler's run (inside the caller's transaction): one statement on PostgreSQL, two or three
    elsewhere. Returns the saved run, if any."""
    connection = transaction.get_connection()
    found = statements(connection)
    attempt_params = [event_pk, attempt, timestamp_param(connection, started_at),
                      timestamp_param(connection, finished_at), outcome, error]  # fmt: skip
    params = [status, timestamp_param(connection, next_attempt_at),
              timestamp_param(connection, processed_at), last_error, event_pk]  # fmt: skip
    if found.record_attempt is not None:
        saved = None if run is None else _save_run_with_orm(run)
        fetch_one(connection, found.record_attempt, attempt_params)
        fetch_one(connection, found.save_outcome, params)
        return saved
    if run is None:
        fetch_one(connection, found.save_outcome, attempt_params + params)
        return None
    assert found.save_outcome_with_run is not None  # PostgreSQL builds both
    row = fetch_one(connection, found.save_outcome_with_run,
                    attempt_params + _run_params(connection, run) + params)  # fmt: skip
    assert row is not None  # the event row is locked by the caller: the UPDATE finds it
    return SavedRun(row[0], row[1])
