"""Processing of stored webhook events: enqueue, attempt, retry schedule, replay, sweep, prune.

Business logic lives here; the Celery tasks, commands, admin actions and API are thin shells.

One processing attempt (``process_event``) runs in two short steps:

1. **Claim** (its own transaction, committed at once; on PostgreSQL one ``UPDATE ... WHERE id =
   (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING``): lock the row, skipping it if locked; leave
   it alone unless it is due (``received`` or ``processing``, and ``next_attempt_at`` empty or
   reached); count the attempt (``attempts + 1``,
   ``last_attempt_at = now``, status ``processing``). Because the count is committed before any
   handler runs, an attempt whose worker dies mid-handler is still counted: when a claim finds
   every attempt already used (the last one never finished), the event ends ``failed`` without
   running its handlers again, so a poison event that kills its worker cannot loop forever.
2. **Run** (a second transaction): lock the row again, with ``skip_locked``, and check that the
   claim is still ours (same ``attempts`` and ``last_attempt_at``; a newer claim means another
   worker took over). Then run the handlers and write the outcome in the same transaction:
   handler writes and the ``processed`` mark commit together. When a handler raises, that
   transaction is rolled back (its writes with it) and the outcome (``ignored``, retry or
   ``failed``) is written by a third, short one, if the claim still holds: a delivery that
   claimed the event in the moment between owns it and its handlers run once more (as any
   delivery racing between a claim and a run may). The row stays locked while the handlers
   run, so concurrent deliveries skip it.
"""

from __future__ import annotations

import functools
import logging
import operator
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from celery import Task
from celery.exceptions import Retry
from django.db import router, transaction
from django.db.models import DateTimeField, F, Q, QuerySet, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from .conf import webhooks_settings
from .db import fetch_one, timestamp_param
from .exceptions import BrokerUnavailable, Ignore, PermanentFailure
from .models import WebhookEvent
from .providers.base import ConfigProblem, is_number
from .registry import handlers_for
from .signals import send_logged, webhook_failed, webhook_ignored, webhook_processed

logger = logging.getLogger(__name__)

Status = WebhookEvent.Status
DUE_STATUSES = (Status.RECEIVED, Status.PROCESSING)
CHUNK_SIZE = 500
LAST_ERROR_MAX_CHARS = 2000


# --------------------------------------------------------------------------------------------
# Settings of processing


def _number(
    *, integer: bool = False, at_least: float, at_most: float, nullable: bool = False
) -> Callable[[Any], bool]:
    """A rule for a number setting (``providers.base.is_number``), None allowed if ``nullable``."""
    return lambda value: (
        (nullable and value is None)
        or is_number(value, integer=integer, at_least=at_least, at_most=at_most)
    )


_DEFAULT_HINT = "Leave it out to use the default."

#: The largest number of seconds a processing setting may hold: 30 days. Every one of them ends
#: up in a ``timedelta`` or a Celery countdown; a bound keeps those finite and meaningful.
MAX_SETTING_SECONDS = 30 * 86_400


def _seconds(*, nullable: bool = False) -> tuple[Callable[[Any], bool], str, str]:
    what = f"a number of seconds from 0 to {MAX_SETTING_SECONDS:,} (30 days)"
    return (_number(at_least=0, at_most=MAX_SETTING_SECONDS, nullable=nullable),
            what + (", or None" if nullable else ""), _DEFAULT_HINT)  # fmt: skip


