"""One processing attempt of a stored webhook event: claim it, run its handlers, record the
outcome (and, for a failure, when the retry is due).

``process_event`` runs in two short steps:

1. **Claim** (its own transaction, committed at once; on PostgreSQL one ``UPDATE ... WHERE id =
   (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING``): lock the row, skipping
   it if locked; leave it alone unless it is due (``received`` or ``processing``, and
   ``next_attempt_at`` empty or reached); count the attempt (``attempts + 1``,
   ``last_attempt_at = now``, status ``processing``). Because the count is committed before any
   handler runs, an attempt whose worker dies mid-handler is still counted: when a claim finds
   every attempt already used (the last one never finished), the event ends ``failed`` without
   running its handlers again, so a poison event that kills its worker cannot loop forever.
2. **Run** (a second transaction): lock the row again, with ``skip_locked``, and check that the
   claim is still ours (same ``attempts`` and ``last_attempt_at``; a newer claim means another
   worker took over). Then run the handlers and write the outcome in
   the same transaction: handler writes and the ``processed`` mark commit together. When a
   handler raises, that transaction is rolled back (its writes with it) and the outcome
   (``ignored``, retry or ``failed``) is written by a third, short one, if the claim still
   holds: a delivery that claimed the event in the moment between owns it and its handlers run
   once more (as any delivery racing between a claim and a run may). The row stays locked
   while the handlers run, so concurrent deliveries skip it.

A retry is scheduled by ``webhooks.queueing.schedule_retry``; the Celery tasks
(``webhooks.tasks``) and a synchronous replay (``webhooks.services``) call ``process_event``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from celery import Task
from django.db import transaction
from django.utils import timezone

from .conf import processing_setting
from .db import fetch_one, timestamp_param
from .exceptions import Ignore, PermanentFailure
from .models import WebhookEvent
from .queueing import schedule_retry
from .registry import handlers_for
from .signals import send_logged, webhook_failed, webhook_ignored, webhook_processed

logger = logging.getLogger(__name__)

Status = WebhookEvent.Status

#: The longest ``last_error`` kept, in characters.
LAST_ERROR_MAX_CHARS = 2000


def process_event(event_pk: int, *, retry: bool = False, task: Task | None = None) -> str | None:
    """Make one processing attempt of an event; return its status after, or None if skipped.

    Skipped (None): the event does not exist, is locked by an attempt in progress, is finished,
    or its next retry is not yet due. Otherwise the result is ``processed``, ``ignored``,
    ``failed``, or ``processing`` when a retry is due at ``next_attempt_at``. With ``retry``
    (the Celery tasks, a synchronous replay) that retry is also scheduled, by
    ``schedule_retry``, from the ``next_attempt_at`` the attempt wrote (no second read); with
    ``task`` (the running ``webhooks.process_event``) as that task's ``retry()``, which raises
    Celery's ``Retry``.
    """
    status, next_attempt_at = _attempt(event_pk)
    if retry and next_attempt_at is not None:
        schedule_retry(event_pk, next_attempt_at, task=task)
    return status


def retry_delay(attempts: int) -> float:
    """Seconds to wait before the attempt after ``attempts`` failed ones: full jitter.

    ``random.uniform(0, min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2 ** (attempts - 1)))``, so the
    cap doubles after each failure (10 s, 20 s, 40 s... by default) up to ``RETRY_MAX_DELAY``.
    """
    base = float(processing_setting("RETRY_BASE_DELAY"))
    cap = float(processing_setting("RETRY_MAX_DELAY"))
    exponent = max(attempts - 1, 0)
    ceiling = cap if exponent >= 64 else min(cap, base * 2**exponent)
    return random.uniform(0, max(ceiling, 0.0))


def describe_error(exc: BaseException) -> str:
    """What ``last_error`` keeps: the exception's type and message, bounded in length.

    No traceback (locals and frames may hold secrets); handlers should not put secrets in their
    exception messages.
    """
    message = str(exc)
    text = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if text.startswith("builtins."):
        text = text[len("builtins.") :]
    if message:
        text = f"{text}: {message}"
    return text[:LAST_ERROR_MAX_CHARS]


DUE_STATUSES = (Status.RECEIVED, Status.PROCESSING)


def is_due(event: WebhookEvent, now: datetime | None = None) -> bool:
    """Whether a processing attempt may start now."""
    if event.status not in DUE_STATUSES:
        return False
    now = now or timezone.now()
    return event.next_attempt_at is None or event.next_attempt_at <= now


#: The claim in one statement (PostgreSQL): lock the row if it is free and due, and either count
#: the attempt or, when every attempt is used up (the last one's worker died), end it ``failed``.
#: In autocommit the statement is its own transaction; the ``set_config`` CTE then lets that
#: commit return before its WAL is flushed (``is_local``: this commit only). Losing a claim in a
#: database crash only loses one count of ``attempts``, and the run's own (durable) COMMIT
#: flushes the claim's WAL record with it; it saves one disk flush per event, about half the
#: database cost of processing. Inside a caller's transaction (an eager task, a test) the
#: setting is left as it is (``current_setting``), so the caller's commit is never relaxed.
CLAIM_SQL = """
WITH relax AS (SELECT set_config('synchronous_commit', %(sync)s, true) AS setting)
UPDATE {table} SET
  attempts = CASE WHEN attempts < %(max)s THEN attempts + 1 ELSE attempts END,
  last_attempt_at = CASE WHEN attempts < %(max)s THEN %(now)s ELSE last_attempt_at END,
  status = CASE WHEN attempts < %(max)s THEN %(processing)s ELSE %(failed)s END,
  next_attempt_at = NULL,
  last_error = CASE WHEN attempts < %(max)s THEN last_error
    ELSE LEFT('WorkerLost: attempt ' || attempts || ' of ' || %(max)s || ' did not finish'
              || CASE WHEN last_error = '' THEN '' ELSE '; ' || last_error END, %(max_chars)s)
  END
