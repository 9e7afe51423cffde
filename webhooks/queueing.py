"""Putting events on the queue: publishing the processing tasks, eager detection, the
transactional outbox's hand-off (``enqueue_on_commit``), the dispatcher's publisher, and retry
scheduling.

Two carriers, chosen by ``WEBHOOKS["TASK_BACKEND"]`` at each publish: ``"celery"`` (the
default) and ``"django"``, Django's Tasks through the project's ``TASKS`` backend
(``webhooks.djtasks``, enqueued by import path, ``DJANGO_PROCESS_EVENT``). Everything below
``publish_process_task`` and ``publish_process_batch`` (the dispatcher, retries, the sweeper,
replays) is the same for both, and so is the processing the tasks run.

Celery tasks are published by their fixed names (``webhooks.process_event``,
``webhooks.process_events``) from the current Celery app's registry, where
``WebhooksConfig.ready()`` has them registered (``webhooks.tasks``): this module imports nothing
of processing, and a project whose tests set ``task_always_eager`` still runs them eagerly. A
broker failure is never raised to the caller: the event is already stored, and the sweeper
(``webhooks.services.requeue_stuck``) enqueues it later. Log lines name the exception's type
only, never the broker URL or its credentials.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from celery import Task
from celery.app import app_or_default
from celery.exceptions import Retry
from django.db import router, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from .conf import processing_setting, task_backend, webhooks_settings
from .dispatch import dispatcher
from .models import WebhookEvent

logger = logging.getLogger(__name__)

#: The Celery task that makes one processing attempt of one event (``webhooks.tasks``).
PROCESS_EVENT = "webhooks.process_event"
#: The Celery task that makes one attempt of each of several events (what the dispatcher sends).
PROCESS_EVENTS = "webhooks.process_events"
#: The Django Task that makes one processing attempt of one event (``webhooks.djtasks``), by
#: its import path: what ``TASK_BACKEND = "django"`` enqueues, one per event.
DJANGO_PROCESS_EVENT = "webhooks.djtasks.process_event"


class DeferNotSupported(Exception):
    """The project's Django Tasks backend cannot run a task later (``supports_defer`` is False,
    e.g. the ``ImmediateBackend``): a retry is left to the sweeper."""


def _task(name: str) -> Task[Any, Any]:
    """The current Celery app's task of that name (registered by ``webhooks.tasks``)."""
    return app_or_default().tasks[name]


def _task_options() -> dict[str, Any]:
    """The publish options every processing task shares: the ``TASK_QUEUE``, if one is set."""
    queue = processing_setting("TASK_QUEUE")
    return {"queue": queue} if queue else {}


def publish_process_task(event_pk: int, *, countdown: float | None = None) -> bool:
    """Publish one event's processing task now (``webhooks.process_event``, or with
    ``TASK_BACKEND = "django"`` the Django Task ``DJANGO_PROCESS_EVENT``), to run after
    ``countdown`` seconds if given; ``False`` if the broker (or task backend) refused.

    Never raises for a broker failure and never hangs on it (the project's Celery settings give
    the connection a short timeout and no publish retries): the event is already stored, and the
    sweeper enqueues it later.
    """
    try:
        if task_backend() == "django":
            enqueue_django_task(event_pk, countdown=countdown)
        else:
            options = _task_options()
            if countdown:
                options["countdown"] = countdown
            _task(PROCESS_EVENT).apply_async(args=(event_pk,), **options)
    except Exception as exc:
        _warn_unsent([event_pk], exc)
        return False
    return True


def enqueue_django_task(event_pk: int, *, countdown: float | None = None) -> None:
    """Enqueue ``DJANGO_PROCESS_EVENT`` for one event through the default ``TASKS`` backend, on
    ``TASK_QUEUE`` if set, with ``run_after`` ``countdown`` seconds from now if given. Raises
    what the backend raises (``DeferNotSupported`` for a ``countdown`` it cannot honour)."""
    task = import_string(DJANGO_PROCESS_EVENT)
    changes: dict[str, Any] = {}
    queue = processing_setting("TASK_QUEUE")
    if queue:
        changes["queue_name"] = queue
    if countdown:
        if not task.get_backend().supports_defer:
            raise DeferNotSupported
        changes["run_after"] = timezone.now() + timedelta(seconds=countdown)
    if changes:
        task = task.using(**changes)
    task.enqueue(event_pk)