#: key -> (rule, what it must be, hint): the one table the E008 check and processing read.
PROCESSING_SETTINGS: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "MAX_ATTEMPTS": (_number(integer=True, at_least=1, at_most=1000),
                     "a whole number of attempts from 1 to 1,000", _DEFAULT_HINT),
    "RETRY_BASE_DELAY": _seconds(),
    "RETRY_MAX_DELAY": _seconds(),
    "STUCK_AFTER": _seconds(),
    "RETENTION_DAYS": (_number(at_least=0, at_most=36_500),
                       "a number of days from 0 to 36,500", _DEFAULT_HINT),
    "REQUEUE_RECEIVED_AFTER": _seconds(),
    "REQUEUE_MAX_INTERVAL": _seconds(),
    "DISPATCH_INTERVAL": (_number(at_least=0, at_most=60, nullable=True),
                          "a number of seconds from 0 to 60, or None", _DEFAULT_HINT),
    "DISPATCH_BATCH_SIZE": (_number(integer=True, at_least=1, at_most=10_000),
                            "a whole number of events from 1 to 10,000", _DEFAULT_HINT),
    "DISPATCH_SHUTDOWN_TIMEOUT": (_number(at_least=0, at_most=600),
                                  "a number of seconds from 0 to 600", _DEFAULT_HINT),
    "TASK_QUEUE": (lambda value: value is None or (isinstance(value, str) and bool(value.strip())),
                   "a Celery queue name or None",
                   "None sends processing tasks to Celery's default queue."),
    "PREPARED_STATEMENTS": (lambda value: isinstance(value, bool), "True or False",
                            "False behind a pooler that drops them."),
}  # fmt: skip


def _setting_problem(key: str) -> ConfigProblem | None:
    value = webhooks_settings[key]
    valid, expected, hint = PROCESSING_SETTINGS[key]
    if valid(value):
        return None
    return ConfigProblem("E008", f'WEBHOOKS["{key}"]', f"must be {expected}, not {value!r}.", hint)


def processing_config_problems() -> list[ConfigProblem]:
    """What is wrong with the processing settings (reported by the system check E008)."""
    return [problem for key in PROCESSING_SETTINGS if (problem := _setting_problem(key))]


def processing_setting(key: str) -> Any:
    """A processing setting, checked: raises ``WebhookConfigurationError`` naming the key."""
    problem = _setting_problem(key)
    if problem is not None:
        raise problem.as_exception()
    return webhooks_settings[key]


# --------------------------------------------------------------------------------------------
# Enqueueing


def _task_options() -> dict[str, Any]:
    """The publish options every processing task shares: the ``TASK_QUEUE``, if one is set."""
    queue = processing_setting("TASK_QUEUE")
    return {"queue": queue} if queue else {}


def publish_process_task(event_pk: int, *, countdown: float | None = None) -> bool:
    """Publish ``webhooks.process_event`` for one event now; ``False`` if the broker refused.

    Never raises for a broker failure and never hangs on it (the project's Celery settings give
    the connection a short timeout and no publish retries): the event is already stored, and the
    sweeper (``requeue_stuck``) enqueues it later. The log line carries the exception's type only,
    never the broker URL or its credentials.
    """
    from .tasks import process_event as process_event_task

    options = _task_options()
    if countdown:
        options["countdown"] = countdown
    try:
        process_event_task.apply_async(args=(event_pk,), **options)
    except Exception as exc:
        logger.warning(
            "webhooks: could not enqueue event pk=%s (%s); it stays queued in the database "
            "and the sweeper will enqueue it later",
            event_pk,
            type(exc).__name__,
        )
        return False
    return True


def publish_process_batch(event_pks: Sequence[int]) -> bool:
    """Publish ``webhooks.process_events`` for these events now, ``DISPATCH_BATCH_SIZE`` per
    message, all through one connection checkout; ``False`` if the broker refused.

    What the dispatcher thread calls. Like ``publish_process_task`` it never raises for a broker
    failure: the events stay ``received`` and the sweeper enqueues them later; the warning names
    the primary keys and the exception's type only.
    """
    from .tasks import process_events as process_events_task

    if not event_pks:
        return True
    size = processing_setting("DISPATCH_BATCH_SIZE")
    options = _task_options()
    chunks = [list(event_pks[i : i + size]) for i in range(0, len(event_pks), size)]
    sent = 0
    try:
        with process_events_task.app.producer_or_acquire() as producer:
            for chunk in chunks:
                process_events_task.apply_async(args=(chunk,), producer=producer, **options)
                sent += 1
    except Exception as exc:
        unsent = [pk for chunk in chunks[sent:] for pk in chunk]
        logger.warning(
            "webhooks: could not enqueue %s event(s) (pk=%s) (%s); they stay queued in the "
            "database and the sweeper will enqueue them later",
            len(unsent),
            ",".join(map(str, unsent[:20])) + (",..." if len(unsent) > 20 else ""),
            type(exc).__name__,
        )
        return False
    return True