WHERE id = (
  SELECT id FROM {table}
  WHERE id = %(pk)s AND status IN (%(received)s, %(processing)s)
    AND (next_attempt_at IS NULL OR next_attempt_at <= %(now)s)
  FOR UPDATE SKIP LOCKED
) AND EXISTS (SELECT 1 FROM relax)
RETURNING attempts, status, last_error
"""


def _claim(event_pk: int) -> tuple[int, datetime] | str | None:
    """Step 1: count the attempt and commit. Returns the claim token, a final status, or None."""
    max_attempts = processing_setting("MAX_ATTEMPTS")
    connection = transaction.get_connection()
    if connection.vendor == "postgresql":
        relax = not connection.in_atomic_block
        return _claim_in_one_statement(event_pk, max_attempts, relax=relax)
    with transaction.atomic():
        event = (
            WebhookEvent.objects.select_for_update(skip_locked=True)
            .only("id", "status", "attempts", "next_attempt_at", "last_error")
            .filter(pk=event_pk)
            .first()
        )
        if event is None:
            return None  # gone, or locked by an attempt in progress
        now = timezone.now()
        if not is_due(event, now):
            return None
        if event.attempts >= max_attempts:
            # Every attempt has been counted and the last one never recorded an outcome: its
            # worker died mid-handler. Do not run the handlers again.
            lost = f"WorkerLost: attempt {event.attempts} of {max_attempts} did not finish"
            event.status = Status.FAILED
            event.next_attempt_at = None
            event.last_error = f"{lost}; {event.last_error}" if event.last_error else lost
            event.save(update_fields=["status", "next_attempt_at", "last_error"])
            error = RuntimeError(lost)
            transaction.on_commit(partial(_send_failed, event_pk, error))
            return Status.FAILED
        event.attempts += 1
        event.last_attempt_at = now
        event.status = Status.PROCESSING
        event.next_attempt_at = None
        event.save(update_fields=["attempts", "last_attempt_at", "status", "next_attempt_at"])
        return event.attempts, now


def _claim_in_one_statement(
    event_pk: int, max_attempts: int, *, relax: bool
) -> tuple[int, datetime] | str | None:
    """``_claim`` as one ``UPDATE ... RETURNING`` (PostgreSQL): one round trip instead of five.

    ``relax`` (not inside a caller's transaction) makes the claim's commit asynchronous; inside
    a caller's transaction ``synchronous_commit`` is set to its current value, i.e. unchanged.
    """
    connection = transaction.get_connection()
    now = timezone.now()
    params = {
        "pk": event_pk,
        "max": max_attempts,
        "now": now,
        "received": Status.RECEIVED,
        "processing": Status.PROCESSING,
        "failed": Status.FAILED,
        "max_chars": LAST_ERROR_MAX_CHARS,
    }
    if relax:
        params["sync"] = "off"
    sql = _statements(connection)["claim_relaxed" if relax else "claim"]
    row = fetch_one(connection, sql, params)
    if row is None:
        return None  # gone, locked by an attempt in progress, finished, or not due
    attempts, status, last_error = row
    if status == Status.FAILED:
        lost = last_error.split(";", 1)[0]
        transaction.on_commit(partial(_send_failed, event_pk, RuntimeError(lost)))
        return Status.FAILED
    return attempts, now


#: Per database vendor, processing's hand-written statements, built once (like the receive
#: statement's ``receiving._INSERT_SQL``): the same text each time, so each is prepared once.
_STATEMENTS: dict[str, dict[str, str]] = {}


def _statements(connection: Any) -> dict[str, str]:
    """Processing's statements for ``connection``'s vendor: ``claim_relaxed`` and ``claim``
    (PostgreSQL; see ``CLAIM_SQL``), ``lock`` (``_lock_claimed``) and ``save``
    (``_save_outcome``), with the event table's and columns' quoted names."""
    found = _STATEMENTS.get(connection.vendor)
    if found is not None:
        return found
    meta = WebhookEvent._meta
    quote = connection.ops.quote_name
    n = {field.name: quote(field.column) for field in meta.concrete_fields}
    n["table"] = quote(meta.db_table)
    columns = ", ".join(n[field.name] for field in meta.concrete_fields)
    lock = (
        f"SELECT {columns} FROM {n['table']} WHERE {n['id']} = %s "  # noqa: S608
        f"AND {n['attempts']} = %s AND {n['last_attempt_at']} = %s"
    )
    if connection.features.has_select_for_update_skip_locked:
        lock += " " + connection.ops.for_update_sql(skip_locked=True)
    claim = CLAIM_SQL.format(table=n["table"])
    found = {
        "claim_relaxed": claim,
        "claim": claim.replace("%(sync)s", "current_setting('synchronous_commit')"),
        "lock": lock,
        "save": (
            f"UPDATE {n['table']} SET {n['status']} = %s, {n['next_attempt_at']} = %s, "  # noqa: S608
            f"{n['processed_at']} = %s, {n['last_error']} = %s WHERE {n['id']} = %s"
        ),
    }
    _STATEMENTS[connection.vendor] = found
    return found


def _lock_claimed(event_pk: int, attempt: int, started_at: datetime) -> WebhookEvent | None:
    """Step 2's lock: the event row, locked (``skip_locked``), if our claim still holds.

    One plain statement, its values converted as the ORM would (``from_db`` and each field's
    database converters), without the ORM's query building (most of an attempt's CPU)."""
    connection = transaction.get_connection()
    fields = WebhookEvent._meta.concrete_fields
    params = [event_pk, attempt, timestamp_param(connection, started_at)]
    row = fetch_one(connection, _statements(connection)["lock"], params)
    if row is None:
        return None
    values = list(row)
    for index, col, converters in _converters(connection):
        for converter in converters:
            values[index] = converter(values[index], col, connection)
    return WebhookEvent.from_db(connection.alias, [f.attname for f in fields], values)


#: Per database vendor: (column index, Col, converters) of the event's fields that have any.
_CONVERTERS: dict[str, list[tuple[int, Any, list[Callable[..., Any]]]]] = {}


def _converters(connection: Any) -> list[tuple[int, Any, list[Callable[..., Any]]]]:
    found = _CONVERTERS.get(connection.vendor)
    if found is None:
        found = []
        table = WebhookEvent._meta.db_table
        for index, field in enumerate(WebhookEvent._meta.concrete_fields):
            col = field.get_col(table)
            converters = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
            if converters:
                found.append((index, col, converters))
        _CONVERTERS[connection.vendor] = found
    return found


def _save_outcome(event: WebhookEvent) -> None:
    """The outcome's columns in one UPDATE (what ``save(update_fields=...)`` wrote)."""
    connection = transaction.get_connection()
    params = [event.status, timestamp_param(connection, event.next_attempt_at),
              timestamp_param(connection, event.processed_at), event.last_error,
              event.pk]  # fmt: skip
    fetch_one(connection, _statements(connection)["save"], params)


