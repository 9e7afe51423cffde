"""Processing of stored webhook events: enqueue, attempt, retry schedule, replay, sweep, prune.

Business logic lives here; the Celery tasks, commands, admin actions and API are thin shells.
"""

from __future__ import annotations

import logging
from functools import partial

from django.db import transaction

from .conf import webhooks_settings
from .models import WebhookEvent

logger = logging.getLogger(__name__)

PROCESS_TASK = "webhooks.process_event"


def publish_process_task(event_pk: int, *, countdown: float | None = None) -> bool:
    """Publish ``webhooks.process_event`` for one event now; ``False`` if the broker refused.

    Never raises for a broker failure and never hangs on it (the project's Celery settings give
    the connection a short timeout and no publish retries): the event is already stored, and the
    sweeper (``requeue_stuck``) enqueues it later. The log line carries the exception's type only,
    never the broker URL or its credentials.
    """
    from .tasks import process_event as process_event_task

    options: dict = {}
    queue = webhooks_settings["TASK_QUEUE"]
    if queue:
        options["queue"] = queue
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


def enqueue_on_commit(event: WebhookEvent) -> None:
    """Publish the processing task once the current transaction commits (a transactional outbox).

    Outside a transaction the task is published at once. A broker failure is logged and
    swallowed: the event stays ``received`` and ``requeue_stuck`` enqueues it later.
    """
    transaction.on_commit(partial(publish_process_task, event.pk))