def schedule_retry(event_pk: int, next_attempt_at: datetime, *, task: Task | None = None) -> bool:
    """Schedule the event's retry with Celery's ``countdown`` until ``next_attempt_at`` (what the
    failed attempt wrote); ``False`` if the broker refused the publish.

    The one way a retry is scheduled (``process_event(..., retry=True)`` calls it). Given the
    running ``webhooks.process_event`` task, this is that task's own ``retry()``, which raises
    Celery's ``Retry`` (and, under ``task.apply()``, runs the retry eagerly); otherwise a new
    ``webhooks.process_event`` message is published. Either way it goes to ``TASK_QUEUE``. A
    refused publish is logged (the exception's type only) and swallowed: the event keeps its
    ``next_attempt_at`` and the sweeper enqueues it once that is ``STUCK_AFTER`` in the past.
    """
    countdown = max((next_attempt_at - timezone.now()).total_seconds(), 0.0)
    if task is None:
        return publish_process_task(event_pk, countdown=countdown)
    try:
        raise task.retry(countdown=countdown, **_task_options())
    except Retry:
        raise
    except Exception as exc:
        logger.warning(
            "webhooks: could not schedule the retry of event pk=%s (%s); the sweeper will "
            "enqueue it later",
            event_pk,
            type(exc).__name__,
        )
        return False


def dispatches_inline() -> bool:
    """Whether new events' tasks are published by the committing thread, one per event:
    ``DISPATCH_INTERVAL`` is None, or Celery runs tasks eagerly (a user's tests)."""
    # Read without validation on this path (one per delivery): a bad value is reported by the
    # system check, and the dispatcher thread treats it as 0.
    if webhooks_settings["DISPATCH_INTERVAL"] is None:
        return True
    return celery_is_eager()


def celery_is_eager() -> bool:
    """Whether the Celery app runs tasks eagerly (``task_always_eager``), read cheaply: a value
    set at run time (``app.conf.task_always_eager = ...``) is seen at once; the configured one
    (Django settings or Celery's default) is read once, since reading it through ``app.conf``
    costs more than the rest of the enqueue, and kept until ``webhooks_settings`` reloads
    (``override_settings`` of a ``CELERY_`` setting, or ``reload()``)."""
    from .tasks import process_event as process_event_task

    changed = process_event_task.app.conf.changes.get("task_always_eager")
    if changed is not None:
        return bool(changed)
    return _configured_eager()


@functools.cache
def _configured_eager() -> bool:
    from .tasks import process_event as process_event_task

    return bool(process_event_task.app.conf.task_always_eager)


webhooks_settings.register_cache(_configured_eager.cache_clear, also_on=("CELERY",))


def enqueue_on_commit(event: WebhookEvent) -> None:
    """Have the event processed once the current transaction commits (a transactional outbox).

    By default the event's primary key goes to this process's dispatcher
    (``webhooks.dispatch``), which publishes it from a background thread within about
    ``DISPATCH_INTERVAL`` seconds, batched with others; with ``DISPATCH_INTERVAL = None`` (or
    eager Celery) ``webhooks.process_event`` is published by the committing thread. Outside a
    transaction this happens at once. A broker failure is logged and swallowed either way: the
    event stays ``received`` and ``requeue_stuck`` enqueues it later.
    """
    using = event._state.db or router.db_for_write(WebhookEvent)
    if dispatches_inline():
        transaction.on_commit(partial(publish_process_task, event.pk), using=using)
    else:
        from .dispatch import dispatcher

        transaction.on_commit(partial(dispatcher.submit, event.pk), using=using)