def _attempt(event_pk: int) -> tuple[str | None, datetime | None]:
    """``process_event``'s attempt: its status and, when a retry is due, ``next_attempt_at``."""
    claim = _claim(event_pk)
    if claim is None or isinstance(claim, str):
        return claim, None
    attempt, started_at = claim
    max_attempts = processing_setting("MAX_ATTEMPTS")

    try:
        with transaction.atomic():
            event = _lock_claimed(event_pk, attempt, started_at)
            if event is None or event.status != Status.PROCESSING:
                return None, None  # another worker claimed it after us: it runs the handlers
            handlers = handlers_for(event.endpoint, event.event_type)
            try:
                for handler in handlers:
                    handler(event)
            except Exception as exc:
                raise _HandlerRaised(exc) from exc
            if handlers:
                return _record_outcome(event, Status.PROCESSED, attempt, max_attempts)
            event.last_error = ""
            return _record_outcome(event, Status.IGNORED, attempt, max_attempts)
    except _HandlerRaised as raised:
        # The handlers' writes were rolled back with the transaction; the outcome is recorded in
        # a new one, if the claim still holds (a delivery that claimed the event in between owns
        # it now). Cheaper than a savepoint around the handlers on the (common) success path.
        error = raised.error
        with transaction.atomic():
            event = _lock_claimed(event_pk, attempt, started_at)
            if event is None or event.status != Status.PROCESSING:
                return None, None
            if isinstance(error, Ignore):
                event.last_error = describe_error(error) if str(error) else ""
                return _record_outcome(event, Status.IGNORED, attempt, max_attempts)
            if isinstance(error, PermanentFailure) or attempt >= max_attempts:
                return _record_outcome(event, Status.FAILED, attempt, max_attempts, error=error)
            return _record_outcome(event, Status.PROCESSING, attempt, max_attempts, error=error)


