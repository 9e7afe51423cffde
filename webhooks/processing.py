"""One processing attempt of a stored webhook event: claim it, run its handlers, record the
outcome (and, for a failure, when the retry is due).

``process_event`` runs in two short steps, through ``webhooks.storage``:

1. **Claim** (its own transaction, committed at once; ``storage.claim``): lock the row, skipping
   it if locked; leave it alone unless it is due (``received`` or ``processing``, and
   ``next_attempt_at`` empty or reached); count the attempt (``attempts + 1``,
   ``last_attempt_at = now``, status ``processing``). Because the count is committed before any
   handler runs, an attempt whose worker dies mid-handler is still counted: when a claim finds
   every attempt already used (the last one never finished), the event ends ``failed`` without
   running its handlers again, so a poison event that kills its worker cannot loop forever.
2. **Run** (a second transaction): lock the row again, with ``skip_locked``, and check that the
   claim is still ours (``storage.lock_claimed``: same ``attempts`` and ``last_attempt_at``; a
   newer claim means another worker took over). Then run the handlers and write the outcome in
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
import traceback
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from celery import Task
from django.db import transaction
from django.utils import timezone

from . import ordering, storage
from .conf import processing_setting
from .exceptions import Ignore, PermanentFailure
from .models import ProcessingAttempt, WebhookEvent
from .queueing import schedule_retry
from .registry import handler_name, registrations_for
from .signals import send_logged, webhook_failed, webhook_ignored, webhook_processed

logger = logging.getLogger(__name__)

Status = WebhookEvent.Status

#: The longest ``last_error`` kept (and logged), in characters: 8 KiB of ASCII. A longer
#: description keeps its head (the exception, the handler, the outer frames) and its tail (the
#: innermost frames and the exception line), and says how much was cut between them.
LAST_ERROR_MAX_CHARS = 8192
#: The longest exception message on the first line of an error description, in characters.
ERROR_HEADLINE_MAX_CHARS = 500
#: The longest message logged for an error outside the handlers (first line only), in characters.
OUTSIDE_ERROR_MAX_CHARS = 200


def process_event(
    event_pk: int, *, retry: bool = False, task: Task[Any, Any] | None = None
) -> str | None:
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


def error_type_name(exc: BaseException) -> str:
    """The exception's class as ``module.Qualname`` (builtins without their module)."""
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return name[len("builtins.") :] if name.startswith("builtins.") else name


def describe_error(
    exc: BaseException, *, handler: str | None = None, with_traceback: bool = True
) -> str:
    """What ``last_error`` (and a handler's failure log line) keeps, at most
    ``LAST_ERROR_MAX_CHARS`` characters.

    First line: the exception's type and message (message cut at ``ERROR_HEADLINE_MAX_CHARS``);
    then ``Handler: <dotted name>`` when known; then, ``with_traceback``, the traceback as Python
    prints it: frames, line numbers and source lines, never the frames' local variables (they may
    hold secrets; handlers should not put secrets in their exception messages either). A longer
    text keeps its head and its tail (``bound_text``).
    """
    message = str(exc)
    headline = error_type_name(exc)
    if message:
        headline = f"{headline}: {message[:ERROR_HEADLINE_MAX_CHARS]}"
        if len(message) > ERROR_HEADLINE_MAX_CHARS:
            headline += "…"
    lines = [headline]
    if handler:
        lines.append(f"Handler: {handler}")
    text = "\n".join(lines)
    if with_traceback and exc.__traceback__ is not None:
        text += "\n" + "".join(traceback.format_exception(exc)).rstrip("\n")
    return bound_text(text, LAST_ERROR_MAX_CHARS)