# --------------------------------------------------------------------------------------------
# Processing


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
        exc = raised.error
        with transaction.atomic():
            event = _lock_claimed(event_pk, attempt, started_at)
            if event is None or event.status != Status.PROCESSING:
                return None, None
            if isinstance(exc, Ignore):
                event.last_error = describe_error(exc) if str(exc) else ""
                return _record_outcome(event, Status.IGNORED, attempt, max_attempts)
            if isinstance(exc, PermanentFailure) or attempt >= max_attempts:
                return _record_outcome(event, Status.FAILED, attempt, max_attempts, error=exc)
            return _record_outcome(event, Status.PROCESSING, attempt, max_attempts, error=exc)


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


# --------------------------------------------------------------------------------------------
# Operator actions: replay, ignore, sweep, prune


def _pks(queryset: QuerySet[WebhookEvent], chunk_size: int) -> Iterator[list[int]]:
    """The queryset's primary keys in lists of ``chunk_size``, streamed from the database."""
    batch: list[int] = []
    for pk in queryset.values_list("pk", flat=True).iterator(chunk_size=chunk_size):
        batch.append(pk)
        if len(batch) >= chunk_size:
            yield batch
            batch = []
    if batch:
        yield batch


def replay_event(event: WebhookEvent, *, sync: bool = False) -> None:
    """Set one event back to ``received`` with ``attempts`` 0 and process it again."""
    replay_events(WebhookEvent.objects.filter(pk=event.pk), sync=sync)
    event.refresh_from_db()


def replay_events(
    queryset: QuerySet[WebhookEvent] | Iterable[WebhookEvent],
    *,
    sync: bool = False,
    dry_run: bool = False,
    chunk_size: int = CHUNK_SIZE,
    on_result: Callable[[int, str | None], None] | None = None,
) -> int:
    """Replay the events: back to ``received``, ``attempts`` 0, then enqueue (or, with ``sync``,
    process each in this process). Returns how many were replayed (would be, with ``dry_run``).

    Rows are streamed in chunks, so memory does not grow with the count. Any status may be
    replayed: this is an operator's explicit request (the default filter of the command is
    ``failed``). A replay never waits on the event's age: timestamps are checked at receipt only.
    With ``sync``, ``on_result(pk, status)`` is called after each event's attempt; an attempt
    that schedules a retry publishes it with Celery's countdown.
    """
    if not isinstance(queryset, QuerySet):
        queryset = WebhookEvent.objects.filter(pk__in=[e.pk for e in queryset])
    if not queryset.query.is_sliced:
        queryset = queryset.order_by()
    count = 0
    for pks in _pks(queryset, chunk_size):
        if dry_run:
            count += len(pks)
            continue
        with transaction.atomic():
            count += WebhookEvent.objects.filter(pk__in=pks).update(
                status=Status.RECEIVED,
                attempts=0,
                next_attempt_at=timezone.now(),
                processed_at=None,
            )
            if not sync:
                for pk in pks:
                    transaction.on_commit(partial(publish_process_task, pk))
        if sync:
            for pk in pks:
                status = process_event(pk, retry=True)
                if on_result is not None:
                    on_result(pk, status)
    logger.info("webhooks: replayed %s event(s)%s", count, " (sync)" if sync else "")
    return count


#: The statuses an operator may end ``ignored``: unfinished or failed.
IGNORABLE_STATUSES = (Status.RECEIVED, Status.PROCESSING, Status.FAILED)