class _HandlerRaised(Exception):
    """Carries a handler's exception out of the transaction it rolls back."""

    def __init__(self, error: Exception) -> None:
        super().__init__(type(error).__name__)
        self.error = error


def _record_outcome(
    event: WebhookEvent,
    outcome: str,
    attempt: int,
    max_attempts: int,
    *,
    error: BaseException | None = None,
) -> tuple[str, datetime | None]:
    """Write the attempt's outcome (inside the caller's transaction) and send its signal on
    commit. Returns the outcome and ``next_attempt_at``: ``processing`` means a retry is due
    then."""
    now = timezone.now()
    event.status = outcome
    event.next_attempt_at = None
    if outcome in (Status.PROCESSED, Status.IGNORED):
        event.processed_at = now
    if error is not None:
        event.last_error = describe_error(error)
        logger.warning(
            "webhooks: handler failed for %s:%s (attempt %s of %s): %s",
            event.endpoint,
            event.event_id,
            attempt,
            max_attempts,
            type(error).__name__,
        )
    if outcome == Status.PROCESSING:
        event.next_attempt_at = now + timedelta(seconds=retry_delay(attempt))
    _save_outcome(event)
    if outcome == Status.PROCESSED:
        transaction.on_commit(partial(send_logged, webhook_processed, WebhookEvent, event=event))
    elif outcome == Status.IGNORED:
        transaction.on_commit(partial(send_logged, webhook_ignored, WebhookEvent, event=event))
    elif outcome == Status.FAILED:
        transaction.on_commit(
            partial(send_logged, webhook_failed, WebhookEvent, event=event, error=error)
        )
    return outcome, event.next_attempt_at


def _send_failed(event_pk: int, error: BaseException) -> None:
    event = WebhookEvent.objects.filter(pk=event_pk).first()
    if event is not None:
        send_logged(webhook_failed, WebhookEvent, event=event, error=error)
