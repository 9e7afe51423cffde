"""Operator actions on stored webhook events: replay, mark ignored, sweep, prune.

What the admin's actions, the management commands, the operator API and the sweeper's tasks
(Celery's and Django's) call; they are thin shells over these functions. One processing attempt
lives in ``webhooks.processing`` (``process_event``, also importable from here as it always
was), the publishing of tasks in ``webhooks.queueing``.
"""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import DateTimeField, F, Q, QuerySet, Value, Window
from django.db.models.functions import Coalesce, Greatest, RowNumber
from django.utils import timezone

from tether.audit import SYSTEM_USERNAME, log_actions, system_user

from .conf import processing_setting
from .exceptions import BrokerUnavailable
from .models import HandlerRun, ProcessingAttempt, WebhookEvent
from .processing import process_event
from .queueing import publish_process_task
from .registry import UnknownHandler, handler_names_for, registrations_named
from .selectors import type_pattern_q
from .signals import send_logged, webhook_ignored

__all__ = [
    "ATTEMPTS_KEPT_PER_EVENT",
    "CHUNK_SIZE",
    "REASON_MAX_CHARS",
    "SYSTEM_USERNAME",
    "UnknownHandler",
    "checked_handlers",
    "handled_by",
    "mark_ignored",
    "mark_ignored_many",
    "process_event",
    "prunable_events",
    "prune_events",
    "recently_requeued_events",
    "replay_event",
    "replay_events",
    "requeue_stuck",
    "requeueable_events",
    "stuck_events",
    "system_user",
]

logger = logging.getLogger(__name__)

Status = WebhookEvent.Status
RunStatus = HandlerRun.Status

#: Rows read (or deleted) per database round trip by the actions on many events.
CHUNK_SIZE = 500
#: The most ``ProcessingAttempt`` rows a replay leaves an event (its latest); processing adds at
#: most ``MAX_ATTEMPTS`` (and one lost attempt) between two replays.
ATTEMPTS_KEPT_PER_EVENT = 50
#: The longest reason an operator may give for an action, in characters.
REASON_MAX_CHARS = 1000
# SYSTEM_USERNAME and system_user (tether.audit) are importable from here, as they always were.


def _log_action(events: Sequence[WebhookEvent], *, actor: Any, action: str, via: str,
                reason: str) -> None:  # fmt: skip
    """The events' History entries (``tether.audit.log_actions``): ``"<action> via <via>:
    <reason>"`` by ``actor`` (the system user if None), in the caller's transaction."""
    message = f"{action} via {via}" + (f": {reason}" if reason else "")
    log_actions(events, user=actor, message=message)


def _bounded_reason(reason: str) -> str:
    reason = reason.strip()
    if len(reason) > REASON_MAX_CHARS:
        raise ValueError(f"the reason is longer than {REASON_MAX_CHARS} characters")
    return reason


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


def replay_event(
    event: WebhookEvent,
    *,
    sync: bool = False,
    actor: Any = None,
    via: str = "code",
    reason: str = "",
    handlers: Sequence[str] | None = None,
    all_handlers: bool = False,
) -> None:
    """Set one event back to ``received`` with ``attempts`` 0 and process it again: its failed
    runs, or the runs ``handlers`` / ``all_handlers`` choose (see ``replay_events``)."""
    replay_events(WebhookEvent.objects.filter(pk=event.pk), sync=sync, actor=actor, via=via,
                  reason=reason, handlers=handlers, all_handlers=all_handlers)  # fmt: skip
    event.refresh_from_db()


def checked_handlers(names: Iterable[str]) -> list[str]:
    """The dotted handler names, each checked against the registry (``UnknownHandler`` with a
    message fit for an operator: malformed, too long, or not registered), without duplicates."""
    checked: list[str] = []
    for name in names:
        registrations_named(name)
        if name.strip() not in checked:
            checked.append(name.strip())
    return checked


def handled_by(queryset: QuerySet[WebhookEvent], names: Sequence[str]) -> QuerySet[WebhookEvent]:
    """The queryset's events that any of the named handlers handles (its ``@on`` endpoint and
    pattern match): what a replay of those handlers runs them over."""
    condition = Q(pk__in=[])
    for name in names:
        for registration in registrations_named(name):
            condition |= Q(endpoint=registration.endpoint) & type_pattern_q(registration.pattern)
    return queryset.filter(condition)


