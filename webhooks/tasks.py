"""Celery tasks of the webhooks app: thin shells over ``webhooks.services``."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="webhooks.process_event", acks_late=True, reject_on_worker_lost=True)
def process_event(event_pk: int) -> str | None:
    from . import services

    return services.process_event(event_pk)