def mark_ignored(event: WebhookEvent, *, reason: str = "") -> bool:
    """End an unfinished or failed event ``ignored``. False if it was processed or ignored.

    If an attempt is running, this waits for it and then applies only if the event did not end
    ``processed`` meanwhile.
    """
    changed, _ = mark_ignored_many(WebhookEvent.objects.filter(pk=event.pk), reason=reason)
    event.refresh_from_db()
    return bool(changed)


def mark_ignored_many(
    queryset: QuerySet[WebhookEvent], *, reason: str = "", chunk_size: int = CHUNK_SIZE
) -> tuple[int, int]:
    """End the queryset's unfinished or failed events ``ignored``: ``(changed, skipped)``,
    skipped being those already processed or ignored.

    Rows are streamed in chunks; each chunk's eligible rows are locked (waiting for an attempt
    in progress, then re-checked), updated in one statement, and ``webhook_ignored`` is sent for
    each once the chunk is written.
    """
    if not queryset.query.is_sliced:
        queryset = queryset.order_by()
    changed = seen = 0
    for pks in _pks(queryset, chunk_size):
        seen += len(pks)
        now = timezone.now()
        changes: dict[str, Any] = {"status": Status.IGNORED, "next_attempt_at": None,
                                   "processed_at": now}  # fmt: skip
        if reason:
            changes["last_error"] = f"Ignored: {reason}"[:LAST_ERROR_MAX_CHARS]
        with transaction.atomic():
            events = list(
                WebhookEvent.objects.select_for_update()
                .filter(pk__in=pks, status__in=IGNORABLE_STATUSES)
                .order_by("pk")
            )
            if events:
                WebhookEvent.objects.filter(pk__in=[e.pk for e in events]).update(**changes)
        for event in events:
            for field, value in changes.items():
                setattr(event, field, value)
            send_logged(webhook_ignored, WebhookEvent, event=event)
        changed += len(events)
    return changed, seen - changed


def _thresholds(older_than: float | None) -> tuple[float, float]:
    """The sweeper's thresholds in seconds, ``(received, processing)``: ``older_than`` for both,
    or ``REQUEUE_RECEIVED_AFTER`` and ``STUCK_AFTER``."""
    if older_than is None:
        return (float(processing_setting("REQUEUE_RECEIVED_AFTER")),
                float(processing_setting("STUCK_AFTER")))  # fmt: skip
    if older_than < 0:
        raise ValueError("older_than must be zero or more seconds")
    return older_than, older_than


def _stuck_waits(older_than: float | None, now: datetime) -> list[tuple[Q, Greatest, timedelta]]:
    """Per unfinished status: which of its events are stuck, when each began waiting for its
    next attempt, and the status's threshold.

    A ``received`` event waits since it arrived or was replayed (``received_at``,
    ``next_attempt_at``), a ``processing`` one since its latest attempt began or its retry fell
    due (``last_attempt_at``, ``next_attempt_at``). The stuck conditions compare the columns
    themselves with a cut-off, so the ``(status, received_at)`` index finds the candidates
    without reading finished events.
    """
    received_after, processing_after = _thresholds(older_than)
    received_cutoff = now - timedelta(seconds=received_after)
    cutoff = now - timedelta(seconds=processing_after)
    received = Q(status=Status.RECEIVED, received_at__lt=received_cutoff) & (
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lt=received_cutoff)
    )
    processing = (
        Q(status=Status.PROCESSING)
        & (Q(last_attempt_at__lt=cutoff) | Q(last_attempt_at__isnull=True, received_at__lt=cutoff))
        & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lt=cutoff))
    )
    attempted = Coalesce(F("last_attempt_at"), F("received_at"))
    return [
        (received, Greatest(F("received_at"), Coalesce(F("next_attempt_at"), F("received_at"))),
         timedelta(seconds=received_after)),
        (processing, Greatest(attempted, Coalesce(F("next_attempt_at"), attempted)),
         timedelta(seconds=processing_after)),
    ]  # fmt: skip