def bound_text(text: str, max_chars: int) -> str:
    """``text`` if it fits in ``max_chars``; else its head (a quarter) and its tail, joined by a
    line saying how many characters were cut, ``max_chars`` in all."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 4
    marker = f"\n[… {len(text) - max_chars:,} characters cut …]\n"
    # The marker's own length is taken from the tail, so the result is exactly max_chars long
    # (the count it gives is then a few characters short of what was cut: close enough).
    tail = max_chars - head - len(marker)
    return text[:head] + marker + text[len(text) - tail :]


def describe_outside_error(exc: BaseException) -> str:
    """An error outside the handlers (the database, the broker), for a log line: the exception's
    class and the first line of its message, at most ``OUTSIDE_ERROR_MAX_CHARS`` characters.
    Only the first line: a database error's detail lines may echo a statement's parameters."""
    first = str(exc).strip().split("\n", 1)[0].strip()
    text = error_type_name(exc) + (f": {first}" if first else "")
    if len(text) > OUTSIDE_ERROR_MAX_CHARS:
        text = text[: OUTSIDE_ERROR_MAX_CHARS - 1] + "…"
    return text


def _claim(event_pk: int) -> tuple[int, datetime] | str | None:
    """Step 1: count the attempt and commit. Returns the claim token (the attempt's number and
    start), a final status, or None."""
    now = timezone.now()
    claimed = storage.claim(
        event_pk,
        max_attempts=processing_setting("MAX_ATTEMPTS"),
        now=now,
        max_error_chars=LAST_ERROR_MAX_CHARS,
    )
    if claimed is None:
        return None  # gone, locked by an attempt in progress, finished, or not due
    if claimed.status == Status.FAILED:
        lost = claimed.last_error.split(";", 1)[0]
        _record_lost_attempt(event_pk, claimed.attempts, lost, now)
        transaction.on_commit(partial(_send_failed, event_pk, RuntimeError(lost)))
        return Status.FAILED
    return claimed.attempts, now


def _record_lost_attempt(event_pk: int, number: int, error: str, now: datetime) -> None:
    """The row of the last attempt, whose worker died: written when a claim ends the event
    ``failed`` for it (rare, so through the ORM). Its start is the event's ``last_attempt_at``."""
    started = (
        WebhookEvent.objects.filter(pk=event_pk).values_list("last_attempt_at", flat=True).first()
    )
    ProcessingAttempt.objects.create(
        event_id=event_pk,
        number=number,
        started_at=started or now,
        finished_at=None,
        outcome=ProcessingAttempt.Outcome.LOST,
        error=error,
    )


def _attempt(event_pk: int) -> tuple[str | None, datetime | None]:
    """``process_event``'s attempt: its status and, when a retry is due, ``next_attempt_at``."""
    claim = _claim(event_pk)
    if claim is None or isinstance(claim, str):
        return claim, None
    attempt, started_at = claim
    max_attempts = processing_setting("MAX_ATTEMPTS")

    try:
        with transaction.atomic():
            event = storage.lock_claimed(event_pk, attempt, started_at)
            if event is None or event.status != Status.PROCESSING:
                return None, None  # another worker claimed it after us: it runs the handlers
            registrations = registrations_for(event.endpoint, event.event_type)
            index = 0
            skipped: list[str] = []
            try:
                for index, registration in enumerate(registrations):  # noqa: B007 (read after a raise)
                    # An ordered handler: lock its key's row, and skip a stale event.
                    decision = ordering.decide(registration, event)
                    if decision is not None and decision.action == ordering.SKIP:
                        skipped.append(f"Skipped {decision.handler}: {decision.reason}")
                        continue
                    event.ordering = decision
                    try:
                        registration.handler(event)
                    finally:
                        event.ordering = None
            except Exception as exc:
                raise _HandlerRaised(exc, handler_name(registrations[index].handler)) from exc
            if registrations:
                return _record_outcome(
                    event, Status.PROCESSED, attempt, max_attempts, note="\n".join(skipped)
                )
            event.last_error = ""
            return _record_outcome(event, Status.IGNORED, attempt, max_attempts)
    except _HandlerRaised as raised:
        # The handlers' writes were rolled back with the transaction; the outcome is recorded in
        # a new one, if the claim still holds (a delivery that claimed the event in between owns
        # it now). Cheaper than a savepoint around the handlers on the (common) success path.
        error, name = raised.error, raised.handler
        with transaction.atomic():
            event = storage.lock_claimed(event_pk, attempt, started_at)
            if event is None or event.status != Status.PROCESSING:
                return None, None
            if isinstance(error, Ignore):
                # A handler's decision, not a failure: its message without a traceback.
                event.last_error = describe_error(error, with_traceback=False) if str(error) else ""
                return _record_outcome(event, Status.IGNORED, attempt, max_attempts)
            outcome = (
                Status.FAILED
                if isinstance(error, PermanentFailure) or attempt >= max_attempts
                else Status.PROCESSING
            )
            return _record_outcome(event, outcome, attempt, max_attempts, error=error, handler=name)


