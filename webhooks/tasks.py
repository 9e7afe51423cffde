"""Celery tasks of the webhooks app: thin shells over ``webhooks.processing`` and
``webhooks.services`` (``webhooks.djtasks`` holds their Django Tasks counterparts, for
``WEBHOOKS["TASK_BACKEND"] = "django"``).

They are published by name (``webhooks.queueing``), so nothing else imports this module but
``WebhooksConfig.ready()``, which registers them. ``webhooks.process_event`` is ``acks_late``
with ``reject_on_worker_lost``: a message is acknowledged only after its attempt finished, and
a worker process that dies mid-handler puts it back on the queue. Retries use Celery's
countdown, scheduled in one place (``queueing.schedule_retry``: the task's own ``retry()``
here, a new ``webhooks.process_event`` message for an event of a batch or a synchronous
replay); how many attempts an event has had is counted in the database
(``WebhookEvent.attempts``), not by Celery, so replays and sweeps start and continue the same
count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Task, shared_task
from django.db import close_old_connections

from . import processing, reconciling, services
from .exceptions import UnknownEndpoint, WebhookError
from .queueing import PROCESS_EVENT, PROCESS_EVENTS

logger = logging.getLogger(__name__)


@contextmanager
def database_connection(task: Task[Any, Any]) -> Iterator[None]:
    """Treat the task like a request: drop an obsolete or broken database connection before and
    after it, honouring ``CONN_MAX_AGE`` and ``CONN_HEALTH_CHECKS``. This matters for workers that
    keep their connection between tasks (``CELERY_DB_REUSE_MAX``, see the README); an eager task
    runs inside its caller's transaction and is left alone."""
    eager = bool(getattr(task.request, "is_eager", False))
    if not eager:
        close_old_connections()
    try:
        yield
    finally:
        if not eager:
            close_old_connections()


@shared_task(
    bind=True,
    name=PROCESS_EVENT,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
    ignore_result=True,
)
def process_event(self: Task[Any, Any], event_pk: int) -> str | None:
    with database_connection(self):
        return processing.process_event(event_pk, retry=True, task=self)


@shared_task(
    bind=True,
    name=PROCESS_EVENTS,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def process_events(self: Task[Any, Any], event_pks: list[int]) -> list[str | None]:
    """Several events in one message (what the dispatcher publishes): each gets exactly what
    ``webhooks.process_event`` gives one event, one after the other: its own claim (its attempt
    counted and committed before its handlers run), its own transaction, and its own retry,
    published as a ``webhooks.process_event`` message with the backoff's countdown.

    Redelivered after a worker died mid-batch (``reject_on_worker_lost``), the events already
    finished are skipped and the one that was running has its attempt counted, as for a single
    event. An error outside the handlers (the database gone) stops only that event: it keeps
    its state for the sweeper, and the next events are attempted.
    """
    statuses: list[str | None] = []
    with database_connection(self):
        for event_pk in event_pks:
            try:
                status = processing.process_event(event_pk, retry=True)
            except Exception as exc:
                logger.error(
                    "webhooks: processing event pk=%s failed outside its handlers (%s); the "
                    "sweeper will enqueue it again",
                    event_pk,
                    processing.describe_outside_error(exc),
                )
                status = None
                if not getattr(self.request, "is_eager", False):
                    close_old_connections()  # drop a broken connection before the next event
            statuses.append(status)
    return statuses


@shared_task(bind=True, name="webhooks.requeue_stuck", ignore_result=True)
def requeue_stuck(self: Task[Any, Any], older_than: float | None = None) -> int:
    with database_connection(self):
        return services.requeue_stuck(older_than=older_than)


@shared_task(bind=True, name="webhooks.reconcile", ignore_result=True)
def reconcile(self: Task[Any, Any], endpoint: str) -> dict[str, Any]:
    """``reconcile_webhooks ENDPOINT`` for Celery beat: as far back as the vendor keeps
    undelivered events (running it daily re-lists what an earlier run stored: those are
    duplicates, never stored twice). Returns the report's ``as_dict()``; a run that cannot
    start (``ReconcileUnavailable``, an unknown endpoint) or stops part way is logged as an
    error."""
    with database_connection(self):
        try:
            report = reconciling.reconcile(endpoint)
        except UnknownEndpoint:
            logger.error("webhooks: reconcile %r cannot run: no such endpoint", endpoint)
            return {"endpoint": endpoint, "error": "unknown endpoint"}
        except WebhookError as exc:
            logger.error("webhooks: reconcile %r cannot run: %s", endpoint, exc)
            return {"endpoint": endpoint, "error": str(exc)}
    if not report.complete:
        logger.error(
            "webhooks: reconcile %r did not complete: %s",
            endpoint,
            report.error or f"{report.refused} event(s) refused",
        )
    return report.as_dict()
