"""Helpers of the tests that process events through a real worker process (Celery's, or Django
Tasks' ``db_worker``): wait for an event's status, enqueue one as the receive view does, and
read what its attempts and handler runs left."""

from __future__ import annotations

from django.db import transaction

from tests.servers import wait_until
from tests.webhooks.factories import WebhookEventFactory
from webhooks import queueing
from webhooks.models import ProcessingAttempt, WebhookEvent


def reaches(event, *wanted, timeout: float = 30) -> WebhookEvent:
    """The event, read again, once its status is one of ``wanted``; fails after ``timeout``."""

    def check():
        current = WebhookEvent.objects.get(pk=event.pk)
        return current if current.status in wanted else None

    return wait_until(check, timeout=timeout, message=f"{event.event_id} to be {wanted}")


def enqueue(**fields) -> WebhookEvent:
    """A new event (``WebhookEventFactory(**fields)``), its processing task sent on commit."""
    with transaction.atomic():
        event = WebhookEventFactory(**fields)
        queueing.enqueue_on_commit(event)
    return event


def attempts_run(runs, event) -> list[int]:
    """The attempt numbers whose handler writes committed (``tests.handler_runs``)."""
    return [attempt for _, attempt, _ in runs.runs(event.event_id)]


def attempt_rows(event) -> list[tuple[int, str]]:
    """(number, outcome) of the event's ``ProcessingAttempt`` rows."""
    return list(ProcessingAttempt.objects.filter(event=event).values_list("number", "outcome"))