def _requeue_wait(since: Greatest, threshold: timedelta, now: datetime) -> tuple[Q, Q]:
    """``(over, running)``: whether the wait after a stuck event's last requeue is over.

    That wait is as long as the event had already waited, since ``since``, when it was requeued
    (so the waits double: 1, 2, 4... times the threshold), at least ``threshold`` and at most
    ``REQUEUE_MAX_INTERVAL`` (the threshold wins if it is longer): over an outage of T, an event
    gets about log2(REQUEUE_MAX_INTERVAL / threshold) + T / REQUEUE_MAX_INTERVAL messages, not
    one per sweep. A requeue from before the event began waiting (an attempt or a replay came
    after it) does not count. ``over`` and ``running`` are each other's complement, written out
    so that neither is a negation over nullable columns.
    """
    cap = timedelta(seconds=float(processing_setting("REQUEUE_MAX_INTERVAL")))
    # requeued_at <= now - (requeued_at - since): it has waited since as long as it had before.
    waited_as_long = Value(now, output_field=DateTimeField()) - (F("requeued_at") - since)
    over = (
        Q(requeued_at__isnull=True)
        | Q(requeued_at__lt=since)
        | (
            Q(requeued_at__lt=now - threshold)
            & (Q(requeued_at__lte=now - cap) | Q(requeued_at__lte=waited_as_long))
        )
    )
    running = Q(requeued_at__gte=since) & (
        Q(requeued_at__gte=now - threshold)
        | (Q(requeued_at__gt=now - cap) & Q(requeued_at__gt=waited_as_long))
    )
    return over, running


def stuck_events(older_than: float | None = None) -> QuerySet[WebhookEvent]:
    """Events stuck: the sweeper's candidates, also what health and metrics count.

    ``received`` ones received more than ``older_than`` seconds ago (default
    ``REQUEUE_RECEIVED_AFTER``, 60 s: their wake-up call was lost, see ``webhooks.dispatch``),
    and ``processing`` ones whose latest attempt began more than ``older_than`` ago (default
    ``STUCK_AFTER``, 600 s); in both cases only if their next scheduled attempt
    (``next_attempt_at``, set by a retry or a replay) is also that far in the past, so a retry
    that is merely waiting for its countdown is left to its own task. The sweeper requeues those
    of them whose earlier requeue's wait is over (``requeueable_events``).
    """
    stuck = _stuck_waits(older_than, timezone.now())
    return WebhookEvent.objects.filter(functools.reduce(operator.or_, (q for q, _, _ in stuck)))


def requeueable_events(
    older_than: float | None = None, *, now: datetime | None = None
) -> QuerySet[WebhookEvent]:
    """The stuck events the sweeper requeues now: never requeued while they wait, or the wait
    after their last requeue is over (see ``_requeue_wait``)."""
    return _stuck_by_requeue_wait(older_than, now or timezone.now(), over=True)


def recently_requeued_events(older_than: float | None = None) -> QuerySet[WebhookEvent]:
    """The stuck events the sweeper leaves alone for now: requeued while they wait, and that
    message may still be queued (the wait after it is not over). ``stuck_events`` is these and
    ``requeueable_events``."""
    return _stuck_by_requeue_wait(older_than, timezone.now(), over=False)


def _stuck_by_requeue_wait(
    older_than: float | None, now: datetime, *, over: bool
) -> QuerySet[WebhookEvent]:
    conditions = [
        stuck & _requeue_wait(since, threshold, now)[0 if over else 1]
        for stuck, since, threshold in _stuck_waits(older_than, now)
    ]
    return WebhookEvent.objects.filter(functools.reduce(operator.or_, conditions))