def _warn_unsent(event_pks: Sequence[int], exc: Exception) -> None:
    """The one warning of a refused publish: the primary keys (20 at most) and the exception's
    type, never its message (it may quote the broker URL and its credentials)."""
    if len(event_pks) == 1:
        logger.warning(
            "webhooks: could not enqueue event pk=%s (%s); it stays queued in the database "
            "and the sweeper will enqueue it later",
            event_pks[0],
            type(exc).__name__,
        )
        return
    logger.warning(
        "webhooks: could not enqueue %s event(s) (pk=%s) (%s); they stay queued in the "
        "database and the sweeper will enqueue them later",
        len(event_pks),
        ",".join(map(str, event_pks[:20])) + (",..." if len(event_pks) > 20 else ""),
        type(exc).__name__,
    )


def publish_process_batch(event_pks: Sequence[int]) -> bool:
    """Publish ``webhooks.process_events`` for these events now, ``DISPATCH_BATCH_SIZE`` per
    message, all through one connection checkout; ``False`` if the broker refused. With
    ``TASK_BACKEND = "django"``, one ``DJANGO_PROCESS_EVENT`` task per event (a Django Task
    carries only its event's key), all in one transaction of the default database (one commit
    for a database backend's inserts); the batch stops at the first the backend refuses, and
    the warning names all of it (the sweeper's requeue of one that was sent is harmless).

    The dispatcher's publisher (``WebhooksConfig.ready()`` hands it to ``webhooks.dispatch``).
    Like ``publish_process_task`` it never raises for a broker failure: the events stay
    ``received`` and the sweeper enqueues them later; the warning names the primary keys and
    the exception's type only.
    """
    if not event_pks:
        return True
    if task_backend() == "django":
        try:
            # One transaction for the batch: a database backend's inserts commit once (one WAL
            # flush per batch, not per event); if one is refused, none of them counts as sent.
            with transaction.atomic():
                for pk in event_pks:
                    enqueue_django_task(pk)
        except Exception as exc:
            _warn_unsent(event_pks, exc)
            return False
        return True
    size = processing_setting("DISPATCH_BATCH_SIZE")
    options = _task_options()
    chunks = [list(event_pks[i : i + size]) for i in range(0, len(event_pks), size)]
    sent = 0
    try:
        task = _task(PROCESS_EVENTS)
        with task.app.producer_or_acquire() as producer:
            for chunk in chunks:
                # argsrepr/kwargsrepr: Celery's message options, passed on by apply_async
                # (not in celery-types' signature).
                reprs: dict[str, Any] = {"argsrepr": _args_repr(chunk), "kwargsrepr": "{}"}
                task.apply_async(args=(chunk,), producer=producer, **options, **reprs)
                sent += 1
    except Exception as exc:
        _warn_unsent([pk for chunk in chunks[sent:] for pk in chunk], exc)
        return False
    return True


#: The longest ``argsrepr`` a batch's message carries, as Celery's own (``saferepr``) limit.
ARGS_REPR_MAX = 1024


def _args_repr(chunk: list[int]) -> str:
    """The batch's arguments as monitoring shows them (``argsrepr``): ``repr`` of a list of
    integers, cut at ``ARGS_REPR_MAX`` characters. Given so that Celery does not build it with
    ``saferepr``, which walks the list in Python and was a fifth of a batch's publish."""
    text = repr((chunk,))
    return text if len(text) <= ARGS_REPR_MAX else text[: ARGS_REPR_MAX - 3] + "..."


