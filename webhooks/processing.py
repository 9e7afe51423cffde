"""One processing attempt of a stored webhook event: claim it, run each due handler in its own
transaction with its run's outcome, record the event's outcome (and, for a failure, when the
retry is due).

``process_event`` runs in two steps, through ``webhooks.storage``:

1. **Claim** (its own transaction, committed at once; ``storage.claim``): lock the row, skipping
   it if locked; leave it alone unless it is due (``received`` or ``processing``, and
   ``next_attempt_at`` empty or reached); count the attempt (``attempts + 1``,
   ``last_attempt_at = now``, status ``processing``). Because the count is committed before any
   handler runs, an attempt whose worker dies mid-handler is still counted: when a claim finds
   every attempt already used (the last one never finished), the event ends ``failed`` without
   running its handlers again (``_end_lost``, one transaction with the lost attempt's row), so a
   poison event that kills its worker cannot loop forever.
2. **Run**, one transaction per due handler (``run_handler``; which handlers are due:
   ``_due_runs``, from the event's ``HandlerRun`` rows): lock the row again, with
   ``skip_locked``, and check that the claim is still ours (``storage.lock_claimed``: same
   ``attempts`` and ``last_attempt_at``; a newer claim means another worker took over and runs
   what is left). An ordered handler's decision comes next, in the same transaction
   (``webhooks.ordering.decide``: it locks the handler's key row until the transaction ends; a
   stale event's run ends ``skipped``, the handler not called, the reason in its ``last_error``).
   Then run the handler and write its run's outcome in the same transaction: the
   handler's writes and its run commit together. The attempt's last handler's transaction also
   writes the event's outcome, derived from all its runs (``event_status``). When a handler
   raises, its transaction is rolled back (its writes with it) and its run's outcome
   (``ignored``, retry or ``failed``) is written by a short one, if the claim still holds. The
   row stays locked while a handler runs, so concurrent deliveries skip it.

A retry is scheduled by ``webhooks.queueing.schedule_retry``; the Celery tasks
(``webhooks.tasks``), the Django Tasks (``webhooks.djtasks``, ``TASK_BACKEND = "django"``) and
a synchronous replay (``webhooks.services``) call ``process_event``: the one processing entry
point, whatever carries the task.
"""

from __future__ import annotations

import logging
import random
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from celery import Task
from django.db import transaction
from django.utils import timezone

from . import ordering, storage
from .conf import processing_setting
from .exceptions import Ignore, PermanentFailure
from .models import HandlerRun, ProcessingAttempt, WebhookEvent
from .queueing import schedule_retry
from .registry import Registration, named_registrations, registrations_for
from .signals import (
    send_logged,
    webhook_failed,
    webhook_ignored,
    webhook_processed,
    webhook_run_finished,
)

logger = logging.getLogger(__name__)

Status = WebhookEvent.Status
RunStatus = HandlerRun.Status

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
    (the Celery and Django tasks, a synchronous replay) that retry is also scheduled, by
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


def _claim(event_pk: int) -> tuple[storage.Claim, datetime] | str | None:
    """Step 1: count the attempt and commit. Returns the claim (its ``attempts`` and the start
    are its token), a final status, or None."""
    now = timezone.now()
    max_attempts = processing_setting("MAX_ATTEMPTS")
    claimed = storage.claim(event_pk, max_attempts=max_attempts, now=now)
    if claimed is not None:
        return claimed, now
    return _end_lost(event_pk, max_attempts, now)


def _end_lost(event_pk: int, max_attempts: int, now: datetime) -> str | None:
    """When the claim counted nothing: if every attempt is used up (the last one's worker died
    mid-handler), end the event ``failed`` without running its handlers again, in one
    transaction with the lost attempt's row (its start: the event's ``last_attempt_at``) and the
    runs that were due in it. ``failed``, or None (missing, locked, finished or not due)."""
    with transaction.atomic():
        lost = storage.end_lost(
            event_pk, max_attempts=max_attempts, now=now, max_error_chars=LAST_ERROR_MAX_CHARS
        )
        if lost is None:
            return None
        ProcessingAttempt.objects.create(
            event_id=event_pk,
            number=lost.attempt,
            started_at=lost.started_at or now,
            finished_at=None,
            outcome=ProcessingAttempt.Outcome.LOST,
            error=lost.error,
        )
        # The runs that were due in that attempt (one of them was running) end with the event.
        HandlerRun.objects.filter(event_id=event_pk, status__in=_DUE).update(
            status=RunStatus.FAILED, last_error=lost.error, next_attempt_at=None
        )
        transaction.on_commit(partial(_send_failed, event_pk, RuntimeError(lost.error)))
    return Status.FAILED