class _HandlerRaised(Exception):
    """Carries a handler's exception, and the handler's dotted name, out of the transaction it
    rolls back."""

    def __init__(self, error: Exception, handler: str) -> None:
        super().__init__(type(error).__name__)
        self.error = error
        self.handler = handler


def _record_outcome(
    event: WebhookEvent,
    outcome: str,
    attempt: int,
    max_attempts: int,
    *,
    error: BaseException | None = None,
    handler: str | None = None,
    note: str = "",
) -> tuple[str, datetime | None]:
    """Write the attempt's outcome (inside the caller's transaction) and send its signal on
    commit. Returns the outcome and ``next_attempt_at``: ``processing`` means a retry is due
    then. ``note``: what a processed attempt's row keeps in ``error`` (the ordered handlers it
    skipped, and why)."""
    now = timezone.now()
    event.status = outcome
    event.next_attempt_at = None
    if outcome == Status.PROCESSED:
        event.processed_at = now  # an ignored event was not processed: its end is its attempt's
    if error is not None:
        event.last_error = describe_error(error, handler=handler)
        # The bounded description in the message, not ``exc_info``: a log handler given the
        # exception (Sentry's, for one) may record the frames' local variables.
        logger.warning(
            "webhooks: handler %s failed for %s:%s (attempt %s of %s): %s",
            handler or "?",
            event.endpoint,
            event.event_id,
            attempt,
            max_attempts,
            event.last_error,
        )
    if outcome == Status.PROCESSING:
        event.next_attempt_at = now + timedelta(seconds=retry_delay(attempt))
    # The attempt's row, in the same statement (PostgreSQL) and transaction: it exists exactly
    # when this outcome commits. ``last_attempt_at`` is the claim's start (lock_claimed checked).
    storage.save_outcome(
        event.pk,
        status=event.status,
        next_attempt_at=event.next_attempt_at,
        processed_at=event.processed_at,
        last_error=event.last_error,
        attempt=attempt,
        started_at=event.last_attempt_at or now,
        finished_at=now,
        outcome=_ATTEMPT_OUTCOMES[outcome],
        error=event.last_error
        if outcome != Status.PROCESSED
        else bound_text(note, LAST_ERROR_MAX_CHARS),
    )
    if outcome == Status.PROCESSED:
        transaction.on_commit(partial(send_logged, webhook_processed, WebhookEvent, event=event))
    elif outcome == Status.IGNORED:
        transaction.on_commit(partial(send_logged, webhook_ignored, WebhookEvent, event=event))
    elif outcome == Status.FAILED:
        transaction.on_commit(
            partial(send_logged, webhook_failed, WebhookEvent, event=event, error=error)
        )
    return outcome, event.next_attempt_at


#: The attempt's outcome for each status it leaves the event in.
_ATTEMPT_OUTCOMES: dict[str, str] = {
    Status.PROCESSED: ProcessingAttempt.Outcome.PROCESSED,
    Status.IGNORED: ProcessingAttempt.Outcome.IGNORED,
    Status.PROCESSING: ProcessingAttempt.Outcome.RETRY,
    Status.FAILED: ProcessingAttempt.Outcome.FAILED,
}


def _send_failed(event_pk: int, error: BaseException) -> None:
    event = WebhookEvent.objects.filter(pk=event_pk).first()
    if event is not None:
        send_logged(webhook_failed, WebhookEvent, event=event, error=error)