def schedule_retry(
    event_pk: int, next_attempt_at: datetime, *, task: Task[Any, Any] | None = None
) -> bool:
    """Schedule the event's retry with Celery's ``countdown`` until ``next_attempt_at`` (what the
    failed attempt wrote); ``False`` if the broker refused the publish.

    The one way a retry is scheduled (``process_event(..., retry=True)`` calls it). Given the
    running ``webhooks.process_event`` task, this is that task's own ``retry()``, which raises
    Celery's ``Retry`` (and, under ``task.apply()``, runs the retry eagerly); otherwise a new
    ``webhooks.process_event`` message is published; with ``TASK_BACKEND = "django"``, a
    Django Task with ``run_after`` (``enqueue_django_task``; a backend that cannot defer leaves
    the retry to the sweeper). Either way it goes to ``TASK_QUEUE``. A
    refused publish is logged (the exception's type only) and swallowed: the event keeps its
    ``next_attempt_at`` and the sweeper enqueues it once that is ``STUCK_AFTER`` in the past.
    """
    countdown = max((next_attempt_at - timezone.now()).total_seconds(), 0.0)
    if task is None or task_backend() == "django":  # (a Celery task drained after a switch)
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
    ``DISPATCH_INTERVAL`` is None, or the tasks run as they are published (a user's tests):
    Celery's ``task_always_eager``, or Django Tasks' ``ImmediateBackend``."""
    # Read without validation on this path (one per delivery): a bad value is reported by the
    # system check, and the dispatcher thread treats it as 0.
    if webhooks_settings["DISPATCH_INTERVAL"] is None:
        return True
    if task_backend() == "django":
        return django_tasks_run_immediately()
    return celery_is_eager()


def django_tasks_run_immediately() -> bool:
    """Whether the default ``TASKS`` backend runs a task as it is enqueued (Django's
    ``ImmediateBackend``); False if Django's Tasks cannot be loaded (the system check says why,
    and the dispatcher's publish logs it)."""
    try:
        from tether.tasks_api import DEFAULT_TASK_BACKEND_ALIAS, ImmediateBackend, task_backends

        return isinstance(task_backends[DEFAULT_TASK_BACKEND_ALIAS], ImmediateBackend)
    except Exception:
        return False


def celery_is_eager() -> bool:
    """Whether the Celery app runs tasks eagerly (``task_always_eager``), read cheaply: a value
    set at run time (``app.conf.task_always_eager = ...``) is seen at once; the configured one
    (Django settings or Celery's default) is read once, since reading it through ``app.conf``
    costs more than the rest of the enqueue, and kept until ``webhooks_settings`` reloads
    (``override_settings`` of a ``CELERY_`` setting, or ``reload()``)."""
    # The current app itself (celery.current_app is a proxy: 2-3 us per attribute read).
    changes = app_or_default().conf.changes
    changed = changes.get("task_always_eager") if changes is not None else None
    if changed is not None:
        return bool(changed)
    return _configured_eager()


@functools.cache
def _configured_eager() -> bool:
    return bool(app_or_default().conf.task_always_eager)


webhooks_settings.register_cache(_configured_eager.cache_clear, also_on=("CELERY",))


def enqueue_on_commit(event: WebhookEvent) -> None:
    """Have the event processed once the current transaction commits (a transactional outbox).

    By default the event's primary key goes to this process's dispatcher
    (``webhooks.dispatch``), which publishes it from a background thread within about
    ``DISPATCH_INTERVAL`` seconds, batched with others; with ``DISPATCH_INTERVAL = None`` (or
    eager Celery, or Django's ``ImmediateBackend``) its task is published by the committing
    thread. Outside a
    transaction this happens at once. A broker failure is logged and swallowed either way: the
    event stays ``received`` and ``requeue_stuck`` enqueues it later.
    """
    using = event._state.db or router.db_for_write(WebhookEvent)
    transaction.on_commit(partial(enqueue_committed, event.pk), using=using)


def enqueue_committed(event_pk: int) -> None:
    """Have a committed event processed: hand its key to this process's dispatcher, or, with
    ``DISPATCH_INTERVAL = None`` or eager Celery, publish ``webhooks.process_event`` now. What
    ``enqueue_on_commit`` runs once the transaction commits; the receive path runs it from its
    own on-commit callback (``webhooks.receiving``)."""
    if dispatches_inline():
        publish_process_task(event_pk)
    else:
        dispatcher.submit(event_pk)