@dataclass
class AttemptState:
    """One attempt of an event, across its handlers' transactions: the claim it holds, what the
    event's other runs ended as, and what this attempt's runs have ended as so far."""

    event_pk: int
    attempt: int
    started_at: datetime
    max_attempts: int
    #: The statuses of the event's runs this attempt does not run, by handler name.
    earlier: dict[str, str] = field(default_factory=dict)
    #: The statuses this attempt's runs ended in so far, by handler name.
    outcomes: dict[str, str] = field(default_factory=dict)
    #: When the failed runs of this attempt are retried (one time for all: the event's).
    retry_at: datetime | None = None
    #: The latest failure of a handler in this attempt, and its description.
    error: BaseException | None = None
    error_text: str | None = None
    #: The description of the latest ``Ignore`` of this attempt.
    ignored_text: str | None = None
    #: Runs to write ``pending`` in the first handler's transaction (whichever way it ends).
    unwritten: list[str] = field(default_factory=list)
    #: The event's outcome and ``next_attempt_at``, once written; and the last run written with it.
    final: tuple[str | None, datetime | None] = (None, None)
    final_run: storage.SavedRun | None = None

    def retry_time(self, now: datetime) -> datetime:
        if self.retry_at is None:
            self.retry_at = now + timedelta(seconds=retry_delay(self.attempt))
        return self.retry_at


def _attempt(event_pk: int) -> tuple[str | None, datetime | None]:
    """``process_event``'s attempt: its status and, when a retry is due, ``next_attempt_at``.

    Each handler due runs in its own transaction with its run's outcome (``run_handler``); the
    last one's transaction also writes the event's outcome, derived from all its runs
    (``event_status``)."""
    claimed = _claim(event_pk)
    if claimed is None or isinstance(claimed, str):
        return claimed, None
    claim, started_at = claimed
    state = AttemptState(event_pk, claim.attempts, started_at, processing_setting("MAX_ATTEMPTS"))
    due = _due_runs(event_pk, claim, state)
    if not due:
        with transaction.atomic():
            event = storage.lock_claimed(event_pk, state.attempt, started_at)
            if event is None or event.status != Status.PROCESSING:
                return None, None
            return _record_outcome(event, state)
    for index, (name, registration) in enumerate(due):
        if run_handler(state, name, registration, last=index == len(due) - 1) is None:
            return None, None  # another worker claimed the event after us: it runs the rest
    return state.final


def _due_runs(
    event_pk: int, claim: storage.Claim, state: AttemptState
) -> list[tuple[str, Registration]]:
    """The handlers this attempt runs, in registration order, filling ``state.earlier``.

    An event without runs (new, or stored before runs existed) runs every matching handler;
    with more than one, their runs are written ``pending`` first, so that a worker lost between
    two of them leaves the rest due. An event with runs runs only those ``pending`` or
    ``processing`` (a retry, a replay); a handler registered since gets a run by a replay
    (``--handler``, ``--all-handlers``). A due run whose handler no longer matches ends
    ``failed`` (nothing can run it)."""
    named = named_registrations(registrations_for(claim.endpoint, claim.event_type))
    if not claim.runs:
        if len(named) > 1:
            state.unwritten = [name for name, _ in named]  # written by the first transaction
        return named
    statuses = dict(HandlerRun.objects.filter(event_id=event_pk).values_list("handler", "status"))
    due = [(name, registration) for name, registration in named if statuses.get(name) in _DUE]
    chosen = {name for name, _ in due}
    orphans = [name for name, status in statuses.items() if status in _DUE and name not in chosen]
    if orphans:
        message = "HandlerNotRegistered: no registered handler of this event has this name"
        HandlerRun.objects.filter(event_id=event_pk, handler__in=orphans).update(
            status=RunStatus.FAILED, last_error=message, next_attempt_at=None
        )
        statuses.update(dict.fromkeys(orphans, RunStatus.FAILED))
        state.error_text = message
    state.earlier = {name: status for name, status in statuses.items() if name not in chosen}
    return due