def _mark_runs_due(pks: list[int], handlers: Sequence[str] | None, all_handlers: bool) -> None:
    """Make the chosen runs of these events ``pending`` (``attempts`` 0; the last error kept until
    the next outcome): their failed (or retrying) runs by default; with ``all_handlers`` a run of
    every handler matching each event; with ``handlers`` a run of each named handler that
    matches it (a backfill gives an event a run it never had)."""
    if handlers is None and not all_handlers:
        HandlerRun.objects.filter(
            event_id__in=pks, status__in=(RunStatus.FAILED, RunStatus.PROCESSING)
        ).update(status=RunStatus.PENDING, attempts=0, next_attempt_at=None)
        return
    wanted = None if handlers is None else set(handlers)
    runs = [
        HandlerRun(event_id=pk, handler=name, status=RunStatus.PENDING, attempts=0)
        for pk, endpoint, event_type in WebhookEvent.objects.filter(pk__in=pks)
        .order_by()
        .values_list("pk", "endpoint", "event_type")
        for name in handler_names_for(endpoint, event_type)
        if wanted is None or name in wanted
    ]
    HandlerRun.objects.bulk_create(
        runs,
        update_conflicts=True,
        unique_fields=["event", "handler"],
        update_fields=["status", "attempts", "next_attempt_at"],
    )


def replay_events(
    queryset: QuerySet[WebhookEvent] | Iterable[WebhookEvent],
    *,
    sync: bool = False,
    dry_run: bool = False,
    chunk_size: int = CHUNK_SIZE,
    on_result: Callable[[int, str | None], None] | None = None,
    actor: Any = None,
    via: str = "code",
    reason: str = "",
    handlers: Sequence[str] | None = None,
    all_handlers: bool = False,
) -> int:
    """Replay the events: back to ``received``, ``attempts`` 0, then enqueue (or, with ``sync``,
    process each in this process). Returns how many were replayed (would be, with ``dry_run``).

    Which handlers run (``HandlerRun``): by default each event's failed runs only (an event with
    runs but none failed ends as its runs say, running nothing; an event without runs, stored
    before they existed, runs every matching handler as it always did). ``all_handlers`` runs
    every handler matching each event again. ``handlers`` (dotted names, checked against the
    registry: ``UnknownHandler``) narrows the events to those the named handlers handle and runs
    just those handlers, including a handler registered after the events were processed (a
    backfill). ``handlers`` and ``all_handlers`` exclude each other (``ValueError``).

    Rows are streamed in chunks, so memory does not grow with the count. Any status may be
    replayed: this is an operator's explicit request (the default filter of the command is
    ``failed``). A replay never waits on the event's age: timestamps are checked at receipt only.
    With ``sync``, ``on_result(pk, status)`` is called after each event's attempt; an attempt
    that schedules a retry publishes it deferred (Celery's countdown, or a Django Task's
    ``run_after``).

    Each replayed event gets a ``LogEntry`` (``"Replayed via <via>: <reason>"`` by ``actor``,
    the system user if None) in its chunk's transaction. ``reason`` is at most
    ``REASON_MAX_CHARS`` (``ValueError``).
    """
    reason = _bounded_reason(reason)
    if handlers is not None and all_handlers:
        raise ValueError("choose the handlers or all handlers, not both")
    if handlers is not None:
        handlers = checked_handlers(handlers)
        if not handlers:
            raise ValueError("name at least one handler")
    if not isinstance(queryset, QuerySet):
        queryset = WebhookEvent.objects.filter(pk__in=[e.pk for e in queryset])
    if handlers is not None:
        if queryset.query.is_sliced:
            queryset = WebhookEvent.objects.filter(pk__in=queryset.values_list("pk", flat=True))
        queryset = handled_by(queryset, handlers)
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
            _forget_old_attempts(pks)
            _mark_runs_due(pks, handlers, all_handlers)
            replayed = WebhookEvent.objects.filter(pk__in=pks).only("id", "endpoint", "event_id",
                                                                   "status")  # fmt: skip
            _log_action(list(replayed), actor=actor, action="Replayed", via=via, reason=reason)
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


