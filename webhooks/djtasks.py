"""Django Tasks of the webhooks app (``WEBHOOKS["TASK_BACKEND"] = "django"``): thin shells over
``webhooks.processing`` and ``webhooks.services``, as ``webhooks.tasks`` is for Celery.

They go through whatever backend the project's ``TASKS`` setting names (``django-tasks-db``'s
``DatabaseBackend`` and its ``db_worker`` command, for instance), taken from Django 6's
``django.tasks`` or the ``django-tasks`` backport on Django 5.2 (``tether.tasks_api``). Each
carries only the event's primary key. ``webhooks.queueing`` enqueues them by their import path
(``DJANGO_PROCESS_EVENT``), the way a worker finds them, so nothing but a worker imports this
module.

Django's Tasks have no retries: a failed attempt's retry is a new ``process_event`` task whose
``run_after`` is the ``next_attempt_at`` the attempt wrote (``queueing.schedule_retry``), and
the database row stays the source of truth. A worker that dies mid-task leaves its task result
``RUNNING`` for good and the event ``processing``: the sweeper (``requeue_stuck``, as this task
or the ``requeue_stuck_webhooks`` command) enqueues it again after ``STUCK_AFTER``, and the
attempt already counted is kept (``webhooks.processing``).
"""

from __future__ import annotations

import logging

from django.db import close_old_connections, connection

from tether.tasks_api import task

from . import processing, services

logger = logging.getLogger(__name__)


@task()
def process_event(event_pk: int) -> str | None:
    """One processing attempt of one event (``webhooks.processing.process_event``), its retry
    enqueued with ``run_after``. An error outside the handlers (the database gone) is logged
    (its type and first line only, never a statement's parameters) and leaves the event's state
    to the sweeper; the task then ends with no status."""
    try:
        return processing.process_event(event_pk, retry=True)
    except Exception as exc:
        logger.error(
            "webhooks: processing event pk=%s failed outside its handlers (%s); the sweeper "
            "will enqueue it again",
            event_pk,
            processing.describe_outside_error(exc),
        )
        if not connection.in_atomic_block:  # run by a worker, not inside a caller's transaction
            close_old_connections()  # drop a broken connection before the worker's next task
        return None


@task()
def requeue_stuck(older_than: float | None = None) -> int:
    """The sweeper (``webhooks.services.requeue_stuck``), for a project whose scheduler enqueues
    Django Tasks; ``manage.py requeue_stuck_webhooks`` does the same from cron."""
    return services.requeue_stuck(older_than=older_than)