def run_handler(
    state: AttemptState, name: str, registration: Registration, *, last: bool
) -> str | None:
    """Run one handler (``registration``'s, kept under ``name``) in its own transaction together
    with its run's outcome: the handler's writes and its run's row commit together, or neither
    does. The attempt's ``last`` handler's transaction also writes the event's outcome
    (``_record_outcome``).

    The event row is locked again first, and only if the claim still holds
    (``storage.lock_claimed``); it stays locked while the handler runs, so no other attempt of
    the event runs meanwhile. An ordered handler's decision is taken next, in the same
    transaction (``webhooks.ordering.decide``, which locks the key's row until it ends): a stale
    event (``stale="skip"``) is not passed to the handler, and its run ends ``skipped`` with the
    decision's reason as its ``last_error``; otherwise the handler runs with ``event.ordering``
    set to the decision (None again after). ``decide`` raising counts as the handler raising
    (``InvalidOrderingValue`` is a ``PermanentFailure``). A handler that raises rolls its
    transaction back (an ``apply`` decision's version with it); its run's outcome
    (``ignored`` for ``Ignore``, ``failed`` for ``PermanentFailure`` or the last attempt, else
    ``processing`` with a retry due) is written by a second, short one. Returns the run's status,
    or None when the claim was lost (a newer one owns the event and runs what is left)."""
    started = timezone.now()
    try:
        with transaction.atomic():
            event = storage.lock_claimed(state.event_pk, state.attempt, state.started_at)
            if event is None or event.status != Status.PROCESSING:
                return None
            _write_pending(state)
            try:
                decision = ordering.decide(registration, event, handler=name)
                skip = decision is not None and decision.action == ordering.SKIP
                if not skip:
                    event.ordering = decision
                    try:
                        registration.handler(event)
                    finally:
                        event.ordering = None
            except Exception as exc:
                raise _HandlerRaised(exc, name) from exc
            if skip:
                reason = decision.reason if decision is not None else ""
                status = _record_run(
                    state, event, name, RunStatus.SKIPPED, started, last=last, reason=reason
                )
            else:
                status = _record_run(state, event, name, RunStatus.PROCESSED, started, last=last)
        state.unwritten = []
        return status
    except _HandlerRaised as raised:
        error = raised.error
        with transaction.atomic():
            event = storage.lock_claimed(state.event_pk, state.attempt, state.started_at)
            if event is None or event.status != Status.PROCESSING:
                return None
            _write_pending(state)
            if isinstance(error, Ignore):
                status = RunStatus.IGNORED
            elif isinstance(error, PermanentFailure) or state.attempt >= state.max_attempts:
                status = RunStatus.FAILED
            else:
                status = RunStatus.PROCESSING
            status = _record_run(state, event, name, status, started, last=last, error=error)
        state.unwritten = []
        return status


def _write_pending(state: AttemptState) -> None:
    """The first transaction of an attempt of an event without runs and with several handlers
    writes all their runs ``pending`` (then each handler's outcome updates its own), so that a
    worker lost between two handlers leaves the rest due. In that transaction rather than one of
    its own: one commit less per event."""
    if state.unwritten:
        HandlerRun.objects.bulk_create(
            [HandlerRun(event_id=state.event_pk, handler=name) for name in state.unwritten],
            ignore_conflicts=True,
        )


class _HandlerRaised(Exception):
    """Carries a handler's exception, and the handler's dotted name, out of the transaction it
    rolls back."""

    def __init__(self, error: Exception, handler: str) -> None:
        super().__init__(type(error).__name__)
        self.error = error
        self.handler = handler