def _forget_old_attempts(pks: list[int]) -> None:
    """Delete the attempts of these events but the latest ``ATTEMPTS_KEPT_PER_EVENT`` of each."""
    ranked = ProcessingAttempt.objects.filter(event_id__in=pks).annotate(
        rank=Window(
            RowNumber(),
            partition_by=[F("event_id")],
            order_by=[F("started_at").desc(), F("id").desc()],
        )
    )
    old = list(ranked.filter(rank__gt=ATTEMPTS_KEPT_PER_EVENT).values_list("pk", flat=True))
    if old:
        ProcessingAttempt.objects.filter(pk__in=old).delete()


#: The statuses an operator may end ``ignored``: unfinished or failed.
IGNORABLE_STATUSES = (Status.RECEIVED, Status.PROCESSING, Status.FAILED)


def mark_ignored(
    event: WebhookEvent, *, reason: str = "", actor: Any = None, via: str = "code"
) -> bool:
    """End an unfinished or failed event ``ignored``. False if it was processed or ignored.

    If an attempt is running, this waits for it and then applies only if the event did not end
    ``processed`` meanwhile.
    """
    changed, _ = mark_ignored_many(WebhookEvent.objects.filter(pk=event.pk), reason=reason,
                                   actor=actor, via=via)  # fmt: skip
    event.refresh_from_db()
    return bool(changed)


def count_ignorable(queryset: QuerySet[WebhookEvent]) -> int:
    """How many of the queryset's events ``mark_ignored_many`` would change (a dry run)."""
    return WebhookEvent.objects.filter(
        pk__in=queryset.values("pk"), status__in=IGNORABLE_STATUSES
    ).count()


def mark_ignored_many(
    queryset: QuerySet[WebhookEvent],
    *,
    reason: str = "",
    chunk_size: int = CHUNK_SIZE,
    actor: Any = None,
    via: str = "code",
) -> tuple[int, int]:
    """End the queryset's unfinished or failed events ``ignored``: ``(changed, skipped)``,
    skipped being those already processed or ignored.

    Rows are streamed in chunks; each chunk's eligible rows are locked (waiting for an attempt
    in progress, then re-checked), updated in one statement, and ``webhook_ignored`` is sent for
    each once the chunk is written. ``last_error`` is kept (the error that led an operator to
    give up is what the page should still show); the reason goes in each event's ``LogEntry``
    (``"Marked ignored via <via>: <reason>"`` by ``actor``, the system user if None), written
    in the chunk's transaction. ``reason`` is at most ``REASON_MAX_CHARS`` (``ValueError``).
    """
    reason = _bounded_reason(reason)
    if not queryset.query.is_sliced:
        queryset = queryset.order_by()
    changed = seen = 0
    for pks in _pks(queryset, chunk_size):
        seen += len(pks)
        # processed_at stays NULL: the event was not processed (the History says when).
        changes: dict[str, Any] = {"status": Status.IGNORED, "next_attempt_at": None,
                                   "processed_at": None}  # fmt: skip
        with transaction.atomic():
            events = list(
                WebhookEvent.objects.select_for_update()
                .filter(pk__in=pks, status__in=IGNORABLE_STATUSES)
                .order_by("pk")
                .defer("body", "payload", "headers")
            )
            if events:
                WebhookEvent.objects.filter(pk__in=[e.pk for e in events]).update(**changes)
                for event in events:
                    for field, value in changes.items():
                        setattr(event, field, value)
                _log_action(events, actor=actor, action="Marked ignored", via=via, reason=reason)
        for event in events:
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
                    f"the broker (or task backend) refused a publish after {count} event(s) "
                    "were requeued"
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
        # Their attempts go with them (CASCADE); only the events are counted.
        deleted += queryset.filter(pk__in=pks).delete()[1].get(WebhookEvent._meta.label, 0)
    if deleted:
        logger.info("webhooks: pruned %s event(s)", deleted)
    return deleted