def requeue_stuck(
    *,
    older_than: float | None = None,
    dry_run: bool = False,
    include_requeued: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> int:
    """Enqueue the stuck events again: the sweeper. Returns the count (would be, with
    ``dry_run``).

    Only ``requeueable_events``: an event requeued before is left alone until the wait after
    that requeue is over, since its message may still be queued (workers down: every sweep would
    add one more copy). ``include_requeued`` requeues every stuck event (``stuck_events``), for
    an operator who knows the broker lost its messages.

    Per chunk, the events are locked (skipping any an attempt holds), checked again, and their
    ``requeued_at`` set to the sweep's time, in one transaction; once it commits they are
    published (so a worker that takes the message at once finds the row free). An event whose
    publish the broker refused gets its previous ``requeued_at`` back, so it is requeued by the
    next sweep, and ``BrokerUnavailable`` is raised at that first refusal (the rest would fail
    too); the events published before it stay published. Call it outside a transaction, as the
    task and the command do.
    """
    now = timezone.now()
    if include_requeued:
        selected = stuck_events(older_than)
    else:
        selected = requeueable_events(older_than, now=now)
    count = 0
    for pks in _pks(selected.order_by(), chunk_size):
        if dry_run:
            count += len(pks)
            continue
        with transaction.atomic():
            previous = dict(
                selected.filter(pk__in=pks)
                .select_for_update(skip_locked=True)
                .order_by()
                .values_list("pk", "requeued_at")
            )
            WebhookEvent.objects.filter(pk__in=list(previous)).update(requeued_at=now)
        chosen = list(previous)
        for index, pk in enumerate(chosen):
            if not publish_process_task(pk):
                _forget_requeue(chosen[index:], previous, now)
                raise BrokerUnavailable(
                    f"the broker refused a publish after {count} event(s) were requeued"
                )
            count += 1
    if count:
        logger.info("webhooks: requeued %s stuck event(s)%s", count, " (dry run)" * dry_run)
    return count


def _forget_requeue(
    pks: Sequence[int], previous: dict[int, datetime | None], requeued_at: datetime
) -> None:
    """Give events whose publish failed their previous ``requeued_at`` back (unless it changed
    meanwhile), so that nothing records a requeue that sent no message."""
    by_value: dict[datetime | None, list[int]] = {}
    for pk in pks:
        by_value.setdefault(previous[pk], []).append(pk)
    for value, group in by_value.items():
        WebhookEvent.objects.filter(pk__in=group, requeued_at=requeued_at).update(requeued_at=value)


def prunable_events(
    older_than_days: float | None = None, *, include_failed: bool = False
) -> QuerySet[WebhookEvent]:
    """Finished events received more than ``older_than_days`` ago (default ``RETENTION_DAYS``):
    ``processed`` and ``ignored``, and ``failed`` only with ``include_failed``."""
    if older_than_days is None:
        older_than_days = float(processing_setting("RETENTION_DAYS"))
    if older_than_days < 0:
        raise ValueError("older_than_days must be zero or more")
    statuses = [Status.PROCESSED, Status.IGNORED]
    if include_failed:
        statuses.append(Status.FAILED)
    cutoff = timezone.now() - timedelta(days=older_than_days)
    return WebhookEvent.objects.filter(status__in=statuses, received_at__lt=cutoff)


def prune_events(
    *,
    older_than_days: float | None = None,
    include_failed: bool = False,
    dry_run: bool = False,
    batch_size: int = CHUNK_SIZE,
) -> int:
    """Delete finished events older than the retention, in batches. Returns the count.

    A pruned event id can no longer be recognised as a duplicate, so the default retention
    (``RETENTION_DAYS``, 30) outlasts every sender's retry period (Stripe: 3 days).
    """
    queryset = prunable_events(older_than_days, include_failed=include_failed)
    if dry_run:
        return queryset.count()
    deleted = 0
    while True:
        pks = list(queryset.order_by().values_list("pk", flat=True)[:batch_size])
        if not pks:
            break
        deleted += queryset.filter(pk__in=pks).delete()[0]
    if deleted:
        logger.info("webhooks: pruned %s event(s)", deleted)
    return deleted