def _record_run(
    state: AttemptState,
    event: WebhookEvent,
    name: str,
    status: str,
    started: datetime,
    *,
    last: bool,
    error: Exception | None = None,
    reason: str = "",
) -> str:
    """Write a run's outcome (inside the handler's transaction; with the event's outcome when
    ``last``) and send ``webhook_run_finished`` on commit. ``reason``: why a ``skipped`` run was
    not called (its ``last_error``)."""
    now = timezone.now()
    text = bound_text(reason, LAST_ERROR_MAX_CHARS)
    if isinstance(error, Ignore):
        # A handler's decision, not a failure: its message without a traceback.
        text = describe_error(error, with_traceback=False) if str(error) else ""
        state.ignored_text = text
    elif error is not None:
        text = describe_error(error, handler=name)
        state.error, state.error_text = error, text
        # The bounded description in the message, not ``exc_info``: a log handler given the
        # exception (Sentry's, for one) may record the frames' local variables.
        logger.warning(
            "webhooks: handler %s failed for %s:%s (attempt %s of %s): %s",
            name, event.endpoint, event.event_id, state.attempt, state.max_attempts, text,
        )  # fmt: skip
    next_at = state.retry_time(now) if status == RunStatus.PROCESSING else None
    run = storage.RunOutcome(event.pk, name, status, text, next_at, started, now)
    state.outcomes[name] = status
    if last:
        state.final = _record_outcome(event, state, run=run)
        saved = state.final_run
    else:
        saved = storage.save_run(run)
    if saved is not None and webhook_run_finished.has_listeners(HandlerRun):
        instance = HandlerRun(
            pk=saved.pk, event=event, handler=name, status=status, attempts=saved.attempts,
            last_error=text, next_attempt_at=next_at, started_at=started, finished_at=now,
        )  # fmt: skip
        transaction.on_commit(partial(send_logged, webhook_run_finished, HandlerRun,
                                      run=instance, event=event, error=error))  # fmt: skip
    return status


#: The run statuses an attempt runs.
_DUE = frozenset({HandlerRun.Status.PENDING, HandlerRun.Status.PROCESSING})


def event_status(run_statuses: Iterable[str]) -> str:
    """The event's status from its runs' statuses: ``ignored`` when it has none (no handler
    matched) or every run ended ``ignored``; ``processing`` (a retry due) while a run is due;
    then ``failed`` when a run failed for good; else ``processed`` (every run ended
    ``processed``, ``ignored`` or ``skipped``)."""
    statuses = set(run_statuses)
    if not statuses or statuses == {RunStatus.IGNORED}:
        return Status.IGNORED
    if statuses & _DUE:
        return Status.PROCESSING
    if RunStatus.FAILED in statuses:
        return Status.FAILED
    return Status.PROCESSED


def _record_outcome(
    event: WebhookEvent, state: AttemptState, *, run: storage.RunOutcome | None = None
) -> tuple[str, datetime | None]:
    """Write the attempt's outcome, derived from the event's runs (inside the caller's
    transaction, with ``run``'s outcome when given) and send the event's signal on commit.
    Returns the outcome and ``next_attempt_at``: ``processing`` means a retry is due then."""
    now = timezone.now()
    outcome = event_status([*state.earlier.values(), *state.outcomes.values()])
    event.status = outcome
    event.next_attempt_at = None
    if outcome == Status.PROCESSED:
        event.processed_at = now  # an ignored event was not processed: its end is its attempt's
    elif outcome == Status.IGNORED:
        event.last_error = state.ignored_text or ""
    elif state.error_text is not None:
        event.last_error = state.error_text
    if outcome == Status.PROCESSING:
        event.next_attempt_at = state.retry_time(now)
    # The attempt's row (and the run's), in the same statement (PostgreSQL) and transaction:
    # they exist exactly when this outcome commits. ``last_attempt_at`` is the claim's start.
    state.final_run = storage.save_outcome(
        event.pk,
        status=event.status,
        next_attempt_at=event.next_attempt_at,
        processed_at=event.processed_at,
        last_error=event.last_error,
        attempt=state.attempt,
        started_at=event.last_attempt_at or now,
        finished_at=now,
        outcome=_ATTEMPT_OUTCOMES[outcome],
        error=event.last_error if outcome != Status.PROCESSED else "",
        run=run,
    )
    if outcome == Status.PROCESSED:
        transaction.on_commit(partial(send_logged, webhook_processed, WebhookEvent, event=event))
    elif outcome == Status.IGNORED:
        transaction.on_commit(partial(send_logged, webhook_ignored, WebhookEvent, event=event))
    elif outcome == Status.FAILED:
        error = state.error or RuntimeError(event.last_error.split("\n", 1)[0])
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
