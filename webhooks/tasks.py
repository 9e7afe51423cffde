"""Celery tasks of the webhooks app: thin shells over ``webhooks.services``.

``webhooks.process_event`` is ``acks_late`` with ``reject_on_worker_lost``: a message is
acknowledged only after its attempt finished, and a worker process that dies mid-handler puts
it back on the queue. Retries use Celery's own ``retry(countdown=...)``; how many attempts an
event has had is counted in the database (``WebhookEvent.attempts``), not by Celery, so replays
and sweeps start and continue the same count.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import Retry

logger = logging.getLogger(__name__)


@shared_task(
    bind=True,
    name="webhooks.process_event",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
    ignore_result=True,
)
def process_event(self, event_pk: int) -> str | None:
    from . import services

    status = services.process_event(event_pk)
    if status == services.Status.PROCESSING:
        countdown = services.seconds_until_due(event_pk)
        if countdown is not None:
            options = {}
            queue = services.webhooks_settings["TASK_QUEUE"]
            if queue:
                options["queue"] = queue
            try:
                raise self.retry(countdown=countdown, **options)
            except Retry:
                raise
            except Exception as exc:
                # The retry could not be published: the event keeps its next_attempt_at and
                # the sweeper enqueues it once that is past.
                logger.warning(
                    "webhooks: could not schedule the retry of event pk=%s (%s)",
                    event_pk,
                    type(exc).__name__,
                )
    return status


@shared_task(name="webhooks.requeue_stuck", ignore_result=True)
def requeue_stuck(older_than: float | None = None) -> int:
    from . import services

    return services.requeue_stuck(older_than=older_than)
